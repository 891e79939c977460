"""Parameter, FLOP and byte counts of the benchmarked models, from their Hub-style config dicts.

Only the standard library is used (workers and drivers in either venv can import it). Conventions:

- A multiply-add is 2 FLOPs. Only matrix products and attention are counted ("model FLOPs"); norms, activations,
  rotary, softmax, decays and other elementwise work are not (they are a few percent and memory-bound).
- Zamba2's shared transformer blocks are stored once but run at every hybrid layer, so the FLOPs count the
  **parameters each token passes through**: every Mamba layer's in/out projections, plus at every hybrid layer its
  own ``linear`` and the full shared block it visits (q/k/v/o, gate_up, down) and the LoRA adapters of that visit.
  A model with shared blocks therefore does more than 2 x (stored parameters) FLOPs per token.

Prefill of L tokens (batch 1) with logits for k positions (k = 1 for time to first token):

    FLOPs = 2 * P_matmul * L                                   matrix products of every layer (P_matmul: see above)
          + 2 * h * V * k                                      output head
          + sum over attention invocations 2 * L^2 * n_q * d   causal attention, QK^T and PV: 4 * L^2 * n_q*d / 2
          + sum over Mamba2 layers SSD(L)                       the chunked scan's products (below)
          + sum over Mamba2 layers 2 * K * conv_dim * L         the depthwise causal conv (K taps)

    SSD(L), chunked ("SSD minimal", as ops/ssd.py computes it) with chunk Q, c = ceil(L / Q) chunks, H heads of
    dim P, state size N, G groups of B/C:
        2 * G * c * Q^2 * N        C_q . B_s inside each chunk
      + 2 * H * c * Q^2 * P        the masked decay matrix times x inside each chunk (the full Q x Q product)
      + 2 * H * c * Q * N * P      state each chunk adds (B^T x)
      + 2 * H * c * N * P          passing the state from chunk to chunk (the sequential recurrence)
      + 2 * H * c * Q * N * P      output from the state entering each chunk (C . S)

For a transformer (Llama, Qwen3) P_matmul = the q/k/v/o and MLP weights of every layer, one attention invocation per
layer with n_q query heads of dim d. A decode step at context T (one new token attending to T+1 keys) costs
2 * P_matmul + 2 * h * V + sum over attention invocations 4 * (T+1) * n_q * d (+ the SSM step, 5 * H * P * N per
Mamba2 layer: decay, input outer product, add; readout).

Bytes read by one decode step (the memory-traffic floor): the weights it passes through, each read once per
invocation (a shared block's weights once per visit: they do not stay in cache between visits), the embedding
matrix once as the output head (one row when untied, plus the head), the KV cache up to T, and the SSM and conv
states. Writes (one new KV column, the updated states) are not counted.
"""

from __future__ import annotations

import math

DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SSD_CHUNK = 64  # zamba2vl's scan chunk (text/mamba2.py: Mamba2Mixer.scan_chunk_size)


# ------------------------------------------------------------------------------------------------- Zamba2
def zamba2_shape(cfg: dict) -> dict:
    """The derived sizes of a Zamba2 config dict (the same derivation as Zamba2TextConfig.__post_init__)."""
    h = cfg["hidden_size"]
    layers = cfg.get("layers_block_type")
    n_layers = cfg["num_hidden_layers"]
    assert layers is not None and len(layers) == n_layers, "layers_block_type must list every layer"
    n_heads = cfg["num_attention_heads"]
    d_inner = int(cfg.get("mamba_expand", 2) * h)
    H = cfg["n_mamba_heads"]
    G, N = cfg.get("mamba_ngroups", 1), cfg.get("mamba_d_state", 64)
    hybrid = [i for i, t in enumerate(layers) if t == "hybrid"]
    return dict(
        h=h, V=cfg["vocab_size"], n_layers=n_layers, hybrid=hybrid, n_blocks=cfg.get("num_mem_blocks", 1),
        d_inner=d_inner, H=H, P=d_inner // H, G=G, N=N, K=cfg.get("mamba_d_conv", 4),
        conv_dim=d_inner + 2 * G * N, in_proj_dim=2 * d_inner + 2 * G * N + H,
        n_q=n_heads, n_kv=cfg.get("num_key_value_heads") or n_heads, d_attn=2 * h // n_heads, A=2 * h,
        F=cfg.get("intermediate_size") or 4 * h, r=cfg.get("adapter_rank", 128),
        attn_adapters=bool(cfg.get("use_shared_attention_adapter", False)),
        bias=bool(cfg.get("add_bias_linear", False)), conv_bias=bool(cfg.get("use_conv_bias", True)),
        tied=bool(cfg.get("tie_word_embeddings", True)),
    )


