"""What an operator can set on the server (``zamba2vl serve --help`` lists the same with their flags)."""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass
class ServeSettings:
    model_name: str  # the name clients put in "model"; any other name is answered 404
    max_batch_size: int = 16  # rows decoded together in one step
    max_queue: int = 64  # requests waiting for a batch slot; more are answered 503 with Retry-After
    request_timeout_s: float = 300.0  # from arrival to the last token, queueing included
    retry_after_s: int = 1  # the Retry-After header of a 503
    prefill_tokens_per_step: int = 4096  # prompt tokens prefilled between two decode steps (at least one request)
    torch_threads: int | None = None  # intra-op threads of the model thread (None: torch's default)
    max_body_bytes: int = 20 * MiB  # larger request bodies are answered 413
    max_images: int = 8  # images per request
    max_image_pixels: int = 6000 * 6000  # larger images (by their header) are refused before decoding
    max_pixels: int | None = None  # resize budget per image (None: the checkpoint's preprocessor setting)
    allow_remote_images: bool = False  # fetch http(s) image URLs (off: only data: URLs are accepted)
    remote_image_timeout_s: float = 10.0  # whole download of one remote image
    remote_image_max_bytes: int = 10 * MiB  # size of one remote image

    def __post_init__(self) -> None:
        for name in ("max_batch_size", "max_queue", "max_body_bytes", "max_images", "max_image_pixels",
                     "prefill_tokens_per_step", "remote_image_max_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.request_timeout_s <= 0 or self.remote_image_timeout_s <= 0:
            raise ValueError("timeouts must be positive")
