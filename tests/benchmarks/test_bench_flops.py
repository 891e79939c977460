"""The FLOP, parameter and byte formulas of benchmarks/flops.py against counts derived independently: the modules
of built models (nn.Linear in x out per visit) and torch's FlopCounterMode over real forwards."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from zamba_testkit import tiny_text_dict

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import flops  # noqa: E402

from zamba2vl.cache import HybridCache  # noqa: E402
from zamba2vl.config import VisionConfig, Zamba2TextConfig, text_preset  # noqa: E402
from zamba2vl.text.model import HybridLayer, Zamba2LM  # noqa: E402
from zamba2vl.vision.tower import VisionTower  # noqa: E402

aten = torch.ops.aten
TINY = ["like_1.2b", "like_2.7b", "like_7b"]


def _mm_flop(a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * a_shape[0] * a_shape[1] * b_shape[1]


def _baddbmm_inplace_flop(self_shape, a_shape, b_shape, *args, out_shape=None, **kwargs) -> int:
    b, m, k = a_shape
    return 2 * b * m * k * b_shape[2]


def _sdpa_cpu_flop(q_shape, k_shape, v_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(q_shape, k_shape, v_shape)  # full (non-causal) attention: 4 * b * h * Lq * Lk * d


def count(fn) -> dict[str, int]:
    """FLOPs of ``fn()`` by kind of operation: linear layers (mm/addmm), batched products (bmm/baddbmm), attention."""
    mapping = {aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_flop, aten.baddbmm_: _baddbmm_inplace_flop}
    with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=mapping) as fc:
        fn()
    got = {str(k).split(".")[-1]: v for k, v in fc.get_flop_counts()["Global"].items()}
    return {"linear": got.get("mm", 0) + got.get("addmm", 0),
            "batched": got.get("bmm", 0) + got.get("baddbmm", 0) + got.get("baddbmm_", 0),
            "attention": got.get("_scaled_dot_product_flash_attention_for_cpu", 0)}


def tiny_lm(name: str) -> tuple[dict, Zamba2LM]:
    d = tiny_text_dict(name)
    torch.manual_seed(0)
    model = Zamba2LM(Zamba2TextConfig.from_dict(dict(d))).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("dt_bias"):
                p.fill_(-3.0)
    return d, model


# ------------------------------------------------------------------------------------------- parameters
@pytest.mark.parametrize("name", TINY)
def test_zamba2_parameter_count_matches_the_model(name):
    d, model = tiny_lm(name)
    p = flops.zamba2_params(d)
    assert p["total"] == sum(x.numel() for x in model.parameters())
    assert p["non_embedding"] == p["total"] - model.model.embed_tokens.weight.numel()


@pytest.mark.parametrize("size", ["1.2b", "2.7b"])
def test_zamba2_parameter_count_of_the_release_shapes(size):
    cfg = text_preset(size)
    with torch.device("meta"):
        model = Zamba2LM(cfg)
    assert flops.zamba2_params(cfg.to_dict())["total"] == sum(x.numel() for x in model.parameters())


def matmul_params_by_walking(model: Zamba2LM) -> int:
    """in x out of every nn.Linear a token passes through: each layer's own, and at every hybrid layer the whole
    shared block it visits (adapter lists aside) plus the adapters of that visit's slot."""
    total = 0
    for layer in model.model.layers:
        total += sum(m.in_features * m.out_features for m in layer.modules() if isinstance(m, torch.nn.Linear))
        if isinstance(layer, HybridLayer):
            block = model.model.blocks[layer.block_id]
            for name, m in block.named_modules():
                if isinstance(m, torch.nn.Linear) and "adapter_list" not in name:
                    total += m.in_features * m.out_features
            for name, m in block.named_modules():
                if isinstance(m, torch.nn.Sequential) and name.endswith(f"adapter_list.{layer.slot}"):
                    total += sum(x.in_features * x.out_features for x in m)
    return total


@pytest.mark.parametrize("name", TINY)
def test_matmul_term_is_two_flops_per_linear_weight_per_visit_per_token(name):
    d, model = tiny_lm(name)
    L = 100
    expected = 2 * matmul_params_by_walking(model) * L
    assert flops.zamba2_prefill_flops(d, L)["matmul"] == expected
    assert flops.zamba2_params(d)["matmul_per_token"] > flops.zamba2_params(d)["non_embedding"] * 0.9  # shared visits


# -------------------------------------------------------------------------------------------- prefill
@pytest.mark.parametrize("name,L", [("like_1.2b", 128), ("like_2.7b", 200), ("like_7b", 64)])
def test_prefill_terms_match_flop_counter_mode(name, L):
    d, model = tiny_lm(name)
    ids = torch.randint(3, d["vocab_size"], (1, L), generator=torch.Generator().manual_seed(0))
    got = count(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1))
    f = flops.zamba2_prefill_flops(d, L)
    # linear layers and the output head exactly
    assert got["linear"] == f["matmul"] + f["head"]
    # torch counts attention as full (non-causal); the model FLOPs count the causal half
    assert got["attention"] == 2 * f["attention"]
    # the scan: as ops/ssd.py computes it (a [c x c] chunk-to-chunk product per tile; equal today, the tolerance
    # leaves room for small changes of the implementation) and as the formula counts it (the recurrence)
    from zamba2vl.ops import ssd
    from zamba2vl.text.mamba2 import Mamba2Mixer

    assert flops.SSD_CHUNK == Mamba2Mixer.scan_chunk_size
    s = flops.zamba2_shape(d)
    tile = getattr(ssd, "TILE_CHUNKS", None)
    impl = s["n_layers"] * flops.ssd_flops(L, s["H"], s["P"], s["N"], s["G"], tile_chunks=tile)
    assert got["batched"] == pytest.approx(impl, rel=0.05)
    assert f["scan"] <= impl
    assert f["total"] == sum(v for k, v in f.items() if k != "total")


