"""Images, messages and reference answers shared by the serve tests."""

import base64
import io
import json
import re
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib

import httpx

import numpy as np
from PIL import Image

MODEL = "tiny-vl"  # the served model name


def png_bytes(h: int, w: int, seed: int) -> bytes:
    image = Image.fromarray(np.random.default_rng(seed).integers(0, 255, (h, w, 3), dtype=np.uint8))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def data_url(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def huge_png(side: int) -> bytes:
    """A valid 1-bit grey PNG of side x side pixels, written row by row (a few KB, never held decoded)."""
    def block(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    row = b"\x00" + bytes((side + 7) // 8)  # filter byte + packed bits
    z = zlib.compressobj(9)
    data = b"".join(z.compress(row) for _ in range(side)) + z.flush()
    header = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + block(b"IHDR", header) + block(b"IDAT", data) + block(b"IEND", b"")


def openai_message(text: str, *images: bytes) -> dict:
    """A user message as an OpenAI client sends it: image_url parts with data: URLs, then the text."""
    parts = [{"type": "image_url", "image_url": {"url": data_url(i)}} for i in images]
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


def pipeline_message(text: str, *images: bytes) -> dict:
    """The same message for zamba2vl.pipeline (images as bytes)."""
    parts = [{"type": "image", "image": i} for i in images]
    return {"role": "user", "content": parts + [{"type": "text", "text": text}]}


def alone(vlm, text: str, *images: bytes, max_tokens: int, **gen):
    """The greedy answer of one request run alone through the pipeline (what `zamba2vl generate` runs)."""
    return vlm.generate([pipeline_message(text, *images)], max_new_tokens=max_tokens, **gen)


def metric(server, name: str) -> float:
    """A value from /metrics; a name without labels sums over them."""
    text = httpx.get(server.url + "/metrics").text
    return sum(float(v) for v in re.findall(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", text, re.M))


class ServerProcess:
    """`python -m zamba2vl.serve` (what `zamba2vl serve` runs) in a child process on a free loopback port; its
    stderr lines are collected as they come."""

    def __init__(self, folder, *args: str):
        cmd = [sys.executable, "-m", "zamba2vl.serve", "--model", str(folder), "--port", "0", "--dtype", "float32",
               "--threads", "1", *args]
        self.proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self._cv = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()
        self.banner = self.wait_for(lambda line: "serving" in line, timeout=120)
        port = re.search(r"on http://127\.0\.0\.1:(\d+) ", self.banner)
        assert port, self.banner
        self.url = f"http://127.0.0.1:{port.group(1)}"

    def _read(self) -> None:
        for line in self.proc.stderr:
            with self._cv:
                self.lines.append(line)
                self._cv.notify_all()

    def wait_for(self, match, timeout: float = 30) -> str:
        """The first stderr line for which ``match(line)`` is true, waiting for it if need be."""
        end = time.monotonic() + timeout
        seen = 0
        with self._cv:
            while True:
                for line in self.lines[seen:]:
                    if match(line):
                        return line
                seen = len(self.lines)
                left = end - time.monotonic()
                if left <= 0 or self.proc.poll() is not None:
                    raise AssertionError(f"no such line from the server; it printed: {''.join(self.lines)[-2000:]}")
                self._cv.wait(left)

    def log_entry(self, **match) -> dict:
        """The first JSON log line holding all of ``match``."""
        def ok(line):
            if not line.startswith("{"):
                return False
            entry = json.loads(line)
            return all(entry.get(k) == v for k, v in match.items())
        return json.loads(self.wait_for(ok))

    def rss(self) -> int:
        with open(f"/proc/{self.proc.pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))

    def stop(self) -> int:
        """Ctrl-C, as an operator stops it; returns the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout=30)
