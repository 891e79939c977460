"""Shared pieces of the training tests: the Mistral tokenizer (+ <image>) saved once per process, a tiny
Zamba2-VL config, a tiny stage config, and a runner for the training CLI in a subprocess."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mistral_common
import torch
import yaml

SPM_PATH = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
IMAGE_TOKEN_ID = 32000

TINY_TEXT = dict(vocab_size=32064, hidden_size=32, num_hidden_layers=2, layers_block_type=["mamba", "hybrid"],
                 mamba_d_state=16, n_mamba_heads=4, num_attention_heads=2, intermediate_size=64, adapter_rank=4,
                 use_mem_rope=True, use_shared_attention_adapter=True, chunk_size=64)
TINY_VISION = dict(depth=2, hidden_size=32, num_heads=2, intermediate_size=48, out_hidden_size=32,
                   fullatt_block_indexes=[1], window_size=56, temporal_patch_size=1)


def tiny_vl_config():
    """The Zamba2VLConfig of TINY_TEXT + TINY_VISION with the Mistral <image> id (what random stage configs build)."""
    from zamba2vl.config import Zamba2VLConfig

    return Zamba2VLConfig.from_dict({"model_type": "zamba2_vl", "image_token_index": IMAGE_TOKEN_ID,
                                     "text_config": {"model_type": "zamba2", **TINY_TEXT},
                                     "vision_config": TINY_VISION})


@functools.lru_cache(maxsize=1)
def tokenizer_dirs() -> tuple[Path, Path]:
    """(Mistral v0.1 tokenizer folder, the same with <image> = 32000), built once per process (~1 s)."""
    from zamba2vl.processing.tokenizer import Tokenizer
    from zamba2vl.train.build import add_image_token

    root = Path(tempfile.mkdtemp(prefix="zamba2vl-train-tok-"))
    atexit.register(shutil.rmtree, root, True)
    tok = Tokenizer.from_sentencepiece(SPM_PATH)
    tok.save_pretrained(root / "base")
    add_image_token(tok, "<image>", IMAGE_TOKEN_ID, "test")
    tok.save_pretrained(root / "image")
    return root / "base", root / "image"


def processor():
    """The processor a run with this tokenizer uses (the default chat template made explicit)."""
    from zamba2vl.train.build import load_processor
    from zamba2vl.train.config import ModelSection, TokenizerSection

    return load_processor(ModelSection(), TokenizerSection(path=str(tokenizer_dirs()[1])), IMAGE_TOKEN_ID, 32064)


def stage_config(out: Path, **sections) -> dict:
    """A tiny stage config (random model, synthetic 56-pixel images: 4 image tokens a sample)."""
    config = {
        "stage": "pretrain", "seed": 0, "output_dir": str(out), "threads": 1,
        "model": {"config": {"image_token_index": IMAGE_TOKEN_ID, "text_config": TINY_TEXT,
                             "vision_config": TINY_VISION}},
        "tokenizer": {"path": str(tokenizer_dirs()[1])},
        "data": {"sources": [{"type": "synthetic", "image_size": 56, "seed": 5}], "max_length": 128,
                 "max_image_tokens": 64, "progress": False},
        "optim": {"lr": 3e-3, "warmup_steps": 2, "max_steps": 10, "weight_decay": 0.01},
        "batch": {"global_batch_size": 2, "micro_batch_size": 2},
        "precision": {"autocast": "none"},
        "checkpoint": {"every": 0, "keep": 2},
        "log": {"plot_every": 1000},
        "eval": {"every": 0, "at_end": False, "image_size": 56},
    }
    for name, value in sections.items():
        config[name] = {**config.get(name, {}), **value} if isinstance(value, dict) else value
    return config


def write_config(path: Path, config: dict) -> Path:
    path.write_text(yaml.safe_dump(config))
    return path


def env() -> dict:
    e = {**os.environ, "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo", "PYTHONWARNINGS": "ignore"}
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(name, None)
    return e


def start_train(config_path: Path, *extra: str, torchrun: int = 0, extra_env: dict | None = None) -> subprocess.Popen:
    """Start ``zamba2vl.train`` (under torchrun with ``torchrun`` processes); ``finish`` waits for it."""
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(torchrun)] \
        if torchrun else [sys.executable]
    cmd = [*launcher, "-m", "zamba2vl.train", "--config", str(config_path), "--no-progress", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**env(), **(extra_env or {})})


def finish(proc: subprocess.Popen, timeout: int = 180) -> subprocess.CompletedProcess:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def run_train(config_path: Path, *extra: str, **kwargs) -> subprocess.CompletedProcess:
    return finish(start_train(config_path, *extra, **kwargs))


def losses(run_dir: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (run_dir / "loss.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows}


def straight_and_resumed(tmp_path: Path, config) -> tuple[dict[int, float], dict[int, float]]:
    """Run ``config(name, checkpoint_every)`` (a stage config dict) twice side by side: "straight" without
    checkpoints, and "killed" with a checkpoint every 2 steps, SIGKILLed after step 3 and resumed. Asserts each
    process ended as expected; returns their losses by step (straight, killed)."""
    import signal

    from zamba2vl.train.trainer import KILL_ENV

    straight = start_train(write_config(tmp_path / "straight.yaml", config("straight", 0)))
    killed = write_config(tmp_path / "killed.yaml", config("killed", 2))
    first = finish(start_train(killed, extra_env={KILL_ENV: "3"}))
    assert first.returncode == -signal.SIGKILL, first.stderr[-3000:]
    resumed = run_train(killed, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    straight = finish(straight)
    assert straight.returncode == 0, straight.stderr[-3000:]
    return losses(tmp_path / "straight"), losses(tmp_path / "killed")


def train_in_process(config: dict) -> dict:
    """Run a stage in this process; torch's thread count and the global RNGs are restored afterwards."""
    from zamba2vl.train.checkpoints import rng_state, set_rng_state
    from zamba2vl.train.config import config_from_dict
    from zamba2vl.train.trainer import run_training

    threads, rng = torch.get_num_threads(), rng_state()
    try:
        return run_training(config_from_dict(config), progress=False)
    finally:
        torch.set_num_threads(threads)
        set_rng_state(rng)


@contextlib.contextmanager
def one_thread():
    """Tiny models run fastest on one thread (and a busy machine makes two threads' barriers very slow)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
