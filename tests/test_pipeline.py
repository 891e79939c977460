"""End to end through the high-level API and the CLI on a tiny random checkpoint with the real tokenizer."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from zamba2vl.cli import main as cli_main
from zamba2vl.errors import ConfigError, ImageError, InputError
from zamba2vl.pipeline import load
from zamba2vl.testing import make_tiny_checkpoint


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny"), seed=3)


@pytest.fixture(scope="module")
def vlm(folder):
    return load(folder, dtype="float32")


def img(h, w, seed):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))


def user(text, *images):
    return [{"role": "user", "content": [{"type": "image", "image": i} for i in images] + [{"type": "text", "text": text}]}]


def test_batched_generation_with_images_equals_each_prompt_alone(vlm):
    convs = [user("Describe.", img(100, 150, 0)),
             user("What colour is the sky in this long question about two images?", img(60, 60, 1), img(140, 90, 2)),
             user("Hi"),
             user("Count.", img(200, 80, 3))]
    batched = vlm.generate(convs, max_new_tokens=12)
    assert batched.inputs.attention_mask.sum(1).unique().numel() == 4  # four different prompt lengths
    for i, conv in enumerate(convs):
        alone = vlm.generate(conv, max_new_tokens=12)
        assert batched.token_ids[i] == alone.token_ids[0]
        assert batched.texts[i] == alone.text


def test_streaming_concatenates_to_the_generated_text_and_stop_strings_cut(vlm):
    conv = user("Tell me something.", img(84, 84, 4))
    full = vlm.generate(conv, max_new_tokens=24)
    deltas = list(vlm.chat(conv, stream=True, max_new_tokens=24))
    assert "".join(deltas) == full.text and len(deltas) > 1
    stop = full.text[5:8]
    assert len(stop) == 3 and stop in full.text
    cut = vlm.generate(conv, max_new_tokens=24, stop_strings=[stop])
    assert cut.text == full.text[: full.text.index(stop)] and cut.finish_reasons == ["stop"]


def test_turn_three_with_state_reuse_equals_a_fresh_prefill(vlm):
    session = vlm.session(max_new_tokens=6)
    session.send("First question about this image.", images=[img(112, 112, 5)])
    session.send("Second question.")
    before = len(session.history_ids)
    cache = session.cache.clone()
    new_ids, extra = session.prepare_turn("Third one, with another image.", images=[img(56, 112, 6)])
    full_ids = session.history_ids + new_ids
    assert len(new_ids) < len(full_ids) // 2 and before == len(session.history_ids)
    with torch.no_grad():
        reused = vlm.model(input_ids=torch.tensor([new_ids]), cache=cache, **extra).logits[0]
        all_images = [p["image"] for m in session.messages for p in m["content"] if p.get("type") == "image"]
        pix = vlm.processor("<image><image>", all_images, add_special_tokens=False)
        fresh = vlm.model(input_ids=torch.tensor([full_ids]), pixel_values=pix.pixel_values,
                          image_grid_thw=pix.image_grid_thw).logits[0, -len(new_ids):]
    assert (reused - fresh).abs().max().item() <= 1e-4


def test_session_prefill_counts_only_new_tokens(vlm):
    session = vlm.session(max_new_tokens=4)
    session.send("Hello", images=[img(56, 56, 7)])
    n1 = session.last_prefill_tokens
    consumed = len(session.history_ids)
    ended_on_eos = session.last_result.finish_reasons == ["eos"]
    session.send("Again")
    # The default template's next turn. The last generated token (never fed) comes first; if it was EOS it
    # stands for the template's "</s>", otherwise "</s>" is tokenized too.
    delta = "</s><s>user\nAgain</s>\n<s>assistant\n"
    delta = delta[len("</s>"):] if ended_on_eos else delta
    expected = 1 + len(vlm.processor.tokenizer.encode(delta, add_special_tokens=False))
    assert session.last_prefill_tokens == expected
    assert n1 > expected and len(session.history_ids) == consumed + expected + len(session.last_result.token_ids[0]) - 1


def test_bad_inputs_get_clear_errors(vlm, folder, tmp_path):
    with pytest.raises(InputError, match="more image placeholders"):
        vlm.processor("<image> <image>", [img(56, 56, 0)])
    with pytest.raises(InputError, match="only 0 image placeholders"):
        vlm.processor("no placeholder", [img(56, 56, 0)])
    limited = load(folder, dtype="float32", max_length=50)
    with pytest.raises(InputError, match="prompt 0 is 111 tokens long .* over the maximum of 50"):
        limited.generate(user("word " * 100))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        load(tmp_path / "empty")
    (tmp_path / "odd").mkdir()
    (tmp_path / "odd" / "config.json").write_text(json.dumps({"model_type": "qwen2_vl"}))
    with pytest.raises(ConfigError, match="'qwen2_vl'"):
        load(tmp_path / "odd")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    with pytest.raises(ImageError, match="broken.png"):
        vlm.generate(user("?", str(tmp_path / "broken.png")))


def test_cli_generate_prints_the_answer_and_timings(folder, tmp_path, capsys):
    img(90, 120, 8).save(tmp_path / "a.png")
    rc = cli_main(["generate", "--model", str(folder), "--dtype", "float32", "--image", str(tmp_path / "a.png"),
                   "--prompt", "What is it?", "--max-new-tokens", "8", "--verbose"])
    out = capsys.readouterr()
    assert rc == 0
    vlm = load(folder, dtype="float32")
    expected = vlm.chat(user("What is it?", str(tmp_path / "a.png")), max_new_tokens=8)
    assert out.out == expected + "\n"
    assert "time to first token" in out.err and "decode" in out.err


def test_cli_prefill_in_pieces_gives_the_same_answer(folder, tmp_path, capsys, monkeypatch):
    import zamba2vl.generation as gen

    img(90, 120, 8).save(tmp_path / "a.png")
    args = ["generate", "--model", str(folder), "--dtype", "float32", "--image", str(tmp_path / "a.png"),
            "--prompt", "What is it?", "--max-new-tokens", "6"]
    pieces = []
    real = gen.prefill

    def spy(model, ids, mask, cache, chunk_size=None, **kw):
        pieces.append(gen.prefill_piece_size(chunk_size, ids.shape[1]))
        return real(model, ids, mask, cache, chunk_size, **kw)

    monkeypatch.setattr(gen, "prefill", spy)
    outs = []
    for extra in ([], ["--prefill-chunk-size", "5"], ["--prefill-chunk-size", "0"]):
        assert cli_main(args + extra) == 0
        outs.append(capsys.readouterr().out)
    assert pieces == [None, 5, None]  # auto leaves a short prompt whole; 5: pieces; 0: at once
    assert outs[0] == outs[1] == outs[2] and outs[0].strip()
    with pytest.raises(SystemExit):
        cli_main(args + ["--prefill-chunk-size", "half"])
    assert "expected auto or a number of tokens" in capsys.readouterr().err


def test_cli_reports_user_errors_without_a_traceback(tmp_path, capsys):
    rc = cli_main(["generate", "--model", str(tmp_path), "--prompt", "x"])
    assert rc == 1 and "no config.json" in capsys.readouterr().err


def test_packed_decode_is_off_by_default_and_when_on_answers_as_the_plain_model(folder, monkeypatch):
    from zamba2vl.ops import packed

    monkeypatch.setattr(packed, "MIN_ELEMENTS", 0)  # the tiny model's weights are all small
    conv = user("Describe this picture.", img(84, 84, 9))
    plain = load(folder, dtype="bfloat16")
    assert not any(packed.lookup(m.weight) is not None for m in plain.model.modules() if isinstance(m, torch.nn.Linear))
    want = plain.generate(conv, max_new_tokens=10)
    fast = load(folder, dtype="bfloat16", packed_decode=True)
    lm_linears = [m for m in fast.model.language_model.modules() if isinstance(m, torch.nn.Linear)]
    vision_linears = [m for m in fast.model.vision_tower.modules() if isinstance(m, torch.nn.Linear)]
    try:
        assert all(packed.lookup(m.weight) is None for m in vision_linears)  # only the language model decodes
        assert all((packed.lookup(m.weight) is not None) == packed.available() for m in lm_linears)
        got = fast.generate(conv, max_new_tokens=10)
        # same bf16 products, summed in another order: the greedy answer of this random model may only drift late
        assert got.token_ids[0][:4] == want.token_ids[0][:4]
    finally:
        packed.unpack(fast.model)
