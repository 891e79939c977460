"""Making the model a run starts from: a fresh random Zamba2-VL, or one built from a Zamba2 text checkpoint
and a Qwen2.5-VL checkpoint's vision tower.

Building from parts (``build_from_parts``):
  * the language model is the text checkpoint's, its vocabulary grown (if needed) to hold the image token;
    new embedding rows start at the mean of the old ones;
  * the vision tower and the merger's first layer are Qwen2.5-VL's ``visual.*`` tensors, the two-frame patch
    embedding folded to one frame (exact for still images);
  * the merger's output layer is new, ``[text hidden, 4 * vision hidden]``, initialised like the rest of a
    fresh model (normal(0, initializer_range), zero bias), since Qwen's maps into Qwen's own LM width.
The result is saved in the Hub layout with a processor (the text checkpoint's tokenizer plus the image token).
"""

from __future__ import annotations

import importlib.resources
import json
import math
import os
from pathlib import Path

import torch
from tokenizers import AddedToken
from torch import nn

from zamba2vl.checkpoint import open_weights, resolve_model_dir
from zamba2vl.config import VisionConfig, Zamba2VLConfig, load_config_json
from zamba2vl.errors import CheckpointError, ConfigError
from zamba2vl.model import Zamba2VL
from zamba2vl.processing.chat import DEFAULT_CHAT_TEMPLATE
from zamba2vl.processing.image import ImageProcessor
from zamba2vl.processing.processor import Processor
from zamba2vl.processing.tokenizer import Tokenizer
from zamba2vl.text.mamba2 import Mamba2Mixer
from zamba2vl.text.model import Zamba2LM
from zamba2vl.train.config import ModelSection, TokenizerSection
from zamba2vl.vision.tower import VisionTower
from zamba2vl.vision.weights import load_vision_weights


# ---------------------------------------------------------------------------------------------- init


