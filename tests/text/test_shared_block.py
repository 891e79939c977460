"""The shared transformer block under the low-precision matmul policy (ops.precision).

A bf16 block on a CPU without native bf16 GEMMs computes each sublayer in fp32 on exactly upcast values; where bf16
is native (or forced so here by patching the detection) it runs the plain bf16 computation; fp32 is untouched.
"""

import copy

import pytest
import torch
import torch.nn.functional as F
from zamba_testkit import TINY_TEXT, randomize_, tiny_text_dict

from zamba2vl.config import Zamba2TextConfig
from zamba2vl.ops import precision
from zamba2vl.text.model import Zamba2LM
from zamba2vl.text.shared_block import SharedTransformerBlock, apply_rope, rope_cos_sin, rotate_half


def rel_err(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def block_and_inputs(name, L=40, seed=0):
    config = Zamba2TextConfig.from_dict(tiny_text_dict(name))
    block = SharedTransformerBlock(config, block_id=0).eval()
    randomize_(block, seed)
    g = torch.Generator().manual_seed(seed + 1)
    x, original = torch.randn(2, L, config.hidden_size, generator=g), torch.randn(2, L, config.hidden_size, generator=g)
    positions = torch.arange(L)[None].expand(2, L)
    return block, config, x, original, positions


def run(block, config, x, original, positions, dtype):
    rope = rope_cos_sin(positions, config.attention_head_dim, config.rope_theta, dtype) if config.use_mem_rope else None
    with torch.no_grad():
        return block.to(dtype)(x.to(dtype), original.to(dtype), 0, 2, rope, None, None)


def plain_forward(block, config, x, original, positions, dtype):
    """The block as plain nn.Module calls in one dtype (the computation before the policy, and on native hardware)."""
    block = block.to(dtype)
    x, original = x.to(dtype), original.to(dtype)
    attn, mlp = block.self_attn, block.feed_forward
    b, L, _ = x.shape
    with torch.no_grad():
        h = block.input_layernorm(torch.cat([x, original], dim=-1))
        q, k, v = attn.q_proj(h), attn.k_proj(h), attn.v_proj(h)
        if attn.use_adapters:
            q = q + attn.linear_q_adapter_list[0](h)
            k = k + attn.linear_k_adapter_list[0](h)
            v = v + attn.linear_v_adapter_list[0](h)
        q, k, v = (t.view(b, L, -1, attn.head_dim).transpose(1, 2) for t in (q, k, v))
        if config.use_mem_rope:
            cos, sin = rope_cos_sin(positions, config.attention_head_dim, config.rope_theta, dtype)
            # RoPE as the block computes it (two fused passes; equal to the rotate_half formula to rounding, see
            # test_rope_in_place_halves_equals_the_rotate_half_formula)
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scale)
        h = attn.o_proj(o.transpose(1, 2).reshape(b, L, -1))
        h = block.pre_ff_layernorm(h)
        gate, up = (mlp.gate_up_proj(h) + mlp.gate_up_proj_adapter_list[0](h)).split(mlp.F, dim=-1)
        return mlp.down_proj(F.gelu(gate) * up)


