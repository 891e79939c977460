"""Generation engine: the cached loop against a naive full-forward loop, batching, sampling, stopping, streaming."""

from pathlib import Path
from types import SimpleNamespace

import mistral_common
import pytest
import torch
from zamba_testkit import randomize_, tiny_text_dict

from zamba2vl.config import Zamba2TextConfig
from zamba2vl.errors import ConfigError, InputError
from zamba2vl.generation import GenerationConfig, generate, generate_batch, left_pad, stream
from zamba2vl.processing.tokenizer import Tokenizer
from zamba2vl.sampling import (
    apply_repetition_penalty,
    apply_temperature,
    sample_from_probs,
    suppress_tokens,
    top_k_filter,
    top_p_filter,
)
from zamba2vl.text.model import LMOutput, Zamba2LM

SPM_PATH = Path(mistral_common.__file__).parent / "data" / "tokenizer.model.v1"
NO_EOS = dict(eos_token_ids=())


@pytest.fixture(scope="module")
def lm() -> Zamba2LM:
    model = Zamba2LM(Zamba2TextConfig.from_dict(tiny_text_dict("like_1.2b"))).eval()
    randomize_(model, 7)
    return model


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer.from_sentencepiece(SPM_PATH)


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(3, 128, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


@torch.no_grad()
def naive_greedy(model, ids: list[int], n: int, penalty: float = 1.0) -> list[int]:
    """Re-run the whole sequence without a cache at every step and take the argmax."""
    seq = list(ids)
    for _ in range(n):
        logits = model(input_ids=torch.tensor([seq])).logits[:, -1]
        seen = torch.zeros_like(logits, dtype=torch.bool)
        seen[0, seq] = True
        seq.append(int(apply_repetition_penalty(logits, seen, penalty).argmax()))
    return seq[len(ids):]


class ScriptedLM(torch.nn.Module):
    """Test double with the model's interface: whatever the input, step t puts logit 10 on script[t] (and 5 on
    ``runner_up``). Its cache only counts forward calls."""

    def __init__(self, script, vocab_size=32000, eos=(2,), image_token_index=None, runner_up=0):
        super().__init__()
        self.script, self.vocab_size, self.runner_up = list(script), vocab_size, runner_up
        self.config = SimpleNamespace(eos_token_ids=list(eos), vocab_size=vocab_size, pad_token_id=0)
        if image_token_index is not None:
            self.config.image_token_index = image_token_index

    class Cache:
        calls = 0

        def select(self, rows):
            return self

    def new_cache(self, batch_size, capacity=256):
        return self.Cache()

    def forward(self, input_ids=None, attention_mask=None, cache=None, use_cache=False, logits_to_keep=0, **extras):
        t = min(cache.calls, len(self.script) - 1)
        cache.calls += 1
        logits = torch.zeros(input_ids.shape[0], 1, self.vocab_size)
        logits[:, :, self.runner_up] = 5.0
        logits[:, :, self.script[t]] = 10.0
        return LMOutput(logits=logits, cache=cache)


class VLLike(torch.nn.Module):
    """A VL-shaped wrapper of the text model: config.text_config / image_token_index, extra prefill inputs (recorded),
    and a bias that makes the image token the most likely one."""

    def __init__(self, lm, image_token_index):
        super().__init__()
        self.lm = lm
        self.config = SimpleNamespace(text_config=lm.config, image_token_index=image_token_index)
        self.calls = []

    def new_cache(self, batch_size, capacity=256):
        return self.lm.new_cache(batch_size, capacity)

    def embed_inputs(self, input_ids, pixel_values=None, image_grid_thw=None):
        self.calls.append(("embed", pixel_values))
        return self.lm.embed(input_ids)

    def forward(self, pixel_values=None, image_grid_thw=None, **kw):
        self.calls.append((tuple(kw.get("input_ids", kw.get("inputs_embeds")).shape[:2]), pixel_values))
        out = self.lm(**kw)
        out.logits[..., self.config.image_token_index] += 100.0
        return out


# ---------------------------------------------------------------------------------------------------- greedy


def test_greedy_equals_naive_loop_without_cache(lm):
    ids = prompt(11, seed=1)
    res = generate(lm, ids, config=GenerationConfig(max_new_tokens=16, **NO_EOS))
    assert res.token_ids == [naive_greedy(lm, ids, 16)]
    assert res.finish_reasons == ["length"]
    t = res.timings
    assert t.prefill_tokens == 11 and t.decode_tokens == 15
    assert t.time_to_first_token_s > 0 and t.decode_tok_s > 0 and t.total_s >= t.time_to_first_token_s


def test_greedy_with_repetition_penalty_equals_naive_loop(lm):
    ids = prompt(9, seed=2)
    cfg = GenerationConfig(max_new_tokens=8, repetition_penalty=1.5, **NO_EOS)
    expect = naive_greedy(lm, ids, 8, penalty=1.5)
    assert generate(lm, ids, config=cfg).token_ids == [expect]
    # The penalty changes the output of this model (else the test above would prove nothing about it).
    assert generate(lm, ids, config=GenerationConfig(max_new_tokens=8, **NO_EOS)).token_ids != [expect]


def test_batched_left_padded_equals_each_alone(lm):
    prompts = [prompt(n, seed=10 + n) for n in (5, 13, 1, 8)]
    cfg = GenerationConfig(max_new_tokens=8, repetition_penalty=2.0, **NO_EOS)
    alone = [generate(lm, p, config=cfg).token_ids[0] for p in prompts]
    # Pad with tokens the rows generate: the penalty must not count padding as seen.
    batched = generate_batch(lm, prompts, config=cfg, pad_token_id=alone[2][0])
    assert batched.token_ids == alone
    assert batched.prompt_lengths == [5, 13, 1, 8] and batched.timings.prefill_tokens == 27
    # Prefill in pieces of 3 (some pieces are all padding for the short rows) gives the same tokens.
    chunked = generate_batch(lm, prompts, config=GenerationConfig(max_new_tokens=8, repetition_penalty=2.0,
                                                                  prefill_chunk_size=3, **NO_EOS))
    assert chunked.token_ids == alone


def test_rows_finishing_early_are_dropped_without_changing_the_others(lm):
    prompts = [prompt(n, seed=20 + n) for n in (6, 3, 10)]
    alone = [generate(lm, p, config=GenerationConfig(max_new_tokens=8, **NO_EOS)).token_ids[0] for p in prompts]
    eos = alone[0][4]  # row 0 stops at step 4 (or earlier if the token came before)
    expect = [a[: a.index(eos) + 1] if eos in a else a for a in alone]
    res = generate_batch(lm, prompts, config=GenerationConfig(max_new_tokens=8, eos_token_ids=(eos,)))
    assert res.token_ids == expect
    assert res.finish_reasons == ["eos" if eos in a else "length" for a in alone]
    assert len(res.token_ids[0]) <= 5


# --------------------------------------------------------------------------------------------------- sampling


def test_temperature_and_filters_on_known_numbers():
    logits = torch.tensor([[2.0, 4.0, -1.0, 0.0]])
    assert apply_temperature(logits, 2.0).tolist() == [[1.0, 2.0, -0.5, 0.0]]
    torch.testing.assert_close(torch.softmax(apply_temperature(logits, 0.5), -1), torch.softmax(logits * 2, -1))
    assert top_k_filter(logits, 2).tolist() == [[2.0, 4.0, float("-inf"), float("-inf")]]
    assert top_k_filter(logits, 0).tolist() == logits.tolist()
    probs = torch.tensor([[0.15, 0.5, 0.05, 0.3]])
    kept = lambda p: torch.isfinite(top_p_filter(probs.log(), p))[0].tolist()  # noqa: E731
    assert kept(0.7) == [False, True, False, True]  # 0.5 + 0.3 reaches 0.7
    assert kept(0.9) == [True, True, False, True]
    assert kept(1e-6) == [False, True, False, False]  # always the most likely one
    assert kept(1.0) == [True] * 4
    assert suppress_tokens(logits, [1]).tolist() == [[2.0, float("-inf"), -1.0, 0.0]]


def test_repetition_penalty_on_known_numbers():
    logits = torch.tensor([[2.0, -1.0, 3.0, -0.5]])
    seen = torch.tensor([[True, True, False, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -2.0, 3.0, -0.5]]


def test_exponential_race_draws_from_the_distribution():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4]).expand(20000, 4)
    g = torch.Generator().manual_seed(0)
    draws = sample_from_probs(probs, [g] * 20000)
    freq = torch.bincount(draws, minlength=4).float() / 20000
    assert (freq - probs[0]).abs().max() < 0.015