@torch.no_grad()
def init_weights(module: nn.Module, std: float, generator: torch.Generator,
                 dt_range: tuple[float, float, float] = (0.001, 0.1, 1e-4)) -> None:
    """The reference's fresh-model initialisation: Linear and Embedding normal(0, std) with zero biases, norms
    one, convolutions torch's default; Mamba2 dt_bias so that softplus(dt_bias) is log-uniform in
    [time_step_min, time_step_max] (floored at time_step_floor; ``dt_range`` holds the three), A_log =
    log(1..heads), D = 1 (as Zamba2PreTrainedModel._init_weights)."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            m.weight.normal_(0.0, std, generator=generator)
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
        elif isinstance(m, (nn.Conv1d, nn.Conv3d)):
            fan_in = m.weight[0].numel()
            bound = 1 / math.sqrt(fan_in)  # torch's default (kaiming uniform with a = sqrt(5)) in closed form
            m.weight.uniform_(-bound, bound, generator=generator)
            if m.bias is not None:
                m.bias.uniform_(-bound, bound, generator=generator)
        elif isinstance(m, Mamba2Mixer):
            c = dt_range
            u = torch.rand(m.n_heads, generator=generator, dtype=torch.float64)
            dt = torch.exp(u * (math.log(c[1]) - math.log(c[0])) + math.log(c[0])).clamp(min=c[2])
            m.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            m.A_log.copy_(torch.log(torch.arange(1, m.n_heads + 1, dtype=torch.float64)))
            m.D.fill_(1.0)
    for name, p in module.named_parameters():
        if p.dim() == 1 and ("norm" in name or name.endswith("ln_q.weight")):
            p.fill_(1.0)


def init_text_model(lm: Zamba2LM, seed: int) -> None:
    c = lm.config
    init_weights(lm, c.initializer_range, torch.Generator().manual_seed(seed),
                 (c.time_step_min, c.time_step_max, c.time_step_floor))


def init_vision_tower(tower: VisionTower, seed: int) -> None:
    init_weights(tower, tower.config.initializer_range, torch.Generator().manual_seed(seed))


def random_model(config: Zamba2VLConfig, seed: int = 0) -> Zamba2VL:
    """A freshly initialised Zamba2-VL in float32 (the same weights for the same config and seed)."""
    model = Zamba2VL(config)
    init_vision_tower(model.vision_tower, seed)
    init_text_model(model.language_model, seed + 1)
    return model


def init_merger_output(tower: VisionTower, std: float, seed: int) -> None:
    fc2 = tower.merger.mlp[2]
    with torch.no_grad():
        fc2.weight.normal_(0.0, std, generator=torch.Generator().manual_seed(seed))
        fc2.bias.zero_()


# ---------------------------------------------------------------------------------------------- parts


def _grow_vocab(lm: Zamba2LM, vocab_size: int) -> None:
    old = lm.config.vocab_size
    if vocab_size == old:
        return
    if vocab_size < old:
        raise ConfigError(f"vocab_size {vocab_size} is smaller than the text checkpoint's {old}")

    def grown(weight: torch.Tensor) -> nn.Parameter:
        new = weight.new_empty(vocab_size, weight.shape[1])
        new[:old] = weight
        new[old:] = weight.float().mean(0).to(weight.dtype)
        return nn.Parameter(new)

    with torch.no_grad():
        embed = grown(lm.model.embed_tokens.weight)
        lm.model.embed_tokens = nn.Embedding(vocab_size, lm.config.hidden_size, _weight=embed)
        if not lm.config.tie_word_embeddings:
            head = grown(lm.lm_head.weight)
            lm.lm_head = nn.Linear(lm.config.hidden_size, vocab_size, bias=False)
            lm.lm_head.weight = head
    lm.config.vocab_size = vocab_size


def built_vocab_size(text_vocab: int, image_token_index: int, vocab_size: int | None) -> int:
    """The vocabulary of a model built from parts: as asked, else the text one grown to hold the image token
    (rounded up to a multiple of 64, as Zamba2-VL's 32064)."""
    if vocab_size is not None:
        return vocab_size
    return text_vocab if text_vocab > image_token_index else (image_token_index + 1 + 63) // 64 * 64


def qwen_vision_config(folder: str | os.PathLike, out_hidden_size: int) -> VisionConfig:
    """Our VisionConfig for a Qwen2.5-VL checkpoint's tower: one-frame patches, merger into our LM's width."""
    d = load_config_json(folder)
    vision = d.get("vision_config", d if "depth" in d else None)
    if not isinstance(vision, dict):
        raise ConfigError(f"{folder}/config.json has no vision_config; is it a Qwen2.5-VL checkpoint?")
    config = VisionConfig.from_dict(vision)
    config.temporal_patch_size = 1
    config.out_hidden_size = out_hidden_size
    config.model_type = "qwen2_5_vl"
    return config


def build_from_parts(text: str | os.PathLike, vision: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                     *, image_token_index: int = 32000, vocab_size: int | None = None, seed: int = 0,
                     image_token: str = "<image>") -> Zamba2VL:
    """A Zamba2-VL from a Zamba2 text checkpoint folder and a Qwen2.5-VL checkpoint folder (float32).

    ``vocab_size`` defaults to the text vocabulary, grown to ``image_token_index + 1`` rounded up to a multiple
    of 64 when it is too small. With ``out_dir`` the model is saved there (Hub layout), with a processor when
    the text folder has tokenizer files.
    """
    lm = Zamba2LM.from_pretrained(text, dtype=torch.float32)
    _grow_vocab(lm, built_vocab_size(lm.config.vocab_size, image_token_index, vocab_size))
    vcfg = qwen_vision_config(vision, lm.config.hidden_size)
    tower = VisionTower(vcfg)
    init_vision_tower(tower, seed)
    reader = open_weights(vision)
    load_vision_weights(tower, reader, source=str(vision), dtype=torch.float32, skip_merger_output=True,
                        fold_temporal=True)
    init_merger_output(tower, lm.config.initializer_range, seed + 1)
    config = Zamba2VLConfig(text_config=lm.config, vision_config=vcfg, image_token_index=image_token_index)
    with torch.device("meta"):
        model = Zamba2VL(config)
    model.vision_tower = tower
    model.language_model = lm
    model.train(False)
    if out_dir is not None:
        model.save_pretrained(out_dir)
        processor = processor_for_build(text, image_token, image_token_index)
        if processor is not None:
            processor.save_pretrained(out_dir)
    return model


def processor_for_build(text: str | os.PathLike, image_token: str, image_token_index: int) -> Processor | None:
    """The text checkpoint's tokenizer with the image token added at ``image_token_index`` (None: no tokenizer)."""
    folder = Path(text)
    if not ((folder / "tokenizer.json").is_file() or (folder / "tokenizer.model").is_file()):
        return None
    tokenizer = Tokenizer.from_pretrained(folder)
    add_image_token(tokenizer, image_token, image_token_index, str(folder))
    return Processor(tokenizer, ImageProcessor(), image_token=image_token)


def add_image_token(tokenizer: Tokenizer, image_token: str, image_token_index: int, source: str) -> None:
    if tokenizer.backend.token_to_id(image_token) is None:
        tokenizer.backend.add_special_tokens([AddedToken(image_token, special=True, normalized=False)])
    got = tokenizer.backend.token_to_id(image_token)
    if got != image_token_index:
        raise CheckpointError(f"the tokenizer of {source} gives {image_token!r} the id {got}, but the model's "
                              f"image_token_index is {image_token_index}; set model.image_token_index to {got}")
    tokenizer.extra_special_tokens["image_token"] = image_token
    tokenizer.image_token = image_token



# ---------------------------------------------------------------------------------------------- a run's start


def resolve_resource(path: str) -> str:
    """``pkg://package/relative/path`` -> the file inside an installed package; other paths unchanged."""
    if not path.startswith("pkg://"):
        return path
    package, _, rel = path[len("pkg://"):].partition("/")
    try:
        found = importlib.resources.files(package).joinpath(rel)
    except ModuleNotFoundError as e:
        raise ConfigError(f"{path}: package {package!r} is not installed") from e
    if not found.is_file():
        raise ConfigError(f"{path}: no file {rel!r} in package {package!r}")
    return str(found)


def load_processor(model: ModelSection, tokenizer: TokenizerSection, image_token_index: int,
                   vocab_size: int) -> Processor:
    """The run's processor: a SentencePiece file plus added tokens, or the tokenizer of a folder (by default
    the model's, or the text checkpoint's when building from parts), with the image token added if missing."""
    folder = None
    if tokenizer.characters:
        if tokenizer.sentencepiece or tokenizer.path:
            raise ConfigError("tokenizer: set one of characters, sentencepiece and path, not several")
        from zamba2vl.train.char_tokenizer import char_tokenizer

        try:
            tok = char_tokenizer(words=tokenizer.words, numbers=tokenizer.numbers)
        except ValueError as e:
            raise ConfigError(f"tokenizer.words / tokenizer.numbers: {e}") from e
        source = "the character tokenizer"
    elif tokenizer.words or tokenizer.numbers:
        raise ConfigError("tokenizer.words and tokenizer.numbers add whole-word tokens to the character tokenizer; "
                          "set tokenizer.characters: true with them")
    elif tokenizer.sentencepiece:
        tok = Tokenizer.from_sentencepiece(resolve_resource(tokenizer.sentencepiece),
                                           added_tokens=tokenizer.added_tokens)
        source = tokenizer.sentencepiece
    else:
        folder = tokenizer.path or model.path or model.text
        if folder is None:
            raise ConfigError("tokenizer: a randomly initialised model has no tokenizer; set tokenizer.path (a folder "
                              "with tokenizer.json) or tokenizer.sentencepiece (e.g. "
                              "pkg://mistral_common/data/tokenizer.model.v1)")
        tok = Tokenizer.from_pretrained(folder)
        source = str(folder)
    add_image_token(tok, tok.image_token, image_token_index, source)
    if tok.chat_template is None:
        # The run teaches the model this format, so name it: checkpoints then save it (chat_template.jinja)
        # and inference renders prompts the way training did.
        tok.chat_template = DEFAULT_CHAT_TEMPLATE
    if len(tok) > vocab_size:
        raise ConfigError(f"the tokenizer ({source}) has {len(tok)} tokens but the model's vocabulary has "
                          f"{vocab_size}; the tokenizer must belong to the model")
    pre = Path(folder) / "preprocessor_config.json" if folder else None
    image_processor = ImageProcessor()
    if pre is not None and pre.is_file():
        image_processor = ImageProcessor.from_dict(json.loads(pre.read_text()))
    return Processor(tok, image_processor, image_token=tok.image_token)


def token_facts(model: ModelSection) -> tuple[int, int]:
    """(image_token_index, vocab_size) of the model a run starts from, read from config files only, so the
    processor and the data can be checked before any weights are loaded."""
    kind = model.kind()
    if kind == "path":
        d = load_config_json(resolve_model_dir(model.path))
        return int(d.get("image_token_index", 32000)), int(d.get("text_config", {}).get("vocab_size", 32000))
    if kind == "parts":
        text_vocab = int(load_config_json(resolve_model_dir(model.text)).get("vocab_size", 32000))
        return model.image_token_index, built_vocab_size(text_vocab, model.image_token_index, model.vocab_size)
    d = model.config
    return int(d.get("image_token_index", 32000)), int(d.get("text_config", {}).get("vocab_size", 32000))


def load_model(model: ModelSection) -> Zamba2VL:
    """The model a run starts from, in float32 (see ModelSection for the three ways)."""
    kind = model.kind()
    if kind == "path":
        return Zamba2VL.from_pretrained(model.path, dtype=torch.float32)
    if kind == "parts":
        return build_from_parts(model.text, model.vision, image_token_index=model.image_token_index,
                                vocab_size=model.vocab_size, seed=model.init_seed)
    d = dict(model.config)
    d.setdefault("model_type", "zamba2_vl")
    d["text_config"] = {"model_type": "zamba2", **d.get("text_config", {})}
    d["vision_config"] = {"model_type": "qwen2_5_vl", **d.get("vision_config", {})}
    vl = random_model(Zamba2VLConfig.from_dict(d), seed=model.init_seed)
    if model.embedding_init_std is not None:
        if model.embedding_init_std <= 0:
            raise ConfigError(f"model.embedding_init_std must be > 0, got {model.embedding_init_std}")
        weight = vl.language_model.model.embed_tokens.weight
        generator = torch.Generator().manual_seed(model.init_seed + 7919)
        with torch.no_grad():
            weight.copy_(torch.randn(weight.shape, generator=generator) * model.embedding_init_std)
    return vl
