"""Clients that leave: 100 streaming clients disconnect mid-answer; each is cancelled, its state freed, the server
keeps answering and its resident memory returns to where it was."""

import asyncio
import json
import time

import httpx

from serve_helpers import MODEL, metric, openai_message, png_bytes


async def leave_mid_stream(client: httpx.AsyncClient, url: str, body: dict) -> int:
    """Stream until the first piece of text, then close the connection; returns 1 when text was seen."""
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as r:
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("data: {"):
                delta = json.loads(line[6:])["choices"][0]["delta"]
                if delta.get("content"):
                    return 1
    raise AssertionError("the stream ended before the client left")


async def leave_all(url: str, bodies: list[dict]) -> list[int]:
    limits = httpx.Limits(max_connections=len(bodies), max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return await asyncio.gather(*(leave_mid_stream(client, url, b) for b in bodies))


def wait_idle(server, timeout: float = 30) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        health = httpx.get(server.url + "/health").json()
        if health["running"] == 0 and health["waiting"] == 0:
            return health
        time.sleep(0.02)
    raise AssertionError(f"the server still holds requests: {health}")


def settled_rss(server, timeout: float = 5.0) -> int:
    """The server's resident memory once it has settled: it gives freed memory back after half a second idle, so
    read it after that, until two readings 0.2 s apart agree to within 1 MiB."""
    time.sleep(0.6)
    end = time.monotonic() + timeout
    last = server.rss()
    while time.monotonic() < end:
        time.sleep(0.2)
        now = server.rss()
        if abs(now - last) < 2**20:
            return now
        last = now
    return last


def test_100_clients_leaving_mid_stream_are_cancelled_and_memory_returns(server_process):
    server = server_process  # its own process: its resident memory is the server's alone
    image = png_bytes(112, 112, seed=9)

    def body(i):
        images = (image,) if i % 2 else ()
        return {"model": MODEL, "messages": [openai_message(f"Tell me everything, take {i}.", *images)],
                "max_tokens": 3000, "temperature": 0, "stream": True}

    # Warm up with a burst of the same size: the first time the server holds 100 rows at once its allocator grows
    # (about +12% RSS measured on 2026-11-22); what must not happen is memory staying behind after each burst.
    asyncio.run(leave_all(server.url, [body(i) for i in range(100)]))
    wait_idle(server)
    cancelled_before = metric(server, 'zamba2vl_scheduler_requests_total{outcome="cancelled"}')
    gone_before = metric(server, 'zamba2vl_requests_total{status="499"}')
    rss_before = settled_rss(server)

    t0 = time.perf_counter()
    seen = asyncio.run(leave_all(server.url, [body(i) for i in range(100)]))
    assert seen == [1] * 100
    wait_idle(server)
    elapsed = time.perf_counter() - t0
    rss_after = settled_rss(server)

    assert metric(server, 'zamba2vl_scheduler_requests_total{outcome="cancelled"}') - cancelled_before == 100
    assert metric(server, 'zamba2vl_requests_total{status="499"}') - gone_before == 100
    print(f"\n100 clients left mid-stream in {elapsed:.2f} s; RSS {rss_before / 2**20:.0f} MiB before, "
          f"{rss_after / 2**20:.0f} MiB after")
    assert rss_after <= 1.10 * rss_before
    ok = httpx.post(server.url + "/v1/chat/completions", timeout=30,
                    json={"model": MODEL, "messages": [openai_message("Hi")], "max_tokens": 3, "temperature": 0})
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def test_a_client_leaving_a_queued_or_unstreamed_request_frees_it(start_server):
    server = start_server(max_batch_size=1, max_queue=4)
    body = {"model": MODEL, "messages": [openai_message("Go on.")], "max_tokens": 3000, "temperature": 0}

    async def scenario():
        async with httpx.AsyncClient(timeout=60) as client:
            tasks = [asyncio.ensure_future(client.post(server.url + "/v1/chat/completions", json=body))
                     for _ in range(3)]
            end = time.monotonic() + 20
            while (await client.get(server.url + "/health")).json() != {
                    "status": "ok", "model": MODEL, "running": 1, "waiting": 2}:
                assert time.monotonic() < end
                await asyncio.sleep(0.01)
            for t in tasks:
                t.cancel()

    asyncio.run(scenario())
    wait_idle(server, timeout=5)
    assert metric(server, 'zamba2vl_scheduler_requests_total{outcome="cancelled"}') == 3