def _zamba2_parts(s: dict) -> dict:
    """Parameter counts of the pieces: matmul weights and the small vectors, per piece."""
    h, b = s["h"], s["bias"]
    mamba_mm = h * s["in_proj_dim"] + s["d_inner"] * h  # in_proj, out_proj
    mamba_small = ((s["in_proj_dim"] + h) if b else 0) + s["conv_dim"] * s["K"] \
        + (s["conv_dim"] if s["conv_bias"] else 0) + 3 * s["H"] + s["d_inner"] + h  # + A_log, D, dt_bias, norms
    A, qd, kvd = s["A"], s["n_q"] * s["d_attn"], s["n_kv"] * s["d_attn"]
    block_mm = A * qd + 2 * A * kvd + qd * h + h * 2 * s["F"] + s["F"] * h  # q, k, v, o, gate_up, down
    block_small = A + h + ((2 * s["F"] + h) if b else 0)  # input_layernorm (2h), pre_ff_layernorm, MLP biases
    adapter = h * s["r"] + s["r"] * 2 * s["F"] + (3 * (A * s["r"] + s["r"] * A) if s["attn_adapters"] else 0)
    return dict(mamba_mm=mamba_mm, mamba_small=mamba_small, block_mm=block_mm, block_small=block_small,
                adapter=adapter, hybrid_linear=h * h)


def zamba2_params(cfg: dict) -> dict:
    """Stored parameters: total, embedding, non-embedding; and P_matmul, the matmul weights a token passes through."""
    s = zamba2_shape(cfg)
    p = _zamba2_parts(s)
    n_hyb = len(s["hybrid"])
    embed = s["V"] * s["h"]
    head = 0 if s["tied"] else embed
    stored = (s["n_layers"] * (p["mamba_mm"] + p["mamba_small"]) + n_hyb * (p["hybrid_linear"] + p["adapter"])
              + s["n_blocks"] * (p["block_mm"] + p["block_small"]) + s["h"] + embed + head)
    invoked = s["n_layers"] * p["mamba_mm"] + n_hyb * (p["hybrid_linear"] + p["block_mm"] + p["adapter"])
    return dict(total=stored, embedding=embed + head, non_embedding=stored - embed - head, matmul_per_token=invoked,
                shared_block=p["block_mm"] + p["block_small"], adapters=n_hyb * p["adapter"])


def ssd_flops(L: int, H: int, P: int, N: int, G: int, Q: int = SSD_CHUNK, tile_chunks: int | None = None) -> int:
    """FLOPs of one chunked SSD scan over L tokens (module docstring). ``tile_chunks`` counts the chunk-to-chunk
    pass as ops/ssd.py runs it (one [c x c] product per tile of that many chunks) instead of the recurrence."""
    if L <= 0:
        return 0
    Q = max(1, min(Q, L))
    c = math.ceil(L / Q)
    total = 2 * G * c * Q * Q * N + 2 * H * c * Q * Q * P + 4 * H * c * Q * N * P
    if tile_chunks is None:
        total += 2 * H * c * N * P
    else:
        full, rest = divmod(c, tile_chunks)
        total += 2 * H * N * P * (full * tile_chunks**2 + rest**2)
    return total


