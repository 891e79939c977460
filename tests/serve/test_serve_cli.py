"""`zamba2vl serve` as an operator runs it (a child process; stopped with Ctrl-C at the end of the session, exit 0):
loopback by default and said so at start-up, one JSON log line per request, Prometheus metrics, the chat page; and
the argument parser the main CLI mounts."""

import argparse
import re

import httpx

from zamba2vl.serve.cli import add_serve_arguments, settings_from_args

from serve_helpers import openai_message


def test_serve_binds_to_loopback_by_default_says_so_and_logs_each_request(server_process):
    server = server_process
    assert re.search(r"on http://127\.0\.0\.1:\d+ \(loopback only", server.banner), server.banner
    start = server.log_entry(event="start")
    assert start["host"] == "127.0.0.1" and start["loopback"] is True and start["remote_images"] is False
    url = server.url
    assert httpx.get(url + "/health").json()["model"] == "tiny-vl"
    page = httpx.get(url + "/")
    assert page.status_code == 200 and "<title>Zamba2-VL chat</title>" in page.text
    assert "https://" not in page.text and "http://" not in page.text  # nothing to fetch: works offline
    before = httpx.get(url + "/metrics").text
    r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny-vl", "messages": [openai_message("Hello")], "max_tokens": 5, "temperature": 0})
    assert r.status_code == 200
    metrics = httpx.get(url + "/metrics")
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")

    def count(text, name):
        found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.M)
        return float(found[1]) if found else 0.0

    assert count(metrics.text, 'zamba2vl_requests_total{status="200"}') - count(
        before, 'zamba2vl_requests_total{status="200"}') == 1
    assert count(metrics.text, "zamba2vl_completion_tokens_total") - count(
        before, "zamba2vl_completion_tokens_total") == 5
    entry = server.log_entry(event="request", id=r.json()["id"])
    assert entry["status"] == 200 and entry["stream"] is False
    assert entry["prompt_tokens"] == r.json()["usage"]["prompt_tokens"] and entry["completion_tokens"] == 5
    assert 0 < entry["ttft_s"] <= entry["total_s"]
    bad = httpx.post(url + "/v1/chat/completions", json={"model": "nope", "messages": [openai_message("Hi")]})
    entry = server.log_entry(event="request", status=404)
    assert bad.status_code == 404 and entry["id"] == bad.headers["x-request-id"] and "nope" in entry["error"]


def test_parser_defaults_to_loopback_and_builds_settings():
    parser = argparse.ArgumentParser()
    add_serve_arguments(parser)
    args = parser.parse_args(["--model", "/models/zamba2-vl-1.2b/"])
    assert args.host == "127.0.0.1" and args.port == 8000 and not args.allow_remote_images
    s = settings_from_args(args)
    assert s.model_name == "/models/zamba2-vl-1.2b/"  # not a folder here: the name is taken as given
    args = parser.parse_args(["--model", "m", "--max-body-mb", "2", "--allow-remote-images", "--max-queue", "3",
                              "--served-model-name", "zamba"])
    s = settings_from_args(args)
    assert (s.max_body_bytes, s.allow_remote_images, s.max_queue, s.model_name) == (2 * 2**20, True, 3, "zamba")
