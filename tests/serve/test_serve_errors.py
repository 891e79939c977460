"""Bad requests get the right status and an OpenAI-format JSON error, and the server keeps serving."""

import http.server
import io
import threading
import time

import httpx
import numpy as np
import pytest
from PIL import Image

from serve_helpers import MODEL, data_url, huge_png, metric, openai_message, png_bytes

CHAT = "/v1/chat/completions"


def chat(text="Hi", *images, **extra):
    return {"model": MODEL, "messages": [openai_message(text, *images)], "max_tokens": 3, "temperature": 0, **extra}


def with_image_url(url: str) -> dict:
    return {"model": MODEL, "max_tokens": 3, "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]}]}


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert isinstance(error["message"], str) and error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    return error


def post(server, body=None, *, content=None, headers=None):
    kwargs = {"json": body} if content is None else {"content": content}
    return httpx.post(server.url + CHAT, timeout=60, headers=headers, **kwargs)


CASES = {
    "malformed JSON": (lambda: dict(content=b'{"model": "tiny-vl", "messages": [}'), 400, "invalid_json"),
    "not an object": (lambda: dict(content=b"[1, 2]"), 400, None),
    "50 MB body": (lambda: dict(content=b'{"model": "x", "pad": "' + b"a" * (50 * 2**20) + b'"}'), 413,
                   "request_too_large"),
    "invalid base64": (lambda: dict(body=with_image_url("data:image/png;base64,iVBOR%%w0K==!!")), 400, "invalid_image"),
    "file URL": (lambda: dict(body=with_image_url("file:///etc/passwd")), 400, "invalid_image_url"),
    "bare path": (lambda: dict(body=with_image_url("/etc/passwd")), 400, "invalid_image_url"),
    "remote URL while disabled": (lambda: dict(body=with_image_url("http://127.0.0.1:22/")), 400,
                                  "remote_images_disabled"),
    "100 images": (lambda: dict(body=chat("Many", *[png_bytes(28, 28, 0)] * 100)), 400, "too_many_images"),
    "20000x20000 PNG": (lambda: dict(body=with_image_url(data_url(huge_png(20000)))), 400, "invalid_image"),
    "not an image": (lambda: dict(body=with_image_url(data_url(b"hello, not a picture"))), 400, "invalid_image"),
    "unknown model": (lambda: dict(body={**chat(), "model": "gpt-4o"}), 404, "model_not_found"),
    "max_tokens -1": (lambda: dict(body=chat(max_tokens=-1)), 400, "invalid_value"),
    "temperature 3": (lambda: dict(body=chat(temperature=3)), 400, "invalid_value"),
    "n=2": (lambda: dict(body=chat(n=2)), 400, "invalid_value"),
    "five stop strings": (lambda: dict(body=chat(stop=list("abcde"))), 400, "invalid_value"),
    "no messages": (lambda: dict(body={"model": MODEL, "messages": []}), 400, "invalid_value"),
    "unknown part": (lambda: dict(body={"model": MODEL, "messages": [{"role": "user", "content": [
        {"type": "input_audio", "input_audio": {}}]}]}), 400, "invalid_value"),
    "image in an assistant turn": (lambda: dict(body={"model": MODEL, "messages": [{"role": "assistant", "content": [
        {"type": "image_url", "image_url": {"url": data_url(png_bytes(28, 28, 0))}}]}]}), 400, "invalid_prompt"),
    "prompt over the context": (lambda: dict(body=chat("word " * 5000)), 400, "context_length_exceeded"),
    "max_tokens over the context": (lambda: dict(body=chat(max_tokens=10**6)), 400, "context_length_exceeded"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_request_gets_its_status_and_a_json_error_and_the_server_keeps_serving(server, case):
    make, status, code = CASES[case]
    args = make()
    r = post(server, args.get("body"), content=args.get("content"),
             headers={"content-type": "application/json"} if "content" in args else None)
    assert_error(r, status, code)
    ok = post(server, chat())
    assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def test_routes_methods_and_metrics_of_errors(server):
    assert_error(httpx.get(server.url + "/v1/nothing"), 404, "not_found")
    assert_error(httpx.get(server.url + CHAT), 405)
    assert_error(httpx.get(server.url + "/v1/models/gpt-4o"), 404, "model_not_found")
    before = metric(server, 'zamba2vl_requests_total{status="404"}')
    post(server, {**chat(), "model": "nope"})
    assert metric(server, 'zamba2vl_requests_total{status="404"}') == before + 1


def test_a_large_image_within_the_decode_limit_is_resized_to_the_pixel_budget(server, vlm):
    y, x = np.mgrid[0:1400, 0:2100]
    buf = io.BytesIO()  # 2.9 M pixels (a gradient, so the PNG is small), over the tiny checkpoint's 64-token budget
    Image.fromarray(np.stack([x % 256, y % 256, (x + y) % 256], -1).astype(np.uint8)).save(buf, format="PNG")
    image = buf.getvalue()
    r = post(server, chat("What is it?", image))
    assert r.status_code == 200
    expect = vlm.prepare([{"role": "user", "content": [{"type": "image", "image": image},
                                                        {"type": "text", "text": "What is it?"}]}])
    tokens_per_image = (expect.image_grid_thw.prod() // 4).item()
    assert tokens_per_image <= 64 and r.json()["usage"]["prompt_tokens"] == expect.input_ids.shape[1]


class _ImageHost(http.server.BaseHTTPRequestHandler):
    """Serves /ok.png, /big.png (over the size limit) and /slow.png (answers after 3 s) on 127.0.0.1."""

    image = png_bytes(56, 56, seed=1)

    def do_GET(self):  # noqa: N802 - http.server's naming
        if self.path == "/slow.png":
            time.sleep(3)
        body = self.image if self.path != "/big.png" else self.image + b"\0" * 300_000
        if self.path == "/missing.png":
            self.send_response(404)
            self.end_headers()
            return
        self.send_response(200)
        self.send_header("Content-Type", "image/png")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        try:
            self.wfile.write(body)
        except OSError:
            pass

    def log_message(self, *args):
        pass


def test_remote_images_when_enabled_are_bounded_in_size_and_time(start_server):
    host = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _ImageHost)
    threading.Thread(target=host.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{host.server_address[1]}"
    try:
        server = start_server(allow_remote_images=True, remote_image_timeout_s=0.5, remote_image_max_bytes=200_000)
        ok = post(server, with_image_url(base + "/ok.png"))
        inline = post(server, with_image_url(data_url(_ImageHost.image)))
        assert ok.status_code == 200 and ok.json() == {**inline.json(), "id": ok.json()["id"],
                                                       "created": ok.json()["created"]}
        assert "over the limit" in assert_error(post(server, with_image_url(base + "/big.png")), 400,
                                                "image_download_failed")["message"]
        t0 = time.perf_counter()
        assert "longer than" in assert_error(post(server, with_image_url(base + "/slow.png")), 400,
                                             "image_download_failed")["message"]
        assert time.perf_counter() - t0 < 2.5
        assert_error(post(server, with_image_url(base + "/missing.png")), 400, "image_download_failed")
        assert_error(post(server, with_image_url("file:///etc/passwd")), 400, "invalid_image_url")
    finally:
        host.shutdown()
        host.server_close()