def zamba2_prefill_flops(cfg: dict, L: int, logits: int = 1, chunk: int = SSD_CHUNK) -> dict:
    """FLOPs of a prefill of L tokens, term by term (module docstring), and their sum under "total"."""
    s = zamba2_shape(cfg)
    pm = zamba2_params(cfg)["matmul_per_token"]
    terms = dict(
        matmul=2 * pm * L,
        head=2 * s["h"] * s["V"] * logits,
        attention=len(s["hybrid"]) * 2 * L * L * s["n_q"] * s["d_attn"],
        scan=s["n_layers"] * ssd_flops(L, s["H"], s["P"], s["N"], s["G"], chunk),
        conv=s["n_layers"] * 2 * s["K"] * s["conv_dim"] * L,
    )
    terms["total"] = sum(terms.values())
    return terms


def zamba2_decode_flops(cfg: dict, context: int) -> dict:
    s = zamba2_shape(cfg)
    pm = zamba2_params(cfg)["matmul_per_token"]
    terms = dict(matmul=2 * pm, head=2 * s["h"] * s["V"],
                 attention=len(s["hybrid"]) * 4 * (context + 1) * s["n_q"] * s["d_attn"],
                 scan=s["n_layers"] * 5 * s["H"] * s["P"] * s["N"],
                 conv=s["n_layers"] * 2 * s["K"] * s["conv_dim"])
    terms["total"] = sum(terms.values())
    return terms


def zamba2_cache_bytes(cfg: dict, context: int, dtype: str) -> dict:
    """State a decode step reads at context T: KV of the hybrid layers (model dtype), SSM (float32), conv."""
    s = zamba2_shape(cfg)
    e = DTYPE_BYTES[dtype]
    kv = len(s["hybrid"]) * 2 * s["n_kv"] * s["d_attn"] * context * e
    ssm = s["n_layers"] * s["H"] * s["P"] * s["N"] * 4
    conv = s["n_layers"] * s["conv_dim"] * s["K"] * e
    return dict(kv=kv, ssm=ssm, conv=conv, total=kv + ssm + conv)


def zamba2_decode_bytes(cfg: dict, context: int, dtype: str) -> dict:
    s = zamba2_shape(cfg)
    pm = zamba2_params(cfg)
    parts = _zamba2_parts(s)
    e = DTYPE_BYTES[dtype]
    n_hyb = len(s["hybrid"])
    # every stored weight once, the embedding matrix as the head (+ one row when untied), and each shared block
    # again for every visit after its first
    weights = pm["total"] - (0 if s["tied"] else s["V"] * s["h"] - s["h"])
    weights += (n_hyb - min(n_hyb, s["n_blocks"])) * (parts["block_mm"] + parts["block_small"])
    cache = zamba2_cache_bytes(cfg, context, dtype)
    out = dict(weights=weights * e, kv=cache["kv"], ssm=cache["ssm"], conv=cache["conv"])
    out["total"] = sum(out.values())
    return out


# -------------------------------------------------------------------------------------------- transformers
def transformer_shape(cfg: dict) -> dict:
    h, n_q = cfg["hidden_size"], cfg["num_attention_heads"]
    return dict(h=h, V=cfg["vocab_size"], n_layers=cfg["num_hidden_layers"], n_q=n_q,
                n_kv=cfg.get("num_key_value_heads") or n_q, d=cfg.get("head_dim") or h // n_q,
                F=cfg["intermediate_size"], tied=bool(cfg.get("tie_word_embeddings", False)),
                qk_norm=cfg.get("model_type") == "qwen3", attn_bias=bool(cfg.get("attention_bias", False)),
                mlp_bias=bool(cfg.get("mlp_bias", False)))


def transformer_params(cfg: dict) -> dict:
    s = transformer_shape(cfg)
    h, qd, kvd = s["h"], s["n_q"] * s["d"], s["n_kv"] * s["d"]
    mm = h * qd + 2 * h * kvd + qd * h + 3 * h * s["F"]
    small = 2 * h + (2 * s["d"] if s["qk_norm"] else 0) + ((qd + 2 * kvd + h) if s["attn_bias"] else 0) \
        + ((2 * s["F"] + h) if s["mlp_bias"] else 0)
    embed = s["V"] * h
    head = 0 if s["tied"] else embed
    stored = s["n_layers"] * (mm + small) + h + embed + head
    return dict(total=stored, embedding=embed + head, non_embedding=stored - embed - head,
                matmul_per_token=s["n_layers"] * mm)


