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


def settled_rss(server, give_backs_before: float, timeout: float = 10.0) -> int:
    """The server's resident memory once it has handed back what the requests freed: it does so when its worker
    goes idle and again after half a second idle (two give-backs, counted in /metrics)."""
    end = time.monotonic() + timeout
    while metric(server, "zamba2vl_memory_give_backs_total") < give_backs_before + 2:
        assert time.monotonic() < end, "the idle server did not hand memory back"
        time.sleep(0.05)
    return server.rss()


def test_100_clients_leaving_mid_stream_are_cancelled_and_memory_returns(server_process):
    server = server_process  # its own process: its resident memory is the server's alone
    image = png_bytes(112, 112, seed=9)

    def body(i):
        images = (image,) if i % 2 else ()
        return {"model": MODEL, "messages": [openai_message(f"Tell me everything, take {i}.", *images)],
                "max_tokens": 3000, "temperature": 0, "stream": True}

    # Each burst holds 100 request states of about 6 MiB (32 running at once, merged into the batch): a leak of
    # even a tenth of them would show. Two bursts in a row: what one leaves behind, the next must not add to.
    wait_idle(server)
    rss_before = server.rss()
    for burst in range(2):
        cancelled_before = metric(server, 'zamba2vl_scheduler_requests_total{outcome="cancelled"}')
        gone_before = metric(server, 'zamba2vl_requests_total{status="499"}')
        give_backs = metric(server, "zamba2vl_memory_give_backs_total")
        t0 = time.perf_counter()
        seen = asyncio.run(leave_all(server.url, [body(i) for i in range(100)]))
        assert seen == [1] * 100
        wait_idle(server)
        elapsed = time.perf_counter() - t0
        rss_after = settled_rss(server, give_backs)
        assert metric(server, 'zamba2vl_scheduler_requests_total{outcome="cancelled"}') - cancelled_before == 100
        assert metric(server, 'zamba2vl_requests_total{status="499"}') - gone_before == 100
        print(f"\nburst {burst}: 100 clients left mid-stream in {elapsed:.2f} s; RSS {rss_before / 2**20:.0f} MiB "
              f"before the first, {rss_after / 2**20:.0f} MiB after this one")
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
