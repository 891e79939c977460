"""Tiny random Zamba2-VL checkpoints for tests, examples and benchmarks (no network needed).

The tokenizer is the real Mistral v0.1 SentencePiece model (shipped in the `mistral-common` wheel, installed by
`make test`) plus an ``<image>`` token, so prompts tokenize exactly as they would with a released checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from zamba2vl.config import VisionConfig, Zamba2TextConfig, Zamba2VLConfig
from zamba2vl.model import Zamba2VL
from zamba2vl.processing.image import ImageProcessor
from zamba2vl.processing.processor import Processor
from zamba2vl.processing.tokenizer import Tokenizer

IMAGE_TOKEN = "<image>"


def mistral_sentencepiece_path() -> Path:
    try:
        import mistral_common
    except ImportError as e:
        raise RuntimeError("tiny checkpoints use the Mistral tokenizer from `pip install --no-deps mistral-common`") from e
    return Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"


def tiny_vl_config(hidden: int = 64, vocab: int = 32064) -> Zamba2VLConfig:
    text = Zamba2TextConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=4, layers_block_type=["mamba", "hybrid", "mamba", "hybrid"],
        num_mem_blocks=1, use_mem_rope=True, use_shared_attention_adapter=True, mamba_d_state=16, n_mamba_heads=4,
        num_attention_heads=4, adapter_rank=4, intermediate_size=2 * hidden, max_position_embeddings=4096,
    )
    vision = VisionConfig(depth=2, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=hidden,
                          window_size=56, fullatt_block_indexes=[1])
    return Zamba2VLConfig(text_config=text, vision_config=vision, image_token_index=32000)


def random_init_(model: torch.nn.Module, seed: int = 0, embed_std: float = 1.0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=g))
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 - 3.0)
            elif "norm" in name and p.dim() == 1 or name.endswith(".D"):
                p.fill_(1.0)
            elif "embed_tokens" in name:
                p.copy_(embed_std * torch.randn(p.shape, generator=g, dtype=p.dtype))
            elif p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) / p[0].numel() ** 0.5)
            else:
                p.zero_()


def make_tiny_checkpoint(folder: str | os.PathLike, *, seed: int = 0, dtype: torch.dtype = torch.float32,
                         config: Zamba2VLConfig | None = None, max_pixels: int = 28 * 28 * 64,
                         max_shard_bytes: int = 4 * 1024**3) -> Path:
    """Write a complete random Zamba2-VL checkpoint folder (config, weights, tokenizer, processor, template).

    The model is built on the meta device and materialised directly in ``dtype``, so a full-size checkpoint
    needs only its own size in memory.
    """
    folder = Path(folder)
    config = config or tiny_vl_config()
    with torch.device("meta"):
        model = Zamba2VL(config)
    model = model.to_empty(device="cpu").to(dtype)
    random_init_(model, seed, embed_std=1.0 if config.text_config.hidden_size <= 256 else 0.02)
    model.save_pretrained(folder, max_shard_bytes=max_shard_bytes)
    tok = Tokenizer.from_sentencepiece(mistral_sentencepiece_path(), added_tokens=[IMAGE_TOKEN])
    from zamba2vl.processing.chat import DEFAULT_CHAT_TEMPLATE

    tok.chat_template = DEFAULT_CHAT_TEMPLATE
    Processor(tok, ImageProcessor(min_pixels=28 * 28 * 4, max_pixels=max_pixels), image_token=IMAGE_TOKEN).save_pretrained(folder)
    return folder