def transformer_prefill_flops(cfg: dict, L: int, logits: int = 1) -> dict:
    s = transformer_shape(cfg)
    pm = transformer_params(cfg)["matmul_per_token"]
    terms = dict(matmul=2 * pm * L, head=2 * s["h"] * s["V"] * logits,
                 attention=s["n_layers"] * 2 * L * L * s["n_q"] * s["d"], scan=0, conv=0)
    terms["total"] = sum(terms.values())
    return terms


def transformer_decode_flops(cfg: dict, context: int) -> dict:
    s = transformer_shape(cfg)
    pm = transformer_params(cfg)["matmul_per_token"]
    terms = dict(matmul=2 * pm, head=2 * s["h"] * s["V"],
                 attention=s["n_layers"] * 4 * (context + 1) * s["n_q"] * s["d"], scan=0, conv=0)
    terms["total"] = sum(terms.values())
    return terms


def transformer_cache_bytes(cfg: dict, context: int, dtype: str) -> dict:
    s = transformer_shape(cfg)
    kv = s["n_layers"] * 2 * s["n_kv"] * s["d"] * context * DTYPE_BYTES[dtype]
    return dict(kv=kv, ssm=0, conv=0, total=kv)


def transformer_decode_bytes(cfg: dict, context: int, dtype: str) -> dict:
    s = transformer_shape(cfg)
    p = transformer_params(cfg)
    e = DTYPE_BYTES[dtype]
    weights = p["total"] - (0 if s["tied"] else s["V"] * s["h"] - s["h"])
    kv = transformer_cache_bytes(cfg, context, dtype)["kv"]
    return dict(weights=weights * e, kv=kv, ssm=0, conv=0, total=weights * e + kv)


