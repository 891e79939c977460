"""The stage YAML of `zamba2vl train`: one dataclass per section, unknown keys refused by their full path.

    stage: sft                      # align | pretrain | sft | vision (decides which parts train, see STAGE_TRAINS)
    seed: 0
    output_dir: runs/sft
    model: {path: ckpt/}            # or {text: ..., vision: ...} (build from parts) or {config: {...}} (random)
    tokenizer: {path: ckpt/}        # or {sentencepiece: FILE or pkg://package/file, added_tokens: [<image>]}
    freeze: {vision_tower: true}    # overrides the stage's default for that part
    data: {sources: [{type: jsonl, path: a.jsonl, weight: 3}, {type: synthetic, weight: 1}], max_length: 512}
    optim: {lr: 1e-4, warmup_steps: 100, max_steps: 2000, clip_grad_norm: 1.0}
    batch: {global_batch_size: 32, micro_batch_size: 8}
    precision: {autocast: auto, gradient_checkpointing: false}
    checkpoint: {every: 200, keep: 2}
    eval: {every: 200, n_per_task: 4}
    reconstruction: {weight: 1.0}   # auxiliary per-token pixel reconstruction (training only; default off)
    objects: {weight: 1.0}          # auxiliary object kinds and boxes from annotated images (training only; off)
    match: {weight: 1.0, layer: 2}  # auxiliary: is this image token's object the one asked about? (LM side; off)
    spell: {weight: 1.0, layer: 2}  # auxiliary: which letters of the word, by place, this token holds (LM side; off)

`configs/train/*.yaml` hold commented examples. Every field and its default is below.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import yaml

from zamba2vl.errors import ConfigError

PARTS = ("vision_tower", "merger", "language_model")
KIND_LOSSES = ("bce", "softmax")  # objects.kind_loss (train/objects.py)
# What each stage trains by default. align: only the adapter learns to map the frozen tower into the frozen LM;
# pretrain: everything; sft: the tower stays as pre-trained, adapter and LM follow the instructions; vision: the
# tower and adapter learn from the auxiliary objectives alone (objects, reconstruction), without running the language
# model, which makes a step several times cheaper (a pre-stage that teaches the tower what is in an image).
STAGE_TRAINS = {
    "vision": ("vision_tower", "merger"),
    "align": ("merger",),
    "pretrain": ("vision_tower", "merger", "language_model"),
    "sft": ("merger", "language_model"),
}


@dataclass
class ModelSection:
    path: str | None = None  # a Zamba2-VL checkpoint folder (Hub layout)
    text: str | None = None  # build from parts: a Zamba2 text checkpoint folder ...
    vision: str | None = None  # ... and a Qwen2.5-VL checkpoint folder (its visual.* tensors)
    config: dict[str, Any] | None = None  # a Zamba2VLConfig dict: random initialisation
    image_token_index: int = 32000  # build from parts
    vocab_size: int | None = None  # build from parts: None keeps the text vocab, grown to hold the image token
    init_seed: int = 0  # random initialisation and the fresh merger output layer
    # Random init only: the std of the input embeddings (default: the config's initializer_range). A model trained
    # from scratch needs text embeddings on the scale of the merger's image features (norm ~ a few), or the
    # language model learns to ignore the much larger image tokens; use with tie_word_embeddings: false.
    embedding_init_std: float | None = None

    def kind(self) -> str:
        given = [k for k in ("path", "config") if getattr(self, k) is not None]
        if self.text is not None or self.vision is not None:
            if self.text is None or self.vision is None:
                raise ConfigError("model: building from parts needs both model.text and model.vision")
            given.append("parts")
        if len(given) != 1:
            raise ConfigError("model: give exactly one of model.path (a Zamba2-VL checkpoint), model.text + "
                              f"model.vision (build from parts) or model.config (random init); got {given or 'none'}")
        return given[0]


@dataclass
class TokenizerSection:
    path: str | None = None  # folder with tokenizer.json / tokenizer.model (default: the model folder)
    sentencepiece: str | None = None  # a SentencePiece .model file, or pkg://package/relative/path
    added_tokens: list[str] = field(default_factory=lambda: ["<image>"])  # with sentencepiece only
    characters: bool = False  # the built-in character tokenizer (train/char_tokenizer.py), for models from scratch
    words: list[str] = field(default_factory=list)  # with characters: whole words that are one token each
    numbers: int = 0  # with characters: every whole number 10 .. numbers is one token too (0: none)


@dataclass
class FreezeSection:
    vision_tower: bool | None = None  # None: the stage's default
    merger: bool | None = None
    language_model: bool | None = None


@dataclass
class SourceSection:
    type: str = "jsonl"  # jsonl | synthetic
    name: str | None = None  # for logs and reports (default: file name or "synthetic")
    weight: float = 1.0  # relative share of the mixture
    path: str | None = None  # jsonl: the file
    image_root: str | None = None  # jsonl: where relative image paths start (default: the file's folder)
    tasks: list[str] | None = None  # synthetic: default all of zamba2vl.train.synthetic.TASKS
    task_weights: list[float] | None = None
    # synthetic: earlier task weights for the first examples of the stream, as [[until_example, [weights]], ...]
    # with increasing until_example (example n uses the first phase with n < until_example, after the last
    # phase task_weights). E.g. [[4800, [0, 0, 1, 0]]]: bar charts only for the first 4,800 examples.
    curriculum: list | None = None
    seed: int = 0  # synthetic: the example stream (keep it different from eval.seed)
    image_size: int = 224
    # synthetic: the reading task's own canvas, [width, height] (e.g. [224, 28]: a one-row banner whose letters
    # are as tall as a patch); default image_size
    reading_size: list[int] | None = None
    grounding_format: str = "json"  # synthetic: "json" (Qwen2.5-VL's [{"bbox_2d": ..., "label": ...}]) or "box"


def _check_reading_size(size, where: str) -> None:
    if size is None:
        return
    from zamba2vl.train.synthetic import reading_canvas  # (Pillow and numpy: only when a config sets one)

    try:
        reading_canvas(size)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}; give [width, height] in pixels, e.g. [224, 28]") from None


@dataclass
class DataSection:
    sources: list[SourceSection] = field(default_factory=list)
    max_length: int = 2048  # tokens per sample, image tokens included; longer samples are bad records
    max_image_tokens: int = 1280  # image tokens per sample
    min_pixels: int | None = None  # image processor budget per image (None: the processor's)
    max_pixels: int | None = None
    on_bad_record: str = "skip"  # skip (counted and reported) | stop (raise at the first one)
    validate_images: bool = True  # read every image header when indexing (missing files, token budget)
    progress: bool = True
    # Load the next step's samples in a background thread while this step trains (the same samples in the same
    # order either way). Off by default: on 2 cores it slowed the nano recipe's steps (stage 2 0.74 -> 0.85 s, stage 1
    # 0.78 -> 1.31 s; session 19), the thread competing with torch's two for the CPU and the GIL.
    prefetch: bool = False
    # Pack several samples into each row of a micro-batch (train.encode.pack), each running as if it were alone
    # (attention within its sample, the Mamba layers' state restarting at its first token), instead of one sample
    # per row padded to the longest: the same losses and gradients up to fp32 rounding, with less padding to compute.
    pack: bool = False


@dataclass
class OptimSection:
    lr: float = 1e-4
    min_lr_ratio: float = 0.1  # the cosine ends at lr * min_lr_ratio
    warmup_steps: int = 0
    max_steps: int = 1000
    weight_decay: float = 0.0  # on matrices only (not norms, biases, SSM scalars)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    clip_grad_norm: float | None = 1.0
    lr_scale: dict[str, float] = field(default_factory=dict)  # per part, e.g. {vision_tower: 0.1}
    # token: mean over labelled tokens | sample: each sample weighs the same | sqrt: a sample of n labelled
    # tokens weighs sqrt(n), between the two ("square averaging", as in InternVL 2.5)
    loss_per: str = "token"
    # An exponential moving average of the model's trained weights, updated after every optimizer step with the
    # decay min(ema, (1 + step) / (10 + step)) (0: off). Checkpoints' model weights and the evaluations during
    # training are the average; the weights being trained travel in trainer_state.pt, so a resumed run continues
    # exactly. The training-only heads are not averaged.
    ema: float = 0.0


@dataclass
class BatchSection:
    global_batch_size: int = 8  # samples per optimizer step over all processes
    micro_batch_size: int = 8  # samples per forward per process; accumulation makes up the rest


@dataclass
class PrecisionSection:
    autocast: str = "auto"  # bf16 | none | auto (bf16 on GPUs and CPUs with native bf16 matmul)
    gradient_checkpointing: bool = False


@dataclass
class CheckpointSection:
    every: int = 500  # steps; 0 = only at the end
    keep: int = 2  # newest checkpoints kept


@dataclass
class LogSection:
    every: int = 1  # steps between loss-log lines
    plot_every: int = 100  # steps between loss-curve redraws (and at every checkpoint and at the end)


@dataclass
class EvalSection:
    every: int = 0  # steps; 0 = off
    n_per_task: int = 4
    tasks: list[str] | None = None  # default: all synthetic tasks
    seed: int = 1_000_003  # held out: different from every training source's seed
    image_size: int = 224
    reading_size: list[int] | None = None  # the reading task's canvas (as data.sources[].reading_size)
    max_new_tokens: int = 32
    at_end: bool = True


@dataclass
class ReconstructionSection:
    # An auxiliary loss (train/reconstruction.py): each merged image token predicts its patches' pixels through a
    # training-only linear head, so the merger's output keeps what is where. 0 = off. The weight multiplies the
    # mean squared error (of normalised pixels) per image, added to the language-model loss before its
    # normalisation (per sample with optim.loss_per: sample, so weight 1 adds the mean error over images; with
    # sqrt the normaliser is the sum over samples of sqrt(labelled tokens)).
    weight: float = 0.0
    pool: int = 2  # average-pool each patch by this factor first (2: 7x7 targets per 14-pixel patch)
    # A training checkpoint folder (e.g. the previous stage's) whose trainer state holds this head: start from it
    # rather than from a fresh random head. Ignored when resuming (the run's own head is restored).
    init_from: str | None = None


@dataclass
class ObjectsSection:
    # An auxiliary loss (train/objects.py) for images whose training message carries object annotations (the
    # synthetic counting and grounding examples): the merged token holding an object's centre predicts its kind
    # (shape x colour) and its box through a training-only linear head. 0 = off. The weight multiplies each
    # annotated image's mean token loss, added like reconstruction's.
    weight: float = 0.0
    box_weight: float = 1.0  # the box's L1 error (in merged-token cells) against the kinds' cross-entropy
    # Also the reading task's letters as 26 more kinds (each letter's glyph box, centre cell and letter).
    letters: bool = False
    # bce: one sigmoid per kind (several kinds may share a cell); softmax: one softmax over the kinds and "nothing",
    # towards the kind of the cell's (largest) object (train/objects.py).
    kind_loss: str = "bce"
    # With letters: each merged token names the letters whose centres fall in its cell, left to right, in this many
    # slots (one softmax over the 26 letters and "none" each) instead of letters being kinds; 0 = letters as kinds.
    letter_slots: int = 0
    # A training checkpoint folder (e.g. the previous stage's) whose trainer state holds this head, of the same
    # kinds and slots: start from it, so that a fresh random head's large first losses and gradients do not shake the
    # tower it reads. Ignored when resuming (the run's own head is restored).
    init_from: str | None = None


@dataclass
class MatchSection:
    # An auxiliary loss on the language model (train/objects.py, QueryMatch; session 17): after `layer` of its
    # layers, the hidden state at each image token says, through a training-only linear head and a sigmoid, whether
    # the token's cell holds the centre of an object the question asks about (the counted ones; grounding's
    # target). Needs the objects' annotations, so objects.weight > 0 too. 0 = off.
    weight: float = 0.0
    layer: int = 2  # 1 .. the language model's number of layers
    init_from: str | None = None  # as objects.init_from, for this head


@dataclass
class SpellSection:
    # An auxiliary loss on the language model (train/objects.py, Spelling; session 18): after `layer` of its
    # layers, the hidden state at each image token of a reading image names, through a training-only linear head,
    # the word's 1st .. `positions`-th letters that the token's cell holds (one softmax over the letters and "not
    # here" per place). Needs the letters' annotations in slots: objects.weight > 0, letters: true, letter_slots.
    weight: float = 0.0
    layer: int = 2  # 1 .. the language model's number of layers
    positions: int = 10  # the longest synthetic word has 10 letters; later letters are not named
    init_from: str | None = None  # as objects.init_from, for this head


@dataclass
class TrainConfig:
    stage: str = "sft"
    seed: int = 0
    output_dir: str = "runs/train"
    device: str = "auto"  # auto | cpu | cuda (under torchrun: cuda:LOCAL_RANK)
    threads: int | None = None  # torch CPU threads per process (None: torch's default)
    model: ModelSection = field(default_factory=ModelSection)
    tokenizer: TokenizerSection = field(default_factory=TokenizerSection)
    freeze: FreezeSection = field(default_factory=FreezeSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    batch: BatchSection = field(default_factory=BatchSection)
    precision: PrecisionSection = field(default_factory=PrecisionSection)
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    log: LogSection = field(default_factory=LogSection)
    eval: EvalSection = field(default_factory=EvalSection)
    reconstruction: ReconstructionSection = field(default_factory=ReconstructionSection)
    objects: ObjectsSection = field(default_factory=ObjectsSection)
    match: MatchSection = field(default_factory=MatchSection)
    spell: SpellSection = field(default_factory=SpellSection)

    def __post_init__(self) -> None:
        if self.stage not in STAGE_TRAINS:
            raise ConfigError(f"stage: {self.stage!r} is not a stage; use one of {sorted(STAGE_TRAINS)}")
        self.model.kind()
        if self.data.on_bad_record not in ("skip", "stop"):
            raise ConfigError(f"data.on_bad_record: {self.data.on_bad_record!r}; use skip or stop")
        if not self.data.sources:
            raise ConfigError("data.sources: give at least one source (type jsonl with a path, or type synthetic)")
        for i, s in enumerate(self.data.sources):
            if s.type not in ("jsonl", "synthetic"):
                raise ConfigError(f"data.sources[{i}].type: {s.type!r}; use jsonl or synthetic")
            if s.type == "jsonl" and not s.path:
                raise ConfigError(f"data.sources[{i}]: a jsonl source needs a path")
            if not s.weight > 0:
                raise ConfigError(f"data.sources[{i}].weight must be > 0, got {s.weight}")
            if s.type == "synthetic" and s.seed == self.eval.seed and self.eval.every:
                raise ConfigError(f"data.sources[{i}].seed equals eval.seed ({s.seed}): the held-out examples "
                                  "would be training examples; pick another seed")
            _check_reading_size(s.reading_size, f"data.sources[{i}].reading_size")
        _check_reading_size(self.eval.reading_size, "eval.reading_size")
        if self.precision.autocast not in ("bf16", "none", "auto"):
            raise ConfigError(f"precision.autocast: {self.precision.autocast!r}; use bf16, none or auto")
        if self.optim.loss_per not in ("token", "sample", "sqrt"):
            raise ConfigError(f"optim.loss_per: {self.optim.loss_per!r}; use token, sample or sqrt")
        if not 0 <= self.optim.ema < 1:
            raise ConfigError(f"optim.ema: {self.optim.ema}; use 0 (off) or a decay below 1, e.g. 0.998")
        bad = set(self.optim.lr_scale) - set(PARTS)
        if bad:
            raise ConfigError(f"optim.lr_scale: unknown part(s) {sorted(bad)}; parts are {list(PARTS)}")
        if not self.reconstruction.weight >= 0 or self.reconstruction.pool < 1:
            raise ConfigError(f"reconstruction: weight must be >= 0 and pool >= 1, got {self.reconstruction}")
        if not (self.objects.weight >= 0 and self.objects.box_weight >= 0):
            raise ConfigError(f"objects: weight and box_weight must be >= 0, got {self.objects}")
        if not 0 <= self.objects.letter_slots <= 8:
            raise ConfigError(f"objects.letter_slots: {self.objects.letter_slots}; use 0 (off) to 8")
        if self.objects.letter_slots and not self.objects.letters:
            raise ConfigError("objects.letter_slots names a reading image's letters; set objects.letters: true too")
        if self.objects.kind_loss not in KIND_LOSSES:
            raise ConfigError(f"objects.kind_loss: {self.objects.kind_loss!r}; use one of {', '.join(KIND_LOSSES)}")
        if not self.match.weight >= 0 or self.match.layer < 1:
            raise ConfigError(f"match: weight must be >= 0 and layer >= 1, got {self.match}")
        if self.match.weight > 0 and not self.objects.weight > 0:
            raise ConfigError("match.weight > 0 reads the objects' annotations; set objects.weight > 0 too")
        if self.match.weight > 0 and self.stage == "vision":
            raise ConfigError("match trains the language model, which stage: vision does not run; set match.weight 0")
        if not self.spell.weight >= 0 or self.spell.layer < 1 or not 1 <= self.spell.positions <= 32:
            raise ConfigError(f"spell: weight must be >= 0, layer >= 1 and positions 1 .. 32, got {self.spell}")
        if self.spell.weight > 0 and not (self.objects.weight > 0 and self.objects.letter_slots):
            raise ConfigError("spell.weight > 0 reads the reading images' letter annotations; set objects.weight > 0, "
                              "objects.letters: true and objects.letter_slots (e.g. 3) too")
        if self.spell.weight > 0 and self.stage == "vision":
            raise ConfigError("spell trains the language model, which stage: vision does not run; set spell.weight 0")
        if self.stage == "vision":
            if not (self.objects.weight > 0 or self.reconstruction.weight > 0):
                raise ConfigError("stage: vision trains on the auxiliary objectives alone; set objects.weight or "
                                  "reconstruction.weight > 0")
            if self.trains("language_model"):
                raise ConfigError("stage: vision does not run the language model; leave freeze.language_model unset")
            if self.eval.every or self.eval.at_end:
                raise ConfigError("stage: vision does not train the language model, so it cannot answer the held-out "
                                  "questions; set eval: {every: 0, at_end: false}")
        b = self.batch
        if b.global_batch_size < 1 or b.micro_batch_size < 1:
            raise ConfigError("batch sizes must be >= 1")
        if self.optim.max_steps < 1:
            raise ConfigError("optim.max_steps must be >= 1")

    # ------------------------------------------------------------------------------------------ derived
    def trains(self, part: str) -> bool:
        """Whether ``part`` (vision_tower | merger | language_model) is trained in this run."""
        frozen = getattr(self.freeze, part)
        return (part in STAGE_TRAINS[self.stage]) if frozen is None else not frozen

    def accumulation(self, world: int) -> int:
        """Micro-batches per process per step; the global batch must split evenly."""
        per_rank, rem = divmod(self.batch.global_batch_size, world)
        if rem:
            raise ConfigError(f"batch.global_batch_size={self.batch.global_batch_size} does not split over {world} "
                              "processes; make it a multiple of the number of processes")
        micro = min(self.batch.micro_batch_size, per_rank)
        if per_rank % micro:
            raise ConfigError(f"{per_rank} samples per process per step is not a multiple of "
                              f"batch.micro_batch_size={micro}")
        return per_rank // micro

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------- reading


def _build(cls, data: Any, where: str):
    """A dataclass from a dict, recursively; unknown keys and wrong kinds are ConfigErrors naming the path."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'} must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{where + '.' if where else ''}{unknown[0]}: unknown key; known keys: {sorted(names)}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _convert(hints[key], value, f"{where}.{key}" if where else key)
    return cls(**kwargs)