def test_sampling_is_seeded_and_per_row(lm):
    ids = prompt(7, seed=3)
    def cfg(**kw):
        return GenerationConfig(**{"max_new_tokens": 8, "do_sample": True, "temperature": 1.5, **NO_EOS, **kw})

    a = generate(lm, ids, config=cfg(seed=1)).token_ids[0]
    assert generate(lm, ids, config=cfg(seed=1)).token_ids[0] == a
    assert generate(lm, ids, config=cfg(seed=2)).token_ids[0] != a
    greedy = generate(lm, ids, config=GenerationConfig(max_new_tokens=8, **NO_EOS)).token_ids[0]
    assert a != greedy
    assert generate(lm, ids, config=cfg(seed=1, top_k=1)).token_ids[0] == greedy
    assert generate(lm, ids, config=cfg(seed=1, top_p=1e-6)).token_ids[0] == greedy
    assert generate(lm, ids, config=cfg(seed=1, temperature=0.0)).token_ids[0] == greedy
    # One seed for all rows: a prompt sampled in a batch gives what it gives alone; a seed per row also works.
    other = prompt(12, seed=4)
    batch = generate_batch(lm, [ids, other], config=cfg(seed=1))
    assert batch.token_ids == [a, generate(lm, other, config=cfg(seed=1)).token_ids[0]]
    per_row = generate_batch(lm, [ids, ids], config=cfg(seed=[1, 2]))
    assert per_row.token_ids == [a, generate(lm, ids, config=cfg(seed=2)).token_ids[0]]