def spy_dtypes(monkeypatch):
    """Record the dtype of every F.linear and scaled_dot_product_attention call."""
    seen = []
    real_linear, real_sdpa = F.linear, F.scaled_dot_product_attention

    def linear(x, w, b=None):
        seen.append(("linear", x.dtype, w.dtype))
        return real_linear(x, w, b)

    def sdpa(q, k, v, *args, **kwargs):
        seen.append(("sdpa", q.dtype, k.dtype, v.dtype))
        return real_sdpa(q, k, v, *args, **kwargs)

    monkeypatch.setattr(F, "linear", linear)
    monkeypatch.setattr(F, "scaled_dot_product_attention", sdpa)
    return seen


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
@pytest.mark.parametrize("native", [False, True])
def test_bf16_block_computes_in_the_policys_dtype(name, native, monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_gemm", lambda dtype: native)
    block, config, x, original, positions = block_and_inputs(name)
    seen = spy_dtypes(monkeypatch)
    out = run(block, config, x, original, positions, torch.bfloat16)
    assert out.dtype == torch.bfloat16
    want = torch.bfloat16 if native else torch.float32
    # q k v o, gate_up down, and two products per LoRA adapter: the MLP's, and q/k/v's where the config has them
    n_linear = 4 + 2 + 2 * (1 + (3 if config.use_shared_attention_adapter else 0))
    assert sum(s[0] == "linear" for s in seen) == n_linear and sum(s[0] == "sdpa" for s in seen) == 1
    assert all(set(s[1:]) == {want} for s in seen), seen


def test_this_machine_routes_bf16_blocks_to_fp32():
    # The AVX2-only development VM has no native bf16 GEMMs; on AVX512-BF16/AMX machines bf16 stays bf16.
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    block, *_ = block_and_inputs("like_1.2b")
    assert precision.compute_dtype(block.bfloat16().self_attn.q_proj.weight) == (
        torch.bfloat16 if native else torch.float32)


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
@pytest.mark.parametrize("native", [False, True])
def test_fp32_and_native_bf16_are_the_plain_computation(name, native, monkeypatch):
    """fp32 is bit-for-bit the plain module composition whatever the detection says; native bf16 is plain bf16."""
    monkeypatch.setattr(precision, "cpu_has_native_gemm", lambda dtype: native)
    block, config, x, original, positions = block_and_inputs(name)
    assert torch.equal(run(block, config, x, original, positions, torch.float32),
                       plain_forward(block, config, x, original, positions, torch.float32))
    if native:
        assert torch.equal(run(block, config, x, original, positions, torch.bfloat16),
                           plain_forward(block, config, x, original, positions, torch.bfloat16))


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
def test_fp32_routed_bf16_block_is_close_to_native_bf16_and_fp32(name, monkeypatch):
    block, config, x, original, positions = block_and_inputs(name)
    block = block.bfloat16()  # both runs below and the fp32 reference use the same bf16-rounded weights
    monkeypatch.setattr(precision, "cpu_has_native_gemm", lambda dtype: False)
    routed = run(block, config, x, original, positions, torch.bfloat16)
    monkeypatch.setattr(precision, "cpu_has_native_gemm", lambda dtype: True)
    native = run(block, config, x, original, positions, torch.bfloat16)
    exact = run(copy.deepcopy(block), config, x.bfloat16(), original.bfloat16(), positions, torch.float32)
    # Inputs, norms and sublayer outputs rounded to bf16 (relative 2^-9 each; the plain path also rounds every
    # product and the attention's internals): measured 0.8-1.0e-2 (routed) and 1.0-1.6e-2 (plain bf16) against fp32
    # on the same bf16 values, 0.9-1.3e-2 between the two.
    assert rel_err(routed, exact) <= 2e-2
    assert rel_err(native, exact) <= 3e-2
    assert rel_err(routed, native) <= 3e-2


def gentle_lm(name, seed=3) -> Zamba2LM:
    """A tiny LM whose matrices are half the test kit's scale: less chaotic, so bf16 rounding is not amplified
    tenfold over the layers (with the full scale, rounding the weights alone moves the logits by 6-9%)."""
    model = Zamba2LM(Zamba2TextConfig.from_dict(tiny_text_dict(name))).eval()
    randomize_(model, seed)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if p.dim() >= 2 and "embed_tokens" not in pname:
                p.mul_(0.5)
    return model


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
def test_bf16_lm_with_fp32_routing_is_close_to_fp32_lm(name):
    """This machine's policy (fp32 routing where bf16 is not native) on the whole LM: prefill and decode."""
    model = gentle_lm(name)
    bf16 = copy.deepcopy(model).bfloat16()
    ids = torch.randint(0, 128, (2, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = model(input_ids=ids[:, :96], use_cache=True)
        out = bf16(input_ids=ids[:, :96], use_cache=True)
        ref_steps = [model(input_ids=ids[:, t : t + 1], cache=ref.cache).logits for t in range(96, 100)]
        steps = [bf16(input_ids=ids[:, t : t + 1], cache=out.cache).logits for t in range(96, 100)]
    assert out.logits.dtype == torch.bfloat16
    assert 0.3 < ref.logits.abs().mean() < 3  # logits of order 1
    # bf16 weights, activations and residual stream against fp32: measured 2.6-2.8e-2 relative and <= 0.16 absolute
    # after the prefill, 2.1-2.5e-2 and <= 0.08 over the decode steps.
    assert rel_err(out.logits, ref.logits) <= 5e-2
    assert (out.logits.float() - ref.logits).abs().max().item() <= 0.4
    assert rel_err(torch.cat(steps, 1), torch.cat(ref_steps, 1)) <= 5e-2


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rope_in_place_halves_equals_the_rotate_half_formula(dtype):
    from zamba2vl.text.shared_block import apply_rope, rope_cos_sin, rotate_half

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 37, 3, 16, generator=g).to(dtype).transpose(1, 2)  # [b, n, L, d] view, as attention has it
    cos, sin = rope_cos_sin(torch.arange(37)[None].expand(2, -1) + 5, 16, 10000.0, dtype)
    want = x.double() * cos.double() + rotate_half(x.double()) * sin.double()
    with torch.no_grad():
        got = apply_rope(x, cos, sin)
    assert got.shape == x.shape and got.dtype == dtype
    assert got.transpose(1, 2).is_contiguous()
    tol = 1e-6 if dtype == torch.float32 else 2 * 2.0**-8  # bf16: two roundings of values of size <= ~|x|
    assert ((got.double() - want).abs() <= tol * (x.double().abs().amax(-1, keepdim=True) + 1)).all()
    # with autograd it is the plain formula, with gradients
    xg = x.float().clone().requires_grad_(True)
    apply_rope(xg, cos.float(), sin.float()).sum().backward()
    assert xg.grad is not None and xg.grad.shape == x.shape
