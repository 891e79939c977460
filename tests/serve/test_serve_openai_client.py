"""The official openai client against the server: images, streaming and not, and the answers of the pipeline/CLI."""

import pytest
from openai import OpenAI

from zamba2vl.cli import main as cli_main

from serve_helpers import MODEL, alone, openai_message, png_bytes

QUESTION = "Describe this image."


@pytest.fixture(scope="module")
def client(server):
    return OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def photo():
    return png_bytes(100, 150, seed=0)


def test_non_streaming_with_an_image_equals_the_cli_answer(client, vlm, tiny_folder, tmp_path, capsys, photo):
    out = client.chat.completions.create(model=MODEL, messages=[openai_message(QUESTION, photo)], max_tokens=12,
                                         temperature=0)
    expect = alone(vlm, QUESTION, photo, max_tokens=12)
    assert out.choices[0].message.content == expect.text
    assert out.choices[0].message.role == "assistant"
    assert out.choices[0].finish_reason == {"eos": "stop", "length": "length"}[expect.finish_reasons[0]]
    assert out.usage.prompt_tokens == expect.prompt_lengths[0] > 20  # the image's tokens are counted
    assert out.usage.completion_tokens == len(expect.token_ids[0])
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    assert out.model == MODEL and out.id.startswith("chatcmpl-")
    # `zamba2vl generate` on the same image file and prompt prints the same answer.
    path = tmp_path / "photo.png"
    path.write_bytes(photo)
    capsys.readouterr()
    assert cli_main(["generate", "--model", str(tiny_folder), "--dtype", "float32", "--image", str(path),
                     "--prompt", QUESTION, "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out == out.choices[0].message.content + "\n"


def test_streaming_with_an_image_gives_the_same_text_in_chunks(client, vlm, photo):
    stream = client.chat.completions.create(model=MODEL, messages=[openai_message(QUESTION, photo)], max_tokens=16,
                                            temperature=0, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    expect = alone(vlm, QUESTION, photo, max_tokens=16)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expect.text
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 1  # really streamed
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [{"eos": "stop", "length": "length"}[expect.finish_reasons[0]]]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(expect.token_ids[0])
    assert chunks[-1].usage.prompt_tokens == expect.prompt_lengths[0]


def test_text_only_multi_turn_stop_and_seeded_sampling(client, vlm):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"},
                {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Tell me a story."}]
    full = vlm.generate(messages, max_new_tokens=20)
    out = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0)
    assert out.choices[0].message.content == full.text
    stop = full.text[4:7]
    cut = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=20, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == full.text[: full.text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    # Sampling with a seed: reproducible, and what the pipeline draws with the same seed.
    kw = dict(model=MODEL, messages=messages, max_tokens=12, temperature=0.9, top_p=0.95, seed=11)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    sampled = vlm.generate(messages, max_new_tokens=12, do_sample=True, temperature=0.9, top_p=0.95, seed=11).text
    assert a == b == sampled
    assert a != vlm.generate(messages, max_new_tokens=12, do_sample=True, temperature=0.9, top_p=0.95, seed=12).text


def test_models_and_health(client, server):
    import httpx

    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert httpx.get(server.url + "/health").json() == {"status": "ok", "model": MODEL, "running": 0, "waiting": 0}