# --------------------------------------------------------------------------------------------------- stopping


def test_eos_and_max_new_tokens(lm):
    ids = prompt(10, seed=5)
    free = generate(lm, ids, config=GenerationConfig(max_new_tokens=10, **NO_EOS)).token_ids[0]
    k = next(i for i in range(3, 10) if free[i] not in free[:i])
    res = generate(lm, ids, config=GenerationConfig(max_new_tokens=10, eos_token_ids=(free[k],)))
    assert res.token_ids == [free[: k + 1]] and res.finish_reasons == ["eos"]
    # None takes the EOS ids from the model config.
    lm.config.eos_token_id = free[k]
    try:
        assert generate(lm, ids, config=GenerationConfig(max_new_tokens=10)).token_ids == [free[: k + 1]]
    finally:
        lm.config.eos_token_id = 2
    res = generate(lm, ids, config=GenerationConfig(max_new_tokens=7, **NO_EOS))
    assert res.token_ids == [free[:7]] and res.finish_reasons == ["length"]
    # max_length counts each row's own prompt.
    res = generate_batch(lm, [ids, ids[:4]], config=GenerationConfig(max_length=12, **NO_EOS))
    assert [len(t) for t in res.token_ids] == [2, 8]


def test_stop_strings_cut_text_exactly(lm, tok):
    # Ids 3..127 of the Mistral vocabulary are the bytes 0x00..0x7C, so the tiny model writes ASCII.
    ids = prompt(10, seed=6)
    full = generate(lm, ids, config=GenerationConfig(max_new_tokens=24, **NO_EOS), tokenizer=tok)
    text = full.texts[0]
    assert text == tok.decode(full.token_ids[0], skip_special_tokens=True) and len(text) >= 16
    stop = text[10:12]
    res = generate(lm, ids, config=GenerationConfig(max_new_tokens=24, stop_strings=[stop, "\x00never"], **NO_EOS),
                   tokenizer=tok)
    assert res.finish_reasons == ["stop"]
    assert res.texts == [text[: text.index(stop)]]
    got = res.token_ids[0]
    assert got == full.token_ids[0][: len(got)]
    assert stop in tok.decode(got) and stop not in tok.decode(got[:-1])


