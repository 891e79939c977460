"""Cache semantics, padding, presets and checkpoint layouts of the Zamba2 language model."""

import json

import pytest
import torch
from zamba_testkit import TINY_TEXT, randomize_, tiny_text_dict

from zamba2vl.config import PRESET_SIZES, Zamba2TextConfig, text_preset
from zamba2vl.errors import CheckpointError
from zamba2vl.text.mamba2 import Mamba2Mixer
from zamba2vl.text.model import Zamba2LM
from zamba2vl.text.weights import text_hub_state


def tiny_lm(name, seed=0, **over) -> Zamba2LM:
    model = Zamba2LM(Zamba2TextConfig.from_dict(tiny_text_dict(name, **over))).eval()
    randomize_(model, seed)
    return model


def ids_of(n, L, seed, vocab=128):
    return torch.randint(0, vocab, (n, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
def test_prefill_then_32_decode_steps_equals_one_forward(name, monkeypatch):
    monkeypatch.setattr(Mamba2Mixer, "scan_chunk_size", 16)
    model = tiny_lm(name, seed=3)
    ids = ids_of(2, 70 + 32, seed=1)
    with torch.no_grad():
        full = model(input_ids=ids).logits
        out = model(input_ids=ids[:, :70], use_cache=True)
        cache = out.cache
        steps = [out.logits[:, -1]]
        for t in range(70, 70 + 32):
            steps.append(model(input_ids=ids[:, t : t + 1], cache=cache).logits[:, -1])
    got = torch.stack(steps[:-1], 1)
    assert (got - full[:, 69:-1]).abs().max().item() <= 1e-4
    assert cache.length == 102 and cache.positions.tolist() == [102, 102]


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
def test_prefill_in_three_pieces_equals_prefill_at_once(name, monkeypatch):
    monkeypatch.setattr(Mamba2Mixer, "scan_chunk_size", 16)
    model = tiny_lm(name, seed=4)
    ids = ids_of(2, 90, seed=2)
    with torch.no_grad():
        whole = model(input_ids=ids, use_cache=True)
        cache = model.new_cache(2)
        parts = [model(input_ids=ids[:, a:b], cache=cache).logits for a, b in [(0, 33), (33, 34), (34, 90)]]
    assert (torch.cat(parts, 1) - whole.logits).abs().max().item() <= 1e-4
    assert ((cache.ssm_states - whole.cache.ssm_states).norm() / whole.cache.ssm_states.norm()).item() <= 1e-5
    assert ((cache.conv_states - whole.cache.conv_states).norm() / whole.cache.conv_states.norm()).item() <= 1e-5


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
def test_left_padded_batch_equals_each_prompt_alone(name, monkeypatch):
    monkeypatch.setattr(Mamba2Mixer, "scan_chunk_size", 16)
    model = tiny_lm(name, seed=5)
    lengths = [41, 17, 30]
    prompts = [ids_of(1, n, seed=10 + i)[0] for i, n in enumerate(lengths)]
    T = max(lengths)
    ids = torch.zeros(3, T, dtype=torch.long)
    mask = torch.zeros(3, T, dtype=torch.long)
    for i, p in enumerate(prompts):
        ids[i, T - len(p):] = p
        mask[i, T - len(p):] = 1
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        nxt = torch.tensor([[5], [6], [7]])
        step = model(input_ids=nxt, cache=out.cache, attention_mask=torch.cat([mask, torch.ones(3, 1, dtype=torch.long)], 1)).logits
        for i, p in enumerate(prompts):
            alone = model(input_ids=p[None], use_cache=True)
            real = out.logits[i, T - len(p):]
            assert (real - alone.logits[0]).abs().max().item() <= 1e-4
            alone_step = model(input_ids=nxt[i : i + 1], cache=alone.cache).logits
            assert (step[i] - alone_step[0]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("size,expected", [("1.2b", 1_215_195_776), ("2.7b", 2_662_378_400), ("7b", 7_356_979_024)])
def test_presets_have_the_released_parameter_counts(size, expected):
    with torch.device("meta"):
        model = Zamba2LM(text_preset(size))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_preset_derivations_match_the_spec_table():
    c = text_preset("7b")
    assert (c.attention_head_dim, c.mamba_headdim, c.conv_dim, c.in_proj_dim, c.intermediate_size) == (224, 64, 7424, 14704, 14336)
    assert c.hybrid_layer_ids == [6, 11, 17, 23, 29, 35, 41, 47, 53, 59, 65, 71, 77]
    assert [c.block_for_layer(i) for i in (6, 11, 77)] == [(0, 0), (1, 1), (0, 12)]
    assert set(PRESET_SIZES) == {"1.2b", "2.7b", "7b"}


def test_config_from_hub_json_recomputes_derived_fields():
    d = tiny_text_dict("like_7b")
    d.update(attention_head_dim=999, mamba_headdim=1, hybrid_layer_ids=[0], intermediate_size=None)
    c = Zamba2TextConfig.from_dict(d)
    assert c.attention_head_dim == 32 and c.mamba_headdim == 16 and c.hybrid_layer_ids == [1, 3, 6]
    assert c.intermediate_size == 4 * 64
    assert Zamba2TextConfig.from_dict(c.to_dict()).to_dict() == c.to_dict()


# ------------------------------------------------------------------------------------------ checkpoints


def _write(folder, config_dict, tensors, shard_bytes=None):
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config_dict))
    tensors = {k: v.contiguous().clone() for k, v in tensors.items()}
    if shard_bytes is None:
        save_file(tensors, str(folder / "model.safetensors"))
        return
    keys = sorted(tensors)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for fname, ks in shards.items():
        save_file({k: tensors[k] for k in ks}, str(folder / fname))
    index = {"metadata": {}, "weight_map": {k: f for f, ks in shards.items() for k in ks}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))


