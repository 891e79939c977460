"""Continuous batching: concurrent requests share decode steps and each gets the answer it gets alone; batching
beats serving one at a time; a full queue answers 503 with Retry-After; a request past its time gets 504."""

import asyncio
import time

import httpx

from serve_helpers import MODEL, alone, metric, openai_message, png_bytes


async def post_all(url: str, bodies: list[dict], timeout: float = 120) -> list[httpx.Response]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=len(bodies))
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        return await asyncio.gather(*(client.post(url + "/v1/chat/completions", json=b) for b in bodies))


def request(text: str, *images: bytes, max_tokens: int, **extra) -> dict:
    return {"model": MODEL, "messages": [openai_message(text, *images)], "max_tokens": max_tokens, "temperature": 0,
            **extra}


def test_64_concurrent_mixed_requests_each_equal_their_solo_answer(server, vlm):
    images = [png_bytes(56 + 28 * (i % 4), 84 + 14 * (i % 5), seed=i) for i in range(6)]
    cases = []
    for i in range(64):
        text = "Question %d: what is in this picture? " % i + "More detail please. " * (i % 7)
        imgs = (images[i % 6],) if i % 3 else ()  # a third of them text only
        if i % 16 == 5:
            imgs = (images[0], images[(i // 16) + 1])  # a few with two images
        cases.append((text, imgs, 4 + (i * 7) % 21))  # 4..24 new tokens: rows leave at different steps
    expected = [alone(vlm, text, *imgs, max_tokens=n) for text, imgs, n in cases]
    steps_before = metric(server, "zamba2vl_decode_steps_total")
    rows_before = metric(server, "zamba2vl_decode_batch_size_sum")

    t0 = time.perf_counter()
    responses = asyncio.run(post_all(server.url, [request(t, *imgs, max_tokens=n) for t, imgs, n in cases]))
    elapsed = time.perf_counter() - t0

    assert [r.status_code for r in responses] == [200] * 64
    for r, exp in zip(responses, expected):
        body = r.json()
        assert body["choices"][0]["message"]["content"] == exp.text
        assert body["usage"]["prompt_tokens"] == exp.prompt_lengths[0]
        assert body["usage"]["completion_tokens"] == len(exp.token_ids[0])
    steps = metric(server, "zamba2vl_decode_steps_total") - steps_before
    rows = metric(server, "zamba2vl_decode_batch_size_sum") - rows_before
    print(f"\n64 requests in {elapsed:.2f} s: {steps:.0f} decode steps, {rows / steps:.1f} rows per step on average")
    assert rows / steps > 4  # the requests really shared decode steps


def test_8_concurrent_requests_have_at_least_twice_the_throughput_of_one_at_a_time(server):
    bodies = [request(f"Write about topic number {i}.", max_tokens=32) for i in range(8)]

    async def one_at_a_time():
        async with httpx.AsyncClient(timeout=120) as client:
            return [await client.post(server.url + "/v1/chat/completions", json=b) for b in bodies]

    asyncio.run(post_all(server.url, bodies[:2]))  # warm up
    t0 = time.perf_counter()
    sequential = asyncio.run(one_at_a_time())
    t_seq = time.perf_counter() - t0
    t0 = time.perf_counter()
    concurrent = asyncio.run(post_all(server.url, bodies))
    t_conc = time.perf_counter() - t0

    tokens = sum(r.json()["usage"]["completion_tokens"] for r in sequential)
    assert tokens == sum(r.json()["usage"]["completion_tokens"] for r in concurrent)
    assert [r.json()["choices"][0]["message"]["content"] for r in concurrent] == \
        [r.json()["choices"][0]["message"]["content"] for r in sequential]
    print(f"\nthroughput, {tokens} tokens: one at a time {tokens / t_seq:.1f} tok/s ({t_seq:.2f} s), "
          f"8 concurrent {tokens / t_conc:.1f} tok/s ({t_conc:.2f} s): {t_seq / t_conc:.2f}x")
    assert t_seq / t_conc >= 2.0


def test_full_queue_answers_503_with_retry_after_and_recovers(start_server):
    server = start_server(max_batch_size=1, max_queue=1, retry_after_s=2)
    long = request("Go on and on.", max_tokens=2000)

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            url = server.url + "/v1/chat/completions"
            running = asyncio.ensure_future(client.post(url, json=long))
            await until(client, server, running=1, waiting=0)
            queued = asyncio.ensure_future(client.post(url, json=long))
            await until(client, server, running=1, waiting=1)
            refused = await client.post(url, json=request("Hi", max_tokens=2))
            # The two clients give up (non-streaming requests): both are cancelled, the queue empties.
            running.cancel()
            queued.cancel()
            await until(client, server, running=0, waiting=0)
            return refused

    refused = asyncio.run(scenario())
    assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
    assert refused.json()["error"]["code"] == "server_busy" and refused.json()["error"]["type"] == "server_error"
    assert metric(server, 'zamba2vl_scheduler_requests_total{outcome="cancelled"}') == 2
    assert metric(server, 'zamba2vl_requests_total{status="503"}') == 1
    assert httpx.post(server.url + "/v1/chat/completions", json=request("Hi", max_tokens=2)).status_code == 200


async def until(client, server, timeout: float = 20, **want):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        health = (await client.get(server.url + "/health")).json()
        if all(health[k] == v for k, v in want.items()):
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"server never reached {want}: {health}")


def test_request_past_its_time_limit_gets_504_and_frees_its_row(start_server):
    server = start_server(request_timeout_s=0.5)
    t0 = time.perf_counter()
    r = httpx.post(server.url + "/v1/chat/completions", json=request("Go on.", max_tokens=3000), timeout=30)
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
    assert 0.5 <= time.perf_counter() - t0 < 5
    assert httpx.get(server.url + "/health").json()["running"] == 0
    ok = httpx.post(server.url + "/v1/chat/completions", json=request("Hi", max_tokens=2), timeout=30)
    assert ok.status_code == 200
