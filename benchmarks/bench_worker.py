"""Worker process of the benchmark suite (``suite.py``): loads one system, then runs the driver's commands.

    python benchmarks/bench_worker.py '{"system": "ours", "dtype": "bfloat16", "threads": 2, "config": {...}}'

Systems (``system`` in the JSON spec):

- ``ours``: zamba2vl's ``Zamba2LM``, from ``checkpoint`` (loaded with ``dt_clamp_to_time_step_min`` as transformers'
  torch path computes) or built in-process from ``config`` (a Hub-style config dict) with random weights;
- ``ours-vl``: zamba2vl's ``Zamba2VL`` built in-process from ``vl_preset`` ("1.2b", "2.7b", "7b" or "tiny");
- ``transformers``: transformers' ``Zamba2ForCausalLM`` from ``checkpoint``;
- ``llama`` / ``qwen3``: transformers' ``LlamaForCausalLM`` / ``Qwen3ForCausalLM`` built from ``config`` with
  random weights and sdpa attention;
- ``peak``: no model; measures matmul speed and memory bandwidth.

The first stdout line describes what was loaded; then every stdin line is a JSON command ``{"op": ..., ...}`` and
gets one JSON line back. Ops: ``prefill`` (time to first token of ``length`` random tokens), ``decode_setup`` /
``decode_step`` / ``decode_free`` (a cache at ``context`` tokens, then single decode steps), ``image`` (vision tower
+ prefill of an image prompt), ``matmul``, ``bandwidth``, ``quit`` (peak RSS). Only the standard library is imported
at module level: transformers workers run in a venv without zamba2vl.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import load_average, protocol_channel, reply_to, rss_now_bytes, rss_peak_bytes  # noqa: E402

SEED = 1234


def prompt_ids(length: int, vocab: int, low: int = 3):
    import torch

    g = torch.Generator().manual_seed(SEED + length)
    return torch.randint(low, vocab, (1, length), generator=g)


# ----------------------------------------------------------------------------------------------- building
def _init_zamba2_(model, text_config, seed: int) -> None:
    """Random weights of a trained model's scale, filled in place (no fp32 copy of a bf16 model): A in [-16, -1],
    softplus(dt_bias) log-uniform in [time_step_min, time_step_max], matrices N(0, 0.02), norms 1."""
    import math

    import torch

    g = torch.Generator().manual_seed(seed)
    c = text_config
    lo, hi = math.log(c.time_step_min), math.log(c.time_step_max)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("A_log"):
                p.copy_(torch.log(1 + 15 * torch.rand(p.shape, generator=g)))
            elif name.endswith("dt_bias"):
                dt = torch.exp(lo + (hi - lo) * torch.rand(p.shape, generator=g)).clamp(min=c.time_step_floor)
                p.copy_(dt + torch.log(-torch.expm1(-dt)))
            elif name.endswith(".D") or (p.dim() == 1 and "norm" in name) or name.endswith("ln_q.weight"):
                p.fill_(1.0)
            elif "conv1d" in name:
                p.uniform_(-c.mamba_d_conv**-0.5, c.mamba_d_conv**-0.5, generator=g)
            elif p.dim() == 1:  # biases
                p.zero_()
            else:
                p.normal_(0.0, 0.02, generator=g)


def build_ours(spec: dict, dtype):
    import torch

    import zamba2vl
    from zamba2vl.config import Zamba2TextConfig
    from zamba2vl.text.model import Zamba2LM

    if spec.get("checkpoint"):
        model = Zamba2LM.from_pretrained(spec["checkpoint"], dtype=dtype, dt_clamp_to_time_step_min=True)
    else:
        config = Zamba2TextConfig.from_dict(dict(spec["config"]))
        with torch.device("meta"):
            model = Zamba2LM(config)
        model = model.to(dtype).to_empty(device="cpu")
        _init_zamba2_(model, config, spec.get("seed", SEED))
    model.eval()
    return model, dict(version=getattr(zamba2vl, "__version__", "dev"), package="zamba2vl")


def build_ours_vl(spec: dict, dtype):
    import torch

    import zamba2vl
    from zamba2vl.config import vl_preset
    from zamba2vl.model import Zamba2VL

    if spec["vl_preset"] == "tiny":
        from zamba2vl.testing import tiny_vl_config

        config = tiny_vl_config()
    else:
        config = vl_preset(spec["vl_preset"])
    # Built on the meta device and materialised in the target dtype: no float32 copy at any point.
    with torch.device("meta"):
        model = Zamba2VL(config)
    model = model.to(dtype).to_empty(device="cpu")
    _init_zamba2_(model, config.text_config, spec.get("seed", SEED))
    model.eval()
    return model, dict(version=getattr(zamba2vl, "__version__", "dev"), package="zamba2vl",
                       vision_parameters=sum(p.numel() for p in model.vision_tower.parameters()))


def _dtype_kw(transformers, dtype) -> dict:
    return {"dtype": dtype} if int(transformers.__version__.split(".")[0]) >= 5 else {"torch_dtype": dtype}


def build_transformers(spec: dict, dtype):
    import torch
    import transformers

    system = spec["system"]
    if system == "transformers":
        from transformers import Zamba2ForCausalLM

        model = Zamba2ForCausalLM.from_pretrained(spec["checkpoint"], **_dtype_kw(transformers, dtype))
    else:
        cfg = dict(spec["config"])
        cfg.pop("model_type", None)
        major = int(transformers.__version__.split(".")[0])
        if major >= 5 and "rope_theta" in cfg:  # 5.x takes RoPE settings as rope_parameters
            cfg["rope_parameters"] = {"rope_type": "default", "rope_theta": cfg.pop("rope_theta")}
        if system == "llama":
            from transformers import LlamaConfig as Config, LlamaForCausalLM as Model
        else:
            from transformers import Qwen3Config as Config, Qwen3ForCausalLM as Model
        config = Config(**cfg)
        torch.manual_seed(spec.get("seed", SEED))
        model = Model._from_config(config, attn_implementation="sdpa", **_dtype_kw(transformers, dtype))
    model.eval()
    return model, dict(version=transformers.__version__, package="transformers",
                       attn_implementation=getattr(model.config, "_attn_implementation", None))


# ---------------------------------------------------------------------------------------------------- ops
class Runner:
    def __init__(self, system: str, model, dtype, vocab: int | None):
        self.system, self.model, self.dtype, self.vocab = system, model, dtype, vocab
        self.cache = None
        self.ours = system in ("ours", "ours-vl")

    # -- prefill -------------------------------------------------------------------------------------------
    def prefill(self, length: int) -> dict:
        import torch

        ids = prompt_ids(length, self.vocab)
        load = load_average()
        with torch.inference_mode():
            t = time.perf_counter()
            logits = self.model(input_ids=ids, use_cache=False, logits_to_keep=1).logits
            s = time.perf_counter() - t
        assert logits.shape[:2] == (1, 1), logits.shape
        del logits
        return dict(s=s, load_average=load[0] if load else None, rss_bytes=rss_now_bytes())

    # -- decode --------------------------------------------------------------------------------------------
    def decode_setup(self, context: int, fill: str = "synthetic", extra: int = 64) -> dict:
        import torch

        self.decode_free()
        t = time.perf_counter()
        if self.ours and not hasattr(self, "packed_bytes"):
            # What zamba2vl.load(packed_decode=True) does (ops/packed.py; nothing where bf16 is not native);
            # ZAMBA2VL_PACKED_DECODE=0 measures the plain F.linear products instead.
            from zamba2vl.ops.packed import pack_for_decode

            self.packed_bytes = pack_for_decode(self.model) if os.environ.get("ZAMBA2VL_PACKED_DECODE") != "0" else 0
        with torch.inference_mode():
            if self.ours:
                self.cache, nbytes = self._ours_cache(context, fill, extra)
            else:
                self.cache, nbytes = self._hf_cache(context, fill)
        self.token = prompt_ids(1, self.vocab)[0]  # [1]
        return dict(setup_s=time.perf_counter() - t, cache_bytes=nbytes, rss_bytes=rss_now_bytes(),
                    packed_weight_bytes=getattr(self, "packed_bytes", 0))

    def _ours_cache(self, context: int, fill: str, extra: int):
        import torch

        from zamba2vl.generation import prefill

        model = self.model
        cache = model.new_cache(1, capacity=context + extra)
        if fill == "prefill":
            prefill(model, prompt_ids(context, self.vocab), None, cache)
        else:  # the state a prompt of `context` tokens leaves, with random contents (decode time does not depend on them)
            g = torch.Generator().manual_seed(SEED)
            for t in (cache.keys, cache.values):
                t[:, :, :, :context].normal_(0.0, 1.0, generator=g)
            cache.ssm_states.normal_(0.0, 0.1, generator=g)
            cache.conv_states.normal_(0.0, 0.1, generator=g)
            cache.key_valid[:, :context] = True
            cache.length = context
            cache.positions.fill_(context)
        return cache, dict(cache.nbytes())

    def _hf_cache(self, context: int, fill: str):
        import torch
        from transformers import DynamicCache

        model = self.model
        if fill == "prefill":
            out = model(input_ids=prompt_ids(context, self.vocab), use_cache=True, logits_to_keep=1)
            cache = out.past_key_values
        else:
            try:
                cache = DynamicCache(config=model.config)
            except TypeError:  # transformers 4.x
                cache = DynamicCache()
            c = model.config
            n_kv = c.num_key_value_heads or c.num_attention_heads
            hd = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
            g = torch.Generator().manual_seed(SEED)
            for i in range(c.num_hidden_layers):
                k = torch.empty(1, n_kv, context, hd, dtype=self.dtype).normal_(generator=g)
                v = torch.empty(1, n_kv, context, hd, dtype=self.dtype).normal_(generator=g)
                cache.update(k, v, i)
        return cache, dict(kv=_hf_cache_bytes(cache), ssm=0, conv=0)

    def decode_step(self) -> dict:
        import torch

        with torch.inference_mode():
            t = time.perf_counter()
            if self.ours:
                from zamba2vl.generation import decode_one_token

                logits = decode_one_token(self.model, self.token, self.cache)
            else:
                out = self.model(input_ids=self.token[:, None], past_key_values=self.cache, use_cache=True,
                                 logits_to_keep=1)
                self.cache, logits = out.past_key_values, out.logits
            s = time.perf_counter() - t
        del logits
        return dict(s=s)

    def decode_free(self) -> dict:
        self.cache = None
        gc.collect()
        return dict(rss_bytes=rss_now_bytes())

    # -- image prompt (ours-vl) ----------------------------------------------------------------------------
    def image(self, side: int, text_tokens: int = 0, total_tokens: int | None = None) -> dict:
        """One image of side x side pixels in a prompt: [bos] + image tokens + random text tokens.

        ``total_tokens`` (instead of ``text_tokens``) pads the prompt with text up to that many tokens.
        """
        import torch

        model = self.model
        vc = model.config.vision_config
        unit = vc.patch_size * vc.spatial_merge_size
        if side % unit:
            raise ValueError(f"image side {side} is not a multiple of {unit}")
        g = side // vc.patch_size
        n_image = g * g // vc.spatial_merge_size**2
        if total_tokens is not None:
            text_tokens = total_tokens - 1 - n_image
            if text_tokens < 0:
                raise ValueError(f"a {side}x{side} image alone gives {n_image} tokens, more than {total_tokens}")
        gen = torch.Generator().manual_seed(SEED + side)
        pixels = torch.randn(g * g, vc.patch_dim, generator=gen)
        grid = torch.tensor([[1, g, g]])
        text = torch.randint(3, model.image_token_index, (1, text_tokens), generator=gen)
        ids = torch.cat([torch.tensor([[1]]), torch.full((1, n_image), model.image_token_index), text], dim=1)
        load = load_average()
        with torch.inference_mode():
            t0 = time.perf_counter()
            feats = model.get_image_features(pixels, grid)
            t1 = time.perf_counter()
            embeds = model.embed_inputs(ids, image_features=feats)
            logits = model.language_model(inputs_embeds=embeds, use_cache=False, logits_to_keep=1).logits
            t2 = time.perf_counter()
        del logits, embeds, feats
        return dict(vision_s=t1 - t0, prefill_s=t2 - t1, s=t2 - t0, tokens=int(ids.shape[1]), image_tokens=n_image,
                    patches=g * g, grid=[g, g], text_tokens=text_tokens, load_average=load[0] if load else None,
                    rss_bytes=rss_now_bytes())


def _hf_cache_bytes(cache) -> int:
    layers = getattr(cache, "layers", None)
    if layers is not None:  # transformers 5.x
        pairs = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers]
    else:
        pairs = list(zip(getattr(cache, "key_cache", []), getattr(cache, "value_cache", [])))
    return sum(t.numel() * t.element_size() for pair in pairs for t in pair if t is not None and hasattr(t, "numel"))


# ----------------------------------------------------------------------------------------- machine peaks
def matmul(n: int, dtype: str, min_s: float = 1.0) -> dict:
    """GFLOP/s of an n x n x n torch.matmul (best of the runs within ``min_s`` after a warm-up, at least 2)."""
    import torch

    dt = getattr(torch, dtype)
    g = torch.Generator().manual_seed(SEED)
    a = torch.randn(n, n, generator=g).to(dt)
    b = torch.randn(n, n, generator=g).to(dt)
    out = torch.empty(n, n, dtype=dt)
    torch.matmul(a, b, out=out)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < 2 or time.perf_counter() - start < min_s:
        t = time.perf_counter()
        torch.matmul(a, b, out=out)
        times.append(time.perf_counter() - t)
    best = min(times)
    return dict(n=n, dtype=dtype, gflops=2 * n**3 / best / 1e9, best_s=best, runs=len(times))


def bandwidth(mib: int, min_s: float = 1.0) -> dict:
    """Memory bandwidth in GB/s (1e9 bytes) over a float32 buffer of ``mib`` MiB: a copy (read + write counted) and
    a read-only sum; best of the runs within ``min_s`` each after a warm-up."""
    import torch

    n = mib * 2**20 // 4
    x = torch.ones(n)
    y = torch.empty_like(x)
    out = {}
    for name, fn, nbytes in (("copy", lambda: y.copy_(x), 2 * n * 4), ("read", lambda: x.sum(), n * 4)):
        fn()
        times: list[float] = []
        start = time.perf_counter()
        while len(times) < 3 or time.perf_counter() - start < min_s:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        out[f"{name}_gbs"] = nbytes / min(times) / 1e9
    return dict(mib=mib, **out)


# --------------------------------------------------------------------------------------------------- main
def tune_cpu_allocator() -> None:
    """zamba2vl.runtime.tune_cpu_allocator, also in the transformers venv (where zamba2vl is not installed)."""
    import importlib.util

    path = Path(__file__).resolve().parent.parent / "src" / "zamba2vl" / "runtime.py"
    spec = importlib.util.spec_from_file_location("_zamba2vl_runtime", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.tune_cpu_allocator()


def main() -> None:
    spec = json.loads(sys.argv[1])
    reply = reply_to(protocol_channel())
    tune_cpu_allocator()  # what `zamba2vl` commands do; every system's worker gets it, so the comparison is fair
    import torch

    torch.set_num_threads(spec["threads"])
    dtype = getattr(torch, spec.get("dtype", "float32"))
    system = spec["system"]
    t0 = time.perf_counter()
    info: dict = {}
    runner = None
    if system != "peak":
        if system == "ours":
            model, info = build_ours(spec, dtype)
        elif system == "ours-vl":
            model, info = build_ours_vl(spec, dtype)
        else:
            model, info = build_transformers(spec, dtype)
        config = getattr(model.config, "text_config", model.config)
        runner = Runner(system, model, dtype, config.vocab_size)
        params = list(model.parameters())
        info.update(parameters=sum(p.numel() for p in params),
                    parameter_bytes=sum(p.numel() * p.element_size() for p in params))
        if system.startswith("ours"):
            from zamba2vl.ops.precision import matmul_dtype

            info["gemm_dtype"] = str(matmul_dtype(dtype)).replace("torch.", "")
        else:
            info["gemm_dtype"] = str(dtype).replace("torch.", "")
        del params
    rss_loaded = rss_now_bytes()
    reply(system=system, torch=torch.__version__, threads=torch.get_num_threads(), load_s=time.perf_counter() - t0,
          rss_loaded_bytes=rss_loaded, cpu_capability=torch.backends.cpu.get_cpu_capability(), **info)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        if op == "quit":
            peak = rss_peak_bytes()
            reply(peak_rss_bytes=peak, rss_increase_bytes=max(0, peak - rss_loaded))
            return
        if op == "matmul":
            reply(**matmul(**cmd))
        elif op == "bandwidth":
            reply(**bandwidth(**cmd))
        else:
            reply(**getattr(runner, op)(**cmd))


if __name__ == "__main__":
    main()