def _vl_config(text_dict):
    return {"model_type": "zamba2_vl", "text_config": text_dict, "image_token_index": 100,
            "vision_config": {"depth": 1, "hidden_size": 16, "num_heads": 2, "intermediate_size": 32,
                              "out_hidden_size": text_dict["hidden_size"], "fullatt_block_indexes": [0]}}


def _logits(model, seed=0):
    with torch.no_grad():
        return model(input_ids=ids_of(1, 20, seed)).logits


@pytest.mark.parametrize("name", ["like_1.2b", "like_2.7b"])
def test_text_only_layout_sharded_roundtrip(tmp_path, name):
    model = tiny_lm(name, seed=6)
    hub = text_hub_state(model)
    hub["lm_head.weight"] = hub["model.embed_tokens.weight"]  # some checkpoints carry the tied head too
    _write(tmp_path / "m", tiny_text_dict(name), hub, shard_bytes=1)
    loaded = Zamba2LM.from_pretrained(tmp_path / "m", dtype=torch.float32)
    assert torch.equal(_logits(loaded), _logits(model))


@pytest.mark.parametrize("copies", ["first", "last", "all"])
def test_vl_layout_with_shared_keys_under_any_hybrid_layer(tmp_path, copies):
    name = "like_2.7b"  # 2 blocks, hybrid layers [1, 4, 6, 8]: block 0 at 1 and 6, block 1 at 4 and 8
    model = tiny_lm(name, seed=7)
    cfg = model.config
    hub = {}
    for k, v in model.state_dict().items():
        if k.startswith("model.blocks."):
            b, rest = int(k.split(".")[2]), k.split(".", 3)[3]
            layers = [l for l in cfg.hybrid_layer_ids if cfg.block_for_layer(l)[0] == b]
            chosen = {"first": layers[:1], "last": layers[-1:], "all": layers}[copies]
            for l in chosen:
                hub[f"language_model.model.layers.{l}.shared_transformer.{rest}"] = v
        else:
            hub["language_model." + k] = v
    hub["vision_tower.merger.ln_q.weight"] = torch.ones(16)  # vision keys are left to the vision loader
    _write(tmp_path / "vl", _vl_config(tiny_text_dict(name)), hub)
    loaded = Zamba2LM.from_pretrained(tmp_path / "vl")
    assert torch.equal(_logits(loaded), _logits(model))


def test_save_pretrained_roundtrip_bf16(tmp_path):
    model = tiny_lm("like_7b", seed=8)
    model.save_pretrained(tmp_path / "out")
    loaded = Zamba2LM.from_pretrained(tmp_path / "out", dtype="bfloat16")
    assert loaded.dtype == torch.bfloat16
    assert torch.equal(loaded.model.layers[0].mamba.in_proj.weight, model.model.layers[0].mamba.in_proj.weight.bfloat16())


def test_missing_tensor_is_named(tmp_path):
    model = tiny_lm("like_1.2b")
    hub = text_hub_state(model)
    del hub["model.layers.3.mamba.dt_bias"]
    _write(tmp_path / "m", tiny_text_dict("like_1.2b"), hub)
    with pytest.raises(CheckpointError, match=r"missing 1 tensor\(s\): model\.layers\.3\.mamba\.dt_bias"):
        Zamba2LM.from_pretrained(tmp_path / "m")