def _convert(hint, value, where: str):
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    origin, args = get_origin(hint), get_args(hint)
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list")
        return [_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if value is None:
        return None
    if origin in (list, dict):
        if not isinstance(value, origin):
            raise ConfigError(f"{where}: expected a {origin.__name__}, got {value!r}")
        return value
    kinds = {a for a in (args or (hint,)) if a is not type(None)}
    if any(get_origin(k) in (list, dict) for k in kinds):  # e.g. list[str] | None
        return value
    if float in kinds and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        try:  # "lr: 1e-3" is a string in YAML 1.1
            return float(value)
        except ValueError:
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    for kind in (bool, int, str):
        if kinds == {kind} and (not isinstance(value, kind) or kind is int and isinstance(value, bool)):
            raise ConfigError(f"{where}: expected {kind.__name__}, got {value!r}")
    return value


def _set_path(d: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    for k in keys[:-1]:
        d = d.setdefault(k, {})
        if not isinstance(d, dict):
            raise ConfigError(f"--set {dotted}: {k} is not a section")
    d[keys[-1]] = value


def config_from_dict(raw: dict[str, Any]) -> TrainConfig:
    return _build(TrainConfig, raw, "")


def load_config(path: str | os.PathLike | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Read a stage YAML and apply ``--set a.b=value`` overrides (each value parsed as YAML).

    Relative paths (model, tokenizer, data, output_dir) are relative to the working directory, as on the
    command line.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as e:
            raise ConfigError(f"cannot read the train config {p}: {e}") from e
        except yaml.YAMLError as e:
            raise ConfigError(f"{p} is not valid YAML: {e}") from e
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write it as section.key=value")
        key, text = item.split("=", 1)
        _set_path(raw, key.strip(), yaml.safe_load(text))
    return config_from_dict(raw)