def test_stop_string_over_several_tokens_and_partial_matches(tok):
    text = "a ST b S\nSTOP c"
    script = tok.encode(text, add_special_tokens=False) + [2]
    model = ScriptedLM(script)
    cfg = GenerationConfig(max_new_tokens=50, stop_strings=["STOP", "xyz"])
    res = generate(model, [1, 5], config=cfg, tokenizer=tok)
    assert res.texts == ["a ST b S\n"] and res.finish_reasons == ["stop"]
    assert "".join(stream(model, [1, 5], config=cfg, tokenizer=tok)) == "a ST b S\n"
    # A stop string completed by the last allowed token, and one never completed, still stop/cut correctly.
    n = len(script) - 1
    assert generate(model, [1], config=GenerationConfig(max_new_tokens=n, stop_strings=["P c"]),
                    tokenizer=tok).texts == ["a ST b S\nSTO"]
    res = generate(model, [1], config=GenerationConfig(max_new_tokens=n, stop_strings=["c!"]), tokenizer=tok)
    assert res.texts == [text] and res.finish_reasons == ["length"]


# -------------------------------------------------------------------------------------------------- streaming


@pytest.mark.parametrize("text", ["Hello 世界 😀 ok 龘, naïve 👍🏽 𠀀!", "日本語のテキスト\n\n🦜🦜 end"])
def test_stream_equals_generate_and_never_splits_a_character(tok, text):
    script = tok.encode(text, add_special_tokens=False) + [2]
    assert any(t < 259 for t in script[:-1])  # byte-fallback tokens are part of the script
    model = ScriptedLM(script)
    s = stream(model, [1, 22557], tokenizer=tok)
    deltas = list(s)
    assert "".join(deltas) == text and all("\ufffd" not in d for d in deltas) and len(deltas) > 5
    assert s.result.finish_reasons == ["eos"] and s.result.token_ids == [script]
    assert generate(model, [1, 22557], tokenizer=tok).text == text
    # With a multi-byte stop string the text is cut right before it.
    cfg = GenerationConfig(stop_strings=[text[-4:-2]])
    streamed = "".join(stream(model, [1], config=cfg, tokenizer=tok))
    assert streamed == generate(model, [1], config=cfg, tokenizer=tok).text == text[: text.index(text[-4:-2])]


# ------------------------------------------------------------------------------------------ image token, config


def test_image_token_is_never_generated_and_images_go_to_prefill_only(lm):
    ids = prompt(8, seed=8)
    image_id = 17
    plain = generate(lm, ids, config=GenerationConfig(max_new_tokens=6, suppress_token_ids=(image_id,), **NO_EOS))
    vl = VLLike(lm, image_id)
    pixels = torch.ones(4, 3)
    res = generate(vl, ids, config=GenerationConfig(max_new_tokens=6, **NO_EOS), pixel_values=pixels)
    assert image_id not in res.token_ids[0] and res.token_ids == plain.token_ids
    assert [p is pixels for _, p in vl.calls] == [True] + [False] * 5
    assert vl.calls[0][0] == (1, 8) and all(shape == (1, 1) for shape, _ in vl.calls[1:])
    # Prefill in pieces: the images are embedded once for the whole prompt, then the embeddings go in pieces.
    vl.calls.clear()
    res = generate(vl, ids, config=GenerationConfig(max_new_tokens=6, prefill_chunk_size=3, **NO_EOS),
                   pixel_values=pixels, image_grid_thw=None)
    assert res.token_ids == plain.token_ids
    assert [c[0] for c in vl.calls[:4]] == ["embed", (1, 3), (1, 3), (1, 2)] and vl.calls[0][1] is pixels
    # Scripted: the image token (and another suppressed id) top the logits at every step; the runner-up wins.
    model = ScriptedLM([image_id] * 5, vocab_size=64, eos=(), image_token_index=image_id, runner_up=9)
    res = generate(model, [1], config=GenerationConfig(max_new_tokens=5, suppress_token_ids=(3,)))
    assert res.token_ids == [[9] * 5]


