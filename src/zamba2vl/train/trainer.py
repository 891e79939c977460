"""The training loop of the three stages (align, pretrain, sft), in one process or under torchrun.

One optimizer step consumes ``batch.global_batch_size`` samples. Each process takes its contiguous shard of
them (``mixture.Mixture``) and runs it as micro-batches with gradient accumulation; DistributedDataParallel
averages the gradients. The loss of a step is the sum of the token losses of the whole global batch divided
by its number of labelled tokens (summed across processes before the backward), so one process and N
processes compute the same quantity. Then: clipping, AdamW, the warmup + cosine schedule. With
``reconstruction.weight`` > 0 the loss adds the training-only pixel-reconstruction objective
(``train/reconstruction.py``), and with ``objects.weight`` > 0 the object kinds-and-boxes objective
(``train/objects.py``); their heads are saved in the trainer state, not in the model.

Files under ``output_dir``: ``config.yaml`` (the run's settings), ``loss.jsonl`` (one line per step),
``eval.jsonl``, ``loss.png``, ``skipped.jsonl`` (every bad record and why), ``checkpoints/step-*``.
Resuming restores the model, optimizer, schedule, sampler position and RNG states of a checkpoint, and
cuts the logs back to its step, so the resumed run writes what the uninterrupted run would have written.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from zamba2vl.errors import CheckpointError, ConfigError, InputError
from zamba2vl.ops.precision import cpu_has_native_gemm
from zamba2vl.processing.image import check_budget
from zamba2vl.train import distributed
from zamba2vl.train.build import load_model, load_processor, token_facts
from zamba2vl.train.checkpoints import (
    CheckpointWriter, checkpoint_folder, latest_checkpoint, load_model_weights, load_trainer_state, set_rng_state,
)
from zamba2vl.train.config import PARTS, DataSection, TrainConfig
from zamba2vl.train.encode import IGNORE, ConversationEncoder, collate, pack
from zamba2vl.train.evaluate import evaluate, held_out_examples
from zamba2vl.train.loss import CausalLMLoss
from zamba2vl.train.mixture import Mixture
from zamba2vl.train.objects import ObjectMap, QueryMatch, Spelling
from zamba2vl.train.optim import apply_freeze, make_optimizer, make_scheduler
from zamba2vl.train.plot import plot_run, read_jsonl
from zamba2vl.train.reconstruction import PixelReconstruction
from zamba2vl.train.sources import JsonlSource, SkipLog, SyntheticSource
from zamba2vl.train.synthetic import KINDS, LETTERS

# Test hook: the process SIGKILLs itself right after this step (logged and, if due, checkpointed).
KILL_ENV = "ZAMBA2VL_TRAIN_KILL_AFTER_STEP"


def resolve_autocast(setting: str, device: torch.device) -> torch.dtype | None:
    if setting == "none":
        return None
    if setting == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    # A CPU with AVX512-BF16 / AMX; elsewhere bf16 matmuls are slower than fp32.
    return torch.bfloat16 if cpu_has_native_gemm(torch.bfloat16) else None


def emulated_bf16(setting: str, device: torch.device) -> bool:
    """Whether ``precision.autocast: bf16`` asks for bf16 on a CPU that would emulate it (slowly)."""
    return setting == "bf16" and device.type == "cpu" and not cpu_has_native_gemm(torch.bfloat16)


def object_kinds(config: TrainConfig) -> int:
    """How many kinds the objects objective tells apart: the shapes x colours, and the letters when annotated
    (unless they go to letter slots instead)."""
    return len(KINDS) + (len(LETTERS) if config.objects.letters and not config.objects.letter_slots else 0)


def adopt_pixel_budget(image_processor, data: DataSection) -> None:
    """Make ``data.min_pixels`` / ``data.max_pixels`` the image processor's own budget, so that the checkpoints'
    ``preprocessor_config.json``, evaluation during training and inference later resize images as training did
    (a model trained on 224x28 banners enlarged to 336x56 must see them enlarged when it answers)."""
    for name in ("min_pixels", "max_pixels"):
        if getattr(data, name) is not None:
            setattr(image_processor, name, int(getattr(data, name)))
    try:
        check_budget(image_processor.factor, image_processor.min_pixels, image_processor.max_pixels)
    except InputError as e:
        raise ConfigError(f"data.min_pixels / data.max_pixels: {e}") from None


def build_mixture(config: TrainConfig, processor, skips: SkipLog) -> Mixture:
    """The run's sampler over its sources. Images are sized by ``processor``'s own budget, which carries
    ``data.min_pixels`` / ``data.max_pixels`` once ``adopt_pixel_budget`` has run."""
    d = config.data
    sources = []
    for s in d.sources:
        if s.type == "jsonl":
            sources.append(JsonlSource(s.path, name=s.name, image_root=s.image_root,
                                       image_processor=processor.image_processor, max_image_tokens=d.max_image_tokens,
                                       validate_images=d.validate_images, skips=skips, progress=d.progress))
        else:
            sources.append(SyntheticSource(name=s.name, tasks=s.tasks, task_weights=s.task_weights, seed=s.seed,
                                           image_size=s.image_size, curriculum=s.curriculum,
                                           grounding_format=s.grounding_format, reading_size=s.reading_size,
                                           letters=config.objects.weight > 0 and config.objects.letters))
    encoder = ConversationEncoder(processor, max_length=d.max_length,
                                  object_kinds=object_kinds(config) if config.objects.weight > 0 else None,
                                  letter_slots=config.objects.letter_slots,
                                  letter_positions=config.spell.positions if config.spell.weight > 0 else 0)
    return Mixture(sources, [s.weight for s in d.sources], encoder, seed=config.seed, skips=skips,
                   max_image_tokens=d.max_image_tokens, prefetch=d.prefetch)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _keep_lines(path: Path, keep) -> list[dict]:
    """Rewrite a JSONL log keeping the rows ``keep(row)`` accepts (unreadable rows, cut by a kill, dropped)."""
    rows = [r for r in read_jsonl(path) if keep(r)]
    if path.exists():
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        os.replace(tmp, path)
    return rows


# optim.loss_per -> p: each sample's labelled tokens weigh n ** -p, so the sample weighs n ** (1 - p).
_LOSS_PER_POWER = {"sample": 1.0, "sqrt": 0.5}


def _row_weights(batch, loss_per: str = "sample") -> tuple[torch.Tensor, float]:
    """Each sample's token weight, n ** -p for its n labelled tokens (0 for a sample without any), and the
    batch's total weight, the sum of n ** (1 - p): 1 / n and the number of samples for ``sample``. For packed rows
    the weights are per token, [b, L]."""
    packed = batch.segments is not None
    n = batch.sample_loss_tokens.double() if packed else (batch.labels[:, 1:] != IGNORE).sum(1).double()
    power = _LOSS_PER_POWER[loss_per]
    has = n > 0
    w = torch.where(has, n.clamp(min=1) ** -power, torch.zeros_like(n))
    total = float(torch.where(has, n.clamp(min=1) ** (1 - power), torch.zeros_like(n)).sum())  # exact counts
    if packed:  # per token: its sample's weight (0 on padding)
        seg = batch.segments
        w = torch.where(seg >= 0, w[seg.clamp(min=0)], torch.zeros((), dtype=w.dtype))
    return w, total


class Trainer:
    def __init__(self, config: TrainConfig, *, resume: str | bool | None = None, progress: bool = True):
        self.config = c = config
        self.dist = distributed.setup(c.device)
        if c.threads:
            torch.set_num_threads(c.threads)
        _seed_all(c.seed + self.dist.rank)
        self.out = Path(c.output_dir)
        self.progress = progress
        self.accumulation = c.accumulation(self.dist.world)  # checks that the batch splits
        self.micro = c.batch.global_batch_size // self.dist.world // self.accumulation

        # Cheap checks first: the tokenizer and every data file, before a (possibly large) model is loaded.
        image_token_index, vocab_size = token_facts(c.model)
        self.processor = load_processor(c.model, c.tokenizer, image_token_index, vocab_size)
        adopt_pixel_budget(self.processor.image_processor, c.data)
        self.skips = SkipLog(stop=c.data.on_bad_record == "stop")
        self.mixture = build_mixture(c, self.processor, self.skips)
        self.index_skips = self.skips.count  # the same on every process: each indexes every file
        self.lazy_skips = 0  # skipped while training, summed over processes
        self._reported = self.skips.count

        self.model = load_model(c.model).to(self.dist.device)
        assert (self.model.config.image_token_index, self.model.config.text_config.vocab_size) == \
            (image_token_index, vocab_size), "token_facts disagrees with the loaded model"
        self.trainable = apply_freeze(self.model, c)
        self.model.language_model.model.gradient_checkpointing = c.precision.gradient_checkpointing
        self.model.train()
        self.autocast_dtype = resolve_autocast(c.precision.autocast, self.dist.device)
        rc = c.reconstruction
        self.reconstruction = None
        if rc.weight > 0:
            try:
                self.reconstruction = PixelReconstruction(self.model.config.vision_config,
                                                          self.model.config.text_config.hidden_size, pool=rc.pool,
                                                          seed=c.model.init_seed).to(self.dist.device)
            except ValueError as e:
                raise ConfigError(str(e)) from e
        self.objects = None
        if c.objects.weight > 0:
            self.objects = ObjectMap(self.model.config.text_config.hidden_size, object_kinds(c), c.objects.box_weight,
                                     seed=c.model.init_seed, kind_loss=c.objects.kind_loss,
                                     letter_slots=c.objects.letter_slots).to(self.dist.device)
        layers = self.model.config.text_config.num_hidden_layers
        for name in ("match", "spell"):  # the language-model-side heads read the hidden state after their layer
            section = getattr(c, name)
            if section.weight > 0 and section.layer > layers:
                raise ConfigError(f"{name}.layer: {section.layer}, but the language model has {layers} layers")
        self.match = None
        if c.match.weight > 0:
            self.match = QueryMatch(self.model.config.text_config.hidden_size,
                                    seed=c.model.init_seed).to(self.dist.device)
        self.spell = None
        if c.spell.weight > 0:
            self.spell = Spelling(self.model.config.text_config.hidden_size, c.spell.positions,
                                  seed=c.model.init_seed).to(self.dist.device)
        self.loss_model = CausalLMLoss(self.model, self.autocast_dtype, self.reconstruction, rc.weight,
                                       self.objects, c.objects.weight, language_model=c.stage != "vision",
                                       match=self.match, match_weight=c.match.weight, match_layer=c.match.layer,
                                       spell=self.spell, spell_weight=c.spell.weight, spell_layer=c.spell.layer)
        self.wrapped: torch.nn.Module = self.loss_model
        if self.dist.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.dist.device.index] if self.dist.device.type == "cuda" else None
            # Unused parameters happen (a text-only micro-batch leaves the vision tower out).
            self.wrapped = DistributedDataParallel(self.loss_model, device_ids=ids, find_unused_parameters=True,
                                                   broadcast_buffers=False)  # buffers are constants
        # The training-only heads that are on, by config section: optimised, saved and restored with the run.
        self.heads = {name: m for name, m in (("reconstruction", self.reconstruction), ("objects", self.objects),
                                              ("match", self.match), ("spell", self.spell)) if m is not None}
        self.params = [p for p in self.loss_model.parameters() if p.requires_grad]
        # optim.ema: the average of the model's trained weights (by name), beside the weights being trained.
        self.averaged = {n: p for n, p in self.model.named_parameters() if p.requires_grad} if c.optim.ema else {}
        self.ema = {n: p.detach().clone() for n, p in self.averaged.items()}
        self.optimizer = make_optimizer(self.model, c.optim, self.heads or None)
        self.scheduler = make_scheduler(self.optimizer, c.optim)

        self.step = 0
        self.writer = CheckpointWriter(self.out / "checkpoints", keep=c.checkpoint.keep)
        self.eval_examples = held_out_examples(c.eval) if (c.eval.every or c.eval.at_end) and self.dist.is_main else []
        self.last_eval: dict[str, float] | None = None

        resume_from = self._resume_path(resume)
        if resume_from is not None:
            self._load(resume_from)
        else:
            self._init_heads()
        if self.dist.is_main:
            self._start_files()
        distributed.barrier(self.dist)  # the output folder exists before any process writes to it

    # ------------------------------------------------------------------------------------------ resume
    def _resume_path(self, resume: str | bool | None) -> Path | None:
        if not resume:
            return None
        if resume is True or resume == "auto":
            found = latest_checkpoint(self.out / "checkpoints")
            if found is None and self.dist.is_main:
                print(f"zamba2vl train: no checkpoint under {self.out / 'checkpoints'}; starting from step 0",
                      file=sys.stderr)
            return found
        path = Path(resume)
        if not path.is_dir():
            raise ConfigError(f"--resume {resume}: no such checkpoint folder")
        return path

    def _init_heads(self) -> None:
        """Heads whose section names ``init_from`` start from that checkpoint's trained head."""
        for name, head in self.heads.items():
            given = getattr(self.config, name).init_from
            if given is None:
                continue
            folder = checkpoint_folder(given)  # a step folder, or a run's checkpoints/latest
            try:
                state = load_trainer_state(folder, 0)[0]
            except CheckpointError as e:
                raise ConfigError(f"{name}.init_from: {e}") from e
            if name not in state:
                raise ConfigError(f"{name}.init_from: {folder} was not trained with a {name} head (its run had "
                                  f"{name}.weight 0); remove init_from to start a fresh head")
            theirs = {k: tuple(v.shape) for k, v in state[name].items()}
            ours = {k: tuple(v.shape) for k, v in head.state_dict().items()}
            if theirs != ours:
                raise ConfigError(f"{name}.init_from: {folder}'s {name} head has tensors {theirs}, this run's {ours}; "
                                  f"the two runs' {name} settings (kinds, letters, letter_slots, pool) or model widths "
                                  "differ")
            head.load_state_dict(state[name])

    def _load(self, folder: Path) -> None:
        state, rng = load_trainer_state(folder, self.dist.rank)
        load_model_weights(self.model, folder)
        if bool(self.ema) != ("ema_trained" in state):
            had = "with" if "ema_trained" in state else "without"
            raise ConfigError(f"{folder} was written by a run {had} optim.ema, and this run's optim.ema is "
                              f"{self.config.optim.ema}; resume with the run's own settings, or start a new run "
                              "from the checkpoint with model.path")
        if self.ema:  # the folder's model weights are the average; the trained ones are in its state
            with torch.no_grad():
                for n, p in self.averaged.items():
                    self.ema[n].copy_(p)
                    p.copy_(state["ema_trained"][n])
        for name, head in self.heads.items():
            if name not in state:
                raise ConfigError(f"{folder}: the checkpoint has no {name} head but this run trains one "
                                  f"({name}.weight > 0); resume with the run's own settings, or start a new run "
                                  "from the checkpoint with model.path")
            head.load_state_dict(state[name])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as e:  # another set of trained parameters
            raise ConfigError(f"{folder}: the checkpoint's optimizer state does not fit this run's trainable "
                              f"parameters ({e}); were stage or freeze changed? Start a new run (without "
                              "--resume) from the checkpoint with model.path instead") from e
        self.scheduler.load_state_dict(state["scheduler"])
        self.mixture.load_state_dict(state["data"])
        self.step = int(state["step"])
        self.lazy_skips = int(state["lazy_skips"])
        set_rng_state(rng)
        if self.dist.is_main:
            print(f"zamba2vl train: resumed from {folder} at step {self.step}", file=sys.stderr)

    def _start_files(self) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(self.config.to_dict(), sort_keys=False))
        step = self.step
        _keep_lines(self.out / "loss.jsonl", lambda r: r.get("step", 0) <= step)
        _keep_lines(self.out / "eval.jsonl", lambda r: r.get("step", 0) <= step)
        lazy = [r for r in read_jsonl(self.out / "skipped.jsonl") if r.get("step") is not None and r["step"] <= step]
        index = [{"step": None, "where": w, "reason": r} for w, r in self.skips.records]
        (self.out / "skipped.jsonl").write_text("".join(json.dumps(r) + "\n" for r in index + lazy), encoding="utf-8")

    # ------------------------------------------------------------------------------------------ one step
    def _train_step(self) -> dict[str, float]:
        d = self.dist
        t0 = time.perf_counter()
        skips_before = self.skips.count
        micro_batches = self.mixture.next_step(self.config.batch.global_batch_size, d.rank, d.world, self.micro,
                                               more=self.step + 1 < self.config.optim.max_steps)
        pad = self.processor.tokenizer.pad_token_id or 0
        batches = [(pack if self.config.data.pack else collate)(mb, pad) for mb in micro_batches]
        loss_per = self.config.optim.loss_per
        # The step's loss is the sum of (weighted) token losses over the global batch divided by the total
        # weight: labelled tokens by default; samples when each sample's tokens share a weight of 1; or, with
        # sqrt, the sum of sqrt(n) when each of a sample's n tokens weighs 1 / sqrt(n).
        if loss_per == "token":
            row_weights = [None] * len(batches)
            weight = float(sum(b.num_loss_tokens for b in batches))
        else:
            pairs = [_row_weights(b, loss_per) for b in batches]
            row_weights = [w for w, _ in pairs]
            weight = sum(total for _, total in pairs)
        local = torch.tensor([weight, float(self.skips.count - skips_before)], dtype=torch.float64)
        tokens, new_skips = distributed.all_sum(local, d).tolist()
        self._report_skips()
        scale = d.world / max(tokens, 1.0)  # DDP divides by world: the step's gradient is d(sum)/d(w) / tokens
        loss_sum = torch.zeros((), dtype=torch.float32, device=d.device)
        # LM loss, reconstruction error, images, objects loss, annotated images, match loss, images asked about,
        # spell loss, images with letters
        parts = torch.zeros(9, dtype=torch.float64, device=d.device)
        for i, b in enumerate(batches):
            b = b.to(d.device)
            last = i == len(batches) - 1
            sync = contextlib.nullcontext() if last or d.world == 1 else self.wrapped.no_sync()
            with sync:
                w = None if row_weights[i] is None else row_weights[i].to(d.device)
                loss, _ = self.wrapped(b.input_ids, b.labels, b.pixel_values, b.image_grid_thw, w, b.objects,
                                       b.segments)
                (loss * scale).backward()
            loss_sum += loss.detach()
            if self.heads:
                p = self.loss_model.last_parts
                parts[0] += p["lm"].double()
                parts[1] += p["reconstruction"].double()
                parts[2] += p["images"]
                parts[3] += p["objects"].double()
                parts[4] += p["annotated"]
                parts[5] += p["match"].double()
                parts[6] += p["asked"]
                parts[7] += p["spell"].double()
                parts[8] += p["spelt"]
        clip = self.config.optim.clip_grad_norm
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip else float("inf"))
        lr = self.config.optim.lr * self.scheduler.lr_lambdas[0](self.scheduler.last_epoch)  # before lr_scale
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema:
            self._update_ema()
        total = distributed.all_sum(loss_sum.double()[None], d).item()
        self.lazy_skips += int(new_skips)
        self.step += 1
        # "tokens" is the step's normaliser: labelled tokens, samples, or the sum of sqrt(n) (optim.loss_per).
        row = {"step": self.step, "loss": total / max(tokens, 1.0), "lr": lr, "grad_norm": float(grad_norm),
               "tokens": int(tokens) if tokens.is_integer() else round(tokens, 3),
               "skipped": self.index_skips + self.lazy_skips}
        if self.heads:
            # "loss" is what was minimised; "lm_loss" the language model's part of it (comparable with a run
            # without the auxiliary objectives); "reconstruction_mse" the mean error per image; "objects_loss"
            # the mean objects loss per annotated image; "match_loss" the mean match loss per image with match flags;
            # "spell_loss" the mean spell loss per image with letters.
            lm, err, images, obj, annotated, match, asked, spell, spelt = distributed.all_sum(parts.cpu(), d).tolist()
            row["lm_loss"] = lm / max(tokens, 1.0)
            if self.reconstruction is not None:
                row["reconstruction_mse"] = err / max(images, 1.0)
            if self.objects is not None:
                row["objects_loss"] = obj / max(annotated, 1.0)
            if self.match is not None:
                row["match_loss"] = match / max(asked, 1.0)
            if self.spell is not None:
                row["spell_loss"] = spell / max(spelt, 1.0)
        row["step_s"] = round(time.perf_counter() - t0, 4)
        return row

    def _report_skips(self) -> None:
        new = self.skips.records[self._reported :]
        self._reported = self.skips.count
        if new:
            with open(self.out / "skipped.jsonl", "a", encoding="utf-8") as f:
                f.write("".join(json.dumps({"step": self.step + 1, "where": w, "reason": r}) + "\n" for w, r in new))

    # ------------------------------------------------------------------------------------------ the loop
    def train(self) -> dict[str, Any]:
        c, d = self.config, self.dist
        from tqdm import tqdm

        kill_after = int(os.environ.get(KILL_ENV, "0") or 0)
        if d.is_main:
            parts = ", ".join(f"{p} {self.trainable[p] / 1e6:.2f}M" for p in PARTS if self.trainable[p])
            frozen = [p for p in PARTS if not self.trainable[p]]
            print(f"zamba2vl train: stage {c.stage}; training {parts}; frozen: {', '.join(frozen) or 'nothing'}; "
                  f"{d.world} process(es) x {self.accumulation} micro-batch(es) of {self.micro}; autocast "
                  f"{self.autocast_dtype or 'off'}; {self.index_skips} bad record(s) skipped while indexing",
                  file=sys.stderr, flush=True)
            if emulated_bf16(c.precision.autocast, d.device):
                print("zamba2vl train: warning: precision.autocast is bf16, but this CPU has no native bf16 matrix "
                      "units (AVX512-BF16 or AMX), so bf16 is emulated and a step is several times slower than in "
                      "fp32 (the nano config: 16x on a 2-core AVX2 EPYC). Use --set precision.autocast=auto (bf16 "
                      "only where it is native) or none.", file=sys.stderr, flush=True)
        bar = tqdm(total=c.optim.max_steps, initial=self.step, desc=f"train {c.stage}", unit="step",
                   disable=not (self.progress and d.is_main) or None)
        log = open(self.out / "loss.jsonl", "a", encoding="utf-8") if d.is_main else None
        last: dict[str, Any] = {}
        try:
            while self.step < c.optim.max_steps:
                last = self._train_step()
                if not math.isfinite(last["loss"]):
                    raise FloatingPointError(f"the loss is {last['loss']} at step {self.step}; lower optim.lr or "
                                             "check the data (see loss.jsonl)")
                if log and (self.step % c.log.every == 0 or self.step == c.optim.max_steps):
                    log.write(json.dumps(last) + "\n")
                    log.flush()
                bar.update(1)
                bar.set_postfix(loss=f"{last['loss']:.4f}", lr=f"{last['lr']:.2e}")
                done = self.step == c.optim.max_steps
                if (c.checkpoint.every and self.step % c.checkpoint.every == 0) or done:
                    self.save()
                if c.eval.every and self.step % c.eval.every == 0 or done and c.eval.at_end:
                    self.run_eval()
                if d.is_main and (self.step % c.log.plot_every == 0 or done or
                                  (c.checkpoint.every and self.step % c.checkpoint.every == 0)):
                    self.plot()
                if kill_after and self.step == kill_after:
                    if log:
                        log.close()
                    os.kill(os.getpid(), signal.SIGKILL)
        finally:
            bar.close()
            self.mixture.close()
            if log:
                log.close()
        summary = {"step": self.step, "loss": last.get("loss"), "skipped": self.index_skips + self.lazy_skips,
                   "checkpoint": str(latest_checkpoint(self.out / "checkpoints")), "eval": self.last_eval}
        if d.is_main:
            print(f"zamba2vl train: done at step {self.step}; last loss {summary['loss']}; "
                  f"{summary['skipped']} bad record(s) skipped (listed in {self.out / 'skipped.jsonl'}); "
                  f"checkpoint {summary['checkpoint']}", file=sys.stderr, flush=True)
        return summary

    # ------------------------------------------------------------------------------------------ averaged weights
    def ema_decay(self, step: int) -> float:
        """The decay of the update after optimizer step ``step`` (1-based): short memory at first."""
        return min(self.config.optim.ema, (1 + step) / (10 + step))

    @torch.no_grad()
    def _update_ema(self) -> None:
        weight = 1.0 - self.ema_decay(self.step + 1)  # self.step is this step's number - 1 until the caller counts it
        for name, p in self.averaged.items():
            self.ema[name].lerp_(p, weight)

    @contextlib.contextmanager
    def _averaged_weights(self):
        """The model holds the averaged weights inside (nothing changes without optim.ema); yields the trained
        weights, restored on the way out."""
        if not self.ema:
            yield {}
            return
        trained = {n: p.detach().clone() for n, p in self.averaged.items()}
        with torch.no_grad():
            for n, p in self.averaged.items():
                p.copy_(self.ema[n])
        try:
            yield trained
        finally:
            with torch.no_grad():
                for n, p in self.averaged.items():
                    p.copy_(trained[n])

    # ------------------------------------------------------------------------------------------ side work
    def save(self) -> Path:
        d = self.dist
        if d.is_main:
            self.writer.begin(self.step)
        distributed.barrier(d)
        self.writer.write_rank(self.step, d.rank)
        distributed.barrier(d)
        path = None
        if d.is_main:
            config = self.config.to_dict()
            state = {"step": self.step, "optimizer": self.optimizer.state_dict(),
                     "scheduler": self.scheduler.state_dict(), "data": self.mixture.state_dict(),
                     "lazy_skips": self.lazy_skips, "world": d.world, "config": config}
            state.update({name: head.state_dict() for name, head in self.heads.items()})
            with self._averaged_weights() as trained:  # the folder's model is the average (optim.ema)
                if trained:
                    state["ema_trained"] = trained
                path = self.writer.commit(self.step, self.model, self.processor, state, config)
        distributed.barrier(d)
        return path

    def run_eval(self) -> None:
        if self.dist.is_main and self.eval_examples:
            t0 = time.perf_counter()
            with self._averaged_weights():
                result = evaluate(self.model, self.processor, self.eval_examples,
                                  max_new_tokens=self.config.eval.max_new_tokens)
            self.last_eval = result.accuracy
            row = {"step": self.step, "accuracy": result.accuracy, "eval_s": round(time.perf_counter() - t0, 2),
                   "samples": result.samples}
            with open(self.out / "eval.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            acc = " ".join(f"{k} {v:.2f}" for k, v in result.accuracy.items())
            print(f"\nzamba2vl train: step {self.step} eval: {acc}", file=sys.stderr, flush=True)
        distributed.barrier(self.dist)

    def plot(self) -> None:
        plot_run(read_jsonl(self.out / "loss.jsonl"), read_jsonl(self.out / "eval.jsonl"), self.out / "loss.png",
                 title=f"{self.config.stage} loss")

    def close(self) -> None:
        distributed.teardown(self.dist)


def run_training(config: TrainConfig, *, resume: str | bool | None = None, progress: bool = True) -> dict[str, Any]:
    trainer = Trainer(config, resume=resume, progress=progress)
    try:
        return trainer.train()
    finally:
        trainer.close()
