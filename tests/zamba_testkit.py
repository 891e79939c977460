"""Test helpers shared across folders: tiny Zamba2 configs mirroring each released size, the 4.52.4 oracle.

A plain module (not conftest.py): several folders have a conftest.py, and `from conftest import ...` would
resolve to whichever was imported first.
"""

from __future__ import annotations

import torch

# Tiny configs with the structure of each size (spec 2.3): number of shared blocks, RoPE, q/k/v adapters, groups.
TINY_TEXT = {
    # 1.2B: one block, RoPE, q/k/v LoRA, d_state 128
    "like_1.2b": dict(hidden_size=64, num_hidden_layers=8, layers_block_type=["mamba", "mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba", "mamba"],
                      num_mem_blocks=1, use_mem_rope=True, use_shared_attention_adapter=True, mamba_d_state=128,
                      mamba_ngroups=1, n_mamba_heads=8, num_attention_heads=4, adapter_rank=8, intermediate_size=96),
    # 2.7B: two blocks (ABAB), no RoPE, no attention LoRA
    "like_2.7b": dict(hidden_size=64, num_hidden_layers=10, layers_block_type=["mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba", "hybrid", "mamba", "hybrid", "mamba"],
                      num_mem_blocks=2, use_mem_rope=False, use_shared_attention_adapter=False, mamba_d_state=32,
                      mamba_ngroups=1, n_mamba_heads=8, num_attention_heads=4, adapter_rank=8, intermediate_size=96),
    # 7B: two blocks, RoPE, two B/C groups (group-wise gated norm)
    "like_7b": dict(hidden_size=64, num_hidden_layers=9, layers_block_type=["mamba", "hybrid", "mamba", "hybrid", "mamba", "mamba", "hybrid", "mamba", "mamba"],
                    num_mem_blocks=2, use_mem_rope=True, use_shared_attention_adapter=False, mamba_d_state=32,
                    mamba_ngroups=2, n_mamba_heads=8, num_attention_heads=4, adapter_rank=8, intermediate_size=96),
}


def tiny_text_dict(name: str, vocab_size: int = 128, **over) -> dict:
    d = dict(TINY_TEXT[name], vocab_size=vocab_size, model_type="zamba2", chunk_size=256, mamba_d_conv=4, mamba_expand=2,
             max_position_embeddings=4096, rms_norm_eps=1e-5, tie_word_embeddings=True)
    d.update(over)
    return d


def randomize_(module: torch.nn.Module, seed: int) -> None:
    """Fill every parameter with values that make each component matter (norm weights near 1, dt_bias near -3...)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.rand(p.shape, generator=g) * 2 - 1)
            elif name.endswith("dt_bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.5 - 3.0)
            elif name.endswith(".D"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif "norm" in name and p.dim() == 1:
                p.copy_(1 + 0.2 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=g) / fan_in**0.5)
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def make_oracle_lm(config_dict: dict, seed: int = 0):
    """transformers 4.52.4 Zamba2ForCausalLM with random weights, in float32, eval mode."""
    from transformers import Zamba2Config, Zamba2ForCausalLM

    cfg = Zamba2Config(**{k: v for k, v in config_dict.items() if k != "model_type"})
    cfg._attn_implementation = "eager"
    torch.manual_seed(seed)
    model = Zamba2ForCausalLM(cfg).eval()
    randomize_(model, seed)
    return model