def matched_llama(zamba_cfg: dict, layers: int | None = None, heads: int | None = None) -> dict:
    """A Llama config of the same width, vocabulary and non-embedding parameter count as a Zamba2 config.

    Depth = the Zamba2 depth, attention heads of 64 (Llama's usual head dim), MHA; the MLP width is solved for so
    that the stored non-embedding parameters match (to within one MLP column per layer).
    """
    s = zamba2_shape(zamba_cfg)
    target = zamba2_params(zamba_cfg)["non_embedding"]
    h = s["h"]
    layers = layers or s["n_layers"]
    heads = heads or max(1, h // 64)
    per_layer_fixed = 4 * h * h + 2 * h  # q, k, v, o (MHA, n_heads * head_dim = h) + two norms
    F = round((target - h - layers * per_layer_fixed) / (3 * h * layers))
    if F < 1:
        raise ValueError(f"no Llama of width {h} and {layers} layers has {target:,} non-embedding parameters")
    return dict(model_type="llama", vocab_size=s["V"], hidden_size=h, intermediate_size=F, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=heads, head_dim=h // heads, hidden_act="silu",
                max_position_embeddings=65536, rms_norm_eps=1e-5, rope_theta=10000.0,
                tie_word_embeddings=s["tied"], attention_bias=False, mlp_bias=False,
                pad_token_id=0, bos_token_id=1, eos_token_id=2)


# The transformer VLM language model users would pick instead of Zamba2-VL-1.2B: Qwen3-1.7B's shape.
QWEN3_1_7B = dict(model_type="qwen3", vocab_size=151936, hidden_size=2048, intermediate_size=6144,
                  num_hidden_layers=28, num_attention_heads=16, num_key_value_heads=8, head_dim=128,
                  hidden_act="silu", max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
                  tie_word_embeddings=True, attention_bias=False, use_sliding_window=False,
                  pad_token_id=0, bos_token_id=1, eos_token_id=2)


# ---------------------------------------------------------------------------------------- dispatch by kind
def prefill_flops(kind: str, cfg: dict, L: int, logits: int = 1) -> dict:
    return zamba2_prefill_flops(cfg, L, logits) if kind == "zamba2" else transformer_prefill_flops(cfg, L, logits)


def decode_flops(kind: str, cfg: dict, context: int) -> dict:
    return zamba2_decode_flops(cfg, context) if kind == "zamba2" else transformer_decode_flops(cfg, context)


def decode_bytes(kind: str, cfg: dict, context: int, dtype: str) -> dict:
    return zamba2_decode_bytes(cfg, context, dtype) if kind == "zamba2" else \
        transformer_decode_bytes(cfg, context, dtype)


def cache_bytes(kind: str, cfg: dict, context: int, dtype: str) -> dict:
    return zamba2_cache_bytes(cfg, context, dtype) if kind == "zamba2" else \
        transformer_cache_bytes(cfg, context, dtype)


def params(kind: str, cfg: dict) -> dict:
    return zamba2_params(cfg) if kind == "zamba2" else transformer_params(cfg)


# --------------------------------------------------------------------------------------------- vision tower
def vision_windows(grid_h: int, grid_w: int, window_patches: int = 8, merge: int = 2) -> list[int]:
    """Patch counts of the attention windows of one frame (windows of ``window_patches`` patches a side, tiled from
    the top-left; edge windows partial)."""
    out = []
    for r0 in range(0, grid_h, window_patches):
        for c0 in range(0, grid_w, window_patches):
            out.append(min(window_patches, grid_h - r0) * min(window_patches, grid_w - c0))
    return out


def vision_flops(vcfg: dict, grid_h: int, grid_w: int) -> dict:
    """FLOPs of the Qwen2.5-VL tower on one image of grid_h x grid_w patches: products of every block, window
    attention (4 * sum(window^2) * width) in most blocks, full attention (4 * N^2 * width) in the others, merger."""
    D, Fv, depth = vcfg["hidden_size"], vcfg["intermediate_size"], vcfg["depth"]
    patch_dim = vcfg.get("in_channels", 3) * vcfg.get("temporal_patch_size", 1) * vcfg["patch_size"] ** 2
    m = vcfg.get("spatial_merge_size", 2)
    full = set(vcfg.get("fullatt_block_indexes", []))
    n = grid_h * grid_w
    wp = vcfg.get("window_size", 112) // vcfg["patch_size"]
    win = sum(x * x for x in vision_windows(grid_h, grid_w, wp, m))
    per_block = 2 * n * (3 * D * D + D * D + 3 * D * Fv)
    attention = sum(4 * (n * n if i in full else win) * D for i in range(depth))
    md = D * m * m
    terms = dict(patch_embed=2 * n * patch_dim * D, matmul=depth * per_block, attention=attention,
                 merger=2 * (n // (m * m)) * (md * md + md * vcfg["out_hidden_size"]))
    terms["total"] = sum(terms.values())
    return terms


def vision_params(vcfg: dict) -> int:
    D, Fv, depth = vcfg["hidden_size"], vcfg["intermediate_size"], vcfg["depth"]
    patch_dim = vcfg.get("in_channels", 3) * vcfg.get("temporal_patch_size", 1) * vcfg["patch_size"] ** 2
    md = D * vcfg.get("spatial_merge_size", 2) ** 2
    block = 2 * D + (3 * D * D + 3 * D) + (D * D + D) + 2 * (D * Fv + Fv) + (Fv * D + D)
    merger = D + md * md + md + md * vcfg["out_hidden_size"] + vcfg["out_hidden_size"]
    return patch_dim * D + depth * block + merger


FORMULA = (
    "prefill FLOPs = 2*P_matmul*L + 2*h*V (head, last position) + sum_attn 2*L^2*n_q*d (causal) "
    "+ sum_mamba [2*G*c*Q^2*N + 2*H*c*Q^2*P + 4*H*c*Q*N*P + 2*H*c*N*P] (SSD, c=ceil(L/Q), Q=64) "
    "+ sum_mamba 2*K*conv_dim*L; P_matmul counts a shared block once per visit"
)