def test_ssd_flops_by_hand():
    # L = 130, Q = 64 -> c = 3 chunks (the last padded); H = 2, P = 4, N = 8, G = 1
    c, Q, H, P, N, G = 3, 64, 2, 4, 8, 1
    expected = 2 * G * c * Q * Q * N + 2 * H * c * Q * Q * P + 2 * H * c * Q * N * P + 2 * H * c * N * P \
        + 2 * H * c * Q * N * P
    assert flops.ssd_flops(130, H, P, N, G, Q) == expected


def test_attention_formula_is_four_l_squared_d_over_two_per_invocation():
    d = tiny_text_dict("like_1.2b")
    s = flops.zamba2_shape(d)
    L = 1000
    assert flops.zamba2_prefill_flops(d, L)["attention"] == len(s["hybrid"]) * 4 * L * L * (2 * d["hidden_size"]) // 2


# ------------------------------------------------------------------------------------- transformers side
@pytest.mark.parametrize("kind", ["llama", "qwen3"])
def test_transformer_terms_match_flop_counter_mode(kind):
    transformers = pytest.importorskip("transformers")
    if kind == "llama":
        cfg = flops.matched_llama(tiny_text_dict("like_2.7b", vocab_size=256))
        Config, Model = transformers.LlamaConfig, transformers.LlamaForCausalLM
    else:
        cfg = dict(flops.QWEN3_1_7B, vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                   num_attention_heads=4, num_key_value_heads=2, head_dim=16)
        Config, Model = transformers.Qwen3Config, transformers.Qwen3ForCausalLM
    kw = {k: v for k, v in cfg.items() if k != "model_type"}
    torch.manual_seed(0)
    model = Model._from_config(Config(**kw), attn_implementation="sdpa").eval()
    p = flops.transformer_params(cfg)
    assert p["total"] == sum(x.numel() for x in model.parameters())
    L = 96
    ids = torch.randint(3, 256, (1, L), generator=torch.Generator().manual_seed(0))
    got = count(lambda: model(input_ids=ids, use_cache=False, logits_to_keep=1))
    f = flops.transformer_prefill_flops(cfg, L)
    assert got["linear"] == f["matmul"] + f["head"]
    assert got["attention"] == 2 * f["attention"]


def test_matched_llama_has_the_same_width_and_non_embedding_parameters():
    from prefill import CONFIG_53M

    z = dict(CONFIG_53M)
    llama = flops.matched_llama(z)
    assert llama["hidden_size"] == z["hidden_size"] and llama["vocab_size"] == z["vocab_size"]
    diff = abs(flops.transformer_params(llama)["non_embedding"] - flops.zamba2_params(z)["non_embedding"])
    assert diff <= 3 * z["hidden_size"] * llama["num_hidden_layers"]  # within one MLP column per layer


# ------------------------------------------------------------------------------------------------ decode
@pytest.mark.parametrize("name", TINY)
def test_decode_bytes_and_cache_bytes(name):
    d, model = tiny_lm(name)
    model = model.to(torch.bfloat16)
    T = 300
    # weights a step passes through, walked in forward order: each layer, the block of each visit with that visit's
    # adapters, the final norm, and the (tied) embedding matrix as the head
    n = model.model.final_layernorm.weight.numel() + model.model.embed_tokens.weight.numel()
    for layer in model.model.layers:
        n += sum(x.numel() for x in layer.parameters())
        if isinstance(layer, HybridLayer):
            block = model.model.blocks[layer.block_id]
            n += sum(x.numel() for k, x in block.named_parameters() if "adapter_list" not in k)
            n += sum(x.numel() for k, x in block.named_parameters() if f"adapter_list.{layer.slot}." in k)
    b = flops.zamba2_decode_bytes(d, T, "bfloat16")
    assert b["weights"] == 2 * n
    cache = HybridCache.empty(model.config, 1, dtype=torch.bfloat16, capacity=T + 10)
    cache.length = T
    assert flops.zamba2_cache_bytes(d, T, "bfloat16") == dict(cache.nbytes(), total=sum(cache.nbytes().values()))
    assert b["total"] == b["weights"] + b["kv"] + b["ssm"] + b["conv"]


def test_qwen3_kv_cache_bytes():
    q = flops.QWEN3_1_7B
    # 28 layers x (K + V) x 8 KV heads x 128 x 2 bytes per token = 112 KiB per token
    assert flops.transformer_cache_bytes(q, 1024, "bfloat16")["kv"] == 28 * 2 * 8 * 128 * 2 * 1024


# ------------------------------------------------------------------------------------------------ vision
def test_vision_flops_match_flop_counter_mode():
    vc = VisionConfig(depth=2, hidden_size=32, intermediate_size=48, num_heads=4, out_hidden_size=64, window_size=56,
                      fullatt_block_indexes=[1])
    torch.manual_seed(0)
    tower = VisionTower(vc).eval()
    assert flops.vision_params(vc.to_dict()) == sum(x.numel() for x in tower.parameters())
    g = 8  # 112 x 112 pixels: 4 windows of 4 x 4 patches, all full
    px = torch.randn(g * g, vc.patch_dim)
    got = count(lambda: tower(px, torch.tensor([[1, g, g]])))
    f = flops.vision_flops(vc.to_dict(), g, g)
    assert got["linear"] == f["patch_embed"] + f["matmul"] + f["merger"]
    assert got["attention"] == f["attention"]


def test_vision_windows_cover_the_image():
    assert flops.vision_windows(20, 12, 8) == [64, 32, 64, 32, 32, 16]
    assert sum(flops.vision_windows(20, 12, 8)) == 240