def test_misshaped_tensor_is_named_with_both_shapes(tmp_path):
    model = tiny_lm("like_1.2b")
    hub = text_hub_state(model)
    hub["model.layers.2.linear.weight"] = torch.zeros(64, 63)
    _write(tmp_path / "m", tiny_text_dict("like_1.2b"), hub)
    with pytest.raises(CheckpointError, match=r"model\.layers\.2\.linear\.weight: checkpoint has \(64, 63\), model expects \(64, 64\)"):
        Zamba2LM.from_pretrained(tmp_path / "m")


def test_unexpected_and_wrongly_placed_tensors_are_named(tmp_path):
    model = tiny_lm("like_2.7b")
    hub = text_hub_state(model)
    hub["model.layers.0.shared_transformer.input_layernorm.weight"] = torch.ones(128)
    _write(tmp_path / "a", tiny_text_dict("like_2.7b"), hub)
    with pytest.raises(CheckpointError, match="layer 0, which is not a hybrid layer"):
        Zamba2LM.from_pretrained(tmp_path / "a")
    hub = text_hub_state(model)
    hub["something.else"] = torch.ones(3)
    _write(tmp_path / "b", tiny_text_dict("like_2.7b"), hub)
    with pytest.raises(CheckpointError, match="something.else"):
        Zamba2LM.from_pretrained(tmp_path / "b")


def test_pickle_checkpoints_are_refused_unless_weights_only_loads_them(tmp_path):
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "config.json").write_text(json.dumps(tiny_text_dict("like_1.2b")))

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"x": Evil()}, tmp_path / "evil" / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="weights_only=True refused"):
        Zamba2LM.from_pretrained(tmp_path / "evil")
    (tmp_path / "ok").mkdir()
    (tmp_path / "ok" / "config.json").write_text(json.dumps(tiny_text_dict("like_1.2b")))
    model = tiny_lm("like_1.2b", seed=9)
    torch.save(text_hub_state(model), tmp_path / "ok" / "pytorch_model.bin")
    assert torch.equal(_logits(Zamba2LM.from_pretrained(tmp_path / "ok")), _logits(model))


def test_folder_without_config_or_weights_gives_clear_errors(tmp_path):
    from zamba2vl.errors import ConfigError

    with pytest.raises(ConfigError, match="no config.json"):
        Zamba2LM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(tiny_text_dict("like_1.2b")))
    with pytest.raises(CheckpointError, match="no weights"):
        Zamba2LM.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(ConfigError, match="'llama'"):
        Zamba2LM.from_pretrained(tmp_path)


def test_truncated_safetensors_file_is_named(tmp_path):
    model = tiny_lm("like_1.2b")
    _write(tmp_path / "m", tiny_text_dict("like_1.2b"), text_hub_state(model))
    f = tmp_path / "m" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])
    with pytest.raises(CheckpointError, match="truncated"):
        Zamba2LM.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("name", sorted(TINY_TEXT))
def test_bf16_decode_over_the_cache_as_stored_agrees_with_the_upcast_path(name, monkeypatch):
    # bf16 weights and cache on a CPU computing in fp32: decode reads the bf16 cache directly (ops.attention)
    # instead of upcasting all of it on every step. Against the upcast path on the same model and tokens, the
    # logits differ only by the bf16 rounding of the queries and probabilities; against fp32, no worse.
    import zamba2vl.text.shared_block as sb
    from zamba2vl.ops import precision

    monkeypatch.setattr(Mamba2Mixer, "scan_chunk_size", 16)
    monkeypatch.setattr(precision, "cpu_has_native_gemm", lambda dtype: False)
    ids = ids_of(2, 40 + 8, seed=2)

    def decode(model):
        with torch.no_grad():
            out = model(input_ids=ids[:, :40], use_cache=True)
            steps = [model(input_ids=ids[:, t : t + 1], cache=out.cache).logits[:, -1].float() for t in range(40, 48)]
        return torch.stack(steps, 1)

    with torch.no_grad():
        f32 = tiny_lm(name, seed=5)(input_ids=ids).logits[:, 40:].float()
    model = tiny_lm(name, seed=5).bfloat16()
    calls = []
    real = sb.cached_attention
    monkeypatch.setattr(sb, "cached_attention", lambda *a, **k: calls.append(1) or real(*a, **k))
    fast = decode(model)
    visits = sum(t == "hybrid" for t in model.config.layers_block_type)
    assert len(calls) == 8 * visits  # every shared-block visit of every decode step took the path
    monkeypatch.setattr(sb, "use_cached_attention", lambda q, k: False)
    n = len(calls)
    upcast = decode(model)
    assert len(calls) == n

    def rel(a, b):
        return ((a - b).norm() / b.norm()).item()

    # These random tiny models amplify rounding: bf16 alone is 8-18% from fp32 here.
    assert rel(fast, upcast) <= 5e-2
    assert rel(fast, f32) <= 1.15 * rel(upcast, f32) + 5e-3