def test_generation_config_from_hub_dict():
    cfg = GenerationConfig.from_dict({"bos_token_id": 1, "eos_token_id": [2, 32001], "pad_token_id": 0,
                                      "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": None,
                                      "repetition_penalty": 1.1, "max_length": 4096, "transformers_version": "4.52.4",
                                      "_from_model_config": True})
    assert (cfg.do_sample, cfg.temperature, cfg.top_p, cfg.top_k, cfg.repetition_penalty) == (True, 0.7, 0.9, 0, 1.1)
    assert cfg.eos_token_ids == (2, 32001) and cfg.max_length == 4096 and cfg.max_new_tokens == 256
    assert GenerationConfig.from_dict({"eos_token_id": 2, "max_new_tokens": 5}).eos_token_ids == (2,)


def test_bad_requests_say_what_to_do(lm):
    with pytest.raises(InputError, match="left"):
        ids, mask = left_pad([[5, 6], [7]])
        generate(lm, ids.flip(1), mask.flip(1))
    with pytest.raises(InputError, match="tokenizer"):
        generate(lm, [5, 6], config=GenerationConfig(stop_strings=["x"]))
    with pytest.raises(InputError, match="max_length"):
        generate(lm, [5] * 10, config=GenerationConfig(max_length=10))


def test_auto_prefill_goes_in_pieces_only_for_long_prompts(lm, monkeypatch):
    import zamba2vl.generation as gen

    assert GenerationConfig().prefill_chunk_size == "auto"
    assert gen.prefill_piece_size("auto", gen.AUTO_PREFILL_OVER) is None
    assert gen.prefill_piece_size("auto", gen.AUTO_PREFILL_OVER + 1) == gen.AUTO_PREFILL_PIECE
    assert gen.prefill_piece_size(None, 10**6) is None and gen.prefill_piece_size(0, 10**6) is None
    assert gen.prefill_piece_size(512, 100) == 512
    for bad in (-1, "half", 2.5, True):
        with pytest.raises(ConfigError, match="prefill_chunk_size"):
            GenerationConfig(prefill_chunk_size=bad)
    # With the thresholds scaled down to this tiny model: a long prompt is fed in pieces, with the same tokens.
    monkeypatch.setattr(gen, "AUTO_PREFILL_OVER", 8)
    monkeypatch.setattr(gen, "AUTO_PREFILL_PIECE", 4)
    lengths = []
    real_forward = type(lm).forward

    def spy(self, *args, **kwargs):
        ids = kwargs.get("input_ids")
        lengths.append(None if ids is None else ids.shape[1])
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(type(lm), "forward", spy)
    long, short = prompt(11, seed=41), prompt(8, seed=42)
    auto = generate(lm, long, config=GenerationConfig(max_new_tokens=3, **NO_EOS))
    assert lengths[:3] == [4, 4, 3]  # pieces, then one token per decode step
    lengths.clear()
    whole = generate(lm, long, config=GenerationConfig(max_new_tokens=3, prefill_chunk_size=None, **NO_EOS))
    assert lengths[0] == 11 and auto.token_ids == whole.token_ids
    lengths.clear()
    generate(lm, short, config=GenerationConfig(max_new_tokens=1, **NO_EOS))
    assert lengths[0] == 8  # not over the threshold: at once
