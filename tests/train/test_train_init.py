"""Random initialisation options of a run (model.embedding_init_std)."""

from __future__ import annotations

import pytest
import torch
from trainkit import IMAGE_TOKEN_ID, TINY_TEXT, TINY_VISION

from zamba2vl.errors import ConfigError
from zamba2vl.train.build import load_model
from zamba2vl.train.config import ModelSection


def _section(**kw) -> ModelSection:
    text = {**TINY_TEXT, "tie_word_embeddings": False}
    return ModelSection(config={"image_token_index": IMAGE_TOKEN_ID, "text_config": text,
                                "vision_config": TINY_VISION}, **kw)


def test_embedding_init_std_scales_only_the_input_embeddings():
    plain = load_model(_section())
    scaled = load_model(_section(embedding_init_std=0.5))
    e_plain = plain.language_model.model.embed_tokens.weight
    e_scaled = scaled.language_model.model.embed_tokens.weight
    assert e_plain.std().item() == pytest.approx(plain.config.text_config.initializer_range, rel=0.05)
    assert e_scaled.std().item() == pytest.approx(0.5, rel=0.02)
    # Everything else is the same initialisation, the output head included (untied).
    for (name, a), (_, b) in zip(plain.named_parameters(), scaled.named_parameters()):
        if "embed_tokens" not in name:
            assert torch.equal(a, b), name
    # Deterministic given the seed.
    again = load_model(_section(embedding_init_std=0.5))
    assert torch.equal(again.language_model.model.embed_tokens.weight, e_scaled)


def test_embedding_init_std_must_be_positive():
    with pytest.raises(ConfigError, match="embedding_init_std"):
        load_model(_section(embedding_init_std=0.0))
