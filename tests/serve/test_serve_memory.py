"""The idle scheduler hands the memory its requests freed back to the OS as it goes idle and once more a moment
later (what that does is tested in tests/test_runtime.py)."""

import time

import httpx

from serve_helpers import MODEL, metric, openai_message

def test_the_idle_scheduler_gives_memory_back_at_once_and_again_after_a_moment(start_server):
    server = start_server()
    name = "zamba2vl_memory_give_backs_total"
    assert metric(server, name) == 0  # a server that ran nothing has nothing to give back
    r = httpx.post(server.url + "/v1/chat/completions", timeout=60, json={
        "model": MODEL, "messages": [openai_message("Hello")], "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200
    end = time.monotonic() + 10
    while metric(server, name) < 1:  # as the worker goes idle
        assert time.monotonic() < end
        time.sleep(0.01)
    first = time.monotonic()
    while metric(server, name) < 2:  # half a second later, still idle
        assert time.monotonic() < end
        time.sleep(0.01)
    assert time.monotonic() - first > 0.3
    time.sleep(1.0)
    assert metric(server, name) == 2  # idle with nothing new run: no more
