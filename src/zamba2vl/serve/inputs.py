"""From a validated chat request to model inputs: the image URL policy, the processor, the generation settings.

Image URLs: ``data:`` URLs are always accepted; ``http(s)`` URLs only when the operator enabled remote images,
and then each download is bounded in bytes and in time and redirects are not followed; anything else (``file:``,
bare paths, ``ftp:``...) is refused, so a client can never make the server read its own files. An image whose header
promises more than ``max_image_pixels`` is refused before any pixel is decoded; smaller ones are resized to the
``max_pixels`` budget by the processor. Every refusal is a 400 ``APIError`` that says what to do instead.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import copy
import urllib.parse
from dataclasses import asdict, dataclass
from typing import Any

import torch

from zamba2vl.errors import ConfigError, ImageError, InputError
from zamba2vl.generation import GenerationConfig
from zamba2vl.processing.image_io import read_image_size
from zamba2vl.serve.schemas import APIError, ChatCompletionRequest, ImagePart, TextPart
from zamba2vl.serve.settings import ServeSettings


@dataclass
class PreparedRequest:
    input_ids: torch.Tensor  # [1, L] the rendered prompt, images expanded to their tokens
    extras: dict[str, torch.Tensor]  # pixel_values [patches, 588] and image_grid_thw [images, 3], or nothing
    config: GenerationConfig
    prompt_tokens: int


def image_urls(request: ChatCompletionRequest) -> list[str]:
    return [part.image_url.url for m in request.messages if isinstance(m.content, list)
            for part in m.content if isinstance(part, ImagePart)]


def check_image_urls(urls: list[str], settings: ServeSettings) -> None:
    """Refuse, before any work, requests with too many images or URLs this server will not open."""
    if len(urls) > settings.max_images:
        raise APIError(400, f"the request has {len(urls)} images; this server takes at most {settings.max_images} "
                            "per request", param="messages", code="too_many_images")
    for i, url in enumerate(urls):
        scheme = url.split(":", 1)[0].lower() if ":" in url else ""
        if scheme == "data":
            continue
        if scheme in ("http", "https"):
            if not settings.allow_remote_images:
                raise APIError(400, f"image {i}: remote image URLs are disabled on this server; send the image "
                                    "inline as a base64 data: URL (data:image/png;base64,...)",
                               param="messages", code="remote_images_disabled")
            continue
        raise APIError(400, f"image {i}: only data: URLs{' and http(s) URLs' if settings.allow_remote_images else ''}"
                            f" are accepted, not {(scheme + ':') if scheme else 'a bare path'} (the server never "
                            "reads its own files)", param="messages", code="invalid_image_url")


async def fetch_remote_images(urls: list[str], settings: ServeSettings, client: Any) -> list[str | bytes]:
    """Download the http(s) URLs (bounded in size and time); data: URLs are left for ``prepare`` to decode."""
    out: list[str | bytes] = []
    for i, url in enumerate(urls):
        if url.startswith("data:"):
            out.append(url)
            continue
        try:
            out.append(await asyncio.wait_for(_download(url, settings.remote_image_max_bytes, client),
                                              timeout=settings.remote_image_timeout_s))
        except asyncio.TimeoutError:
            raise APIError(400, f"image {i}: downloading {url[:100]} took longer than "
                                f"{settings.remote_image_timeout_s:g} s", code="image_download_failed") from None
        except APIError as e:
            raise APIError(400, f"image {i}: {e.message}", code="image_download_failed") from None
        except Exception as e:  # noqa: BLE001 - any network failure is the client's URL's problem
            raise APIError(400, f"image {i}: could not download {url[:100]}: {type(e).__name__}: {e}",
                           code="image_download_failed") from None
    return out


async def _download(url: str, max_bytes: int, client: Any) -> bytes:
    async with client.stream("GET", url) as response:
        if response.status_code != 200:
            raise APIError(400, f"{url[:100]} answered HTTP {response.status_code} (redirects are not followed)")
        declared = response.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise APIError(400, f"{url[:100]} is {declared} bytes, over the limit of {max_bytes}")
        data = bytearray()
        async for piece in response.aiter_bytes():
            data += piece
            if len(data) > max_bytes:
                raise APIError(400, f"{url[:100]} is over the limit of {max_bytes} bytes")
        return bytes(data)


def decode_data_url(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise ImageError("a data: URL needs a comma before its payload (data:image/png;base64,...)")
    if header.lower().endswith(";base64"):
        try:
            return base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageError(f"the data: URL's base64 payload is invalid ({e}); encode the image bytes with "
                             "standard base64") from None
    return urllib.parse.unquote_to_bytes(payload)


def serving_processor(processor):
    """The pipeline's processor without its own length check: the server checks the context itself, to answer with
    the ``context_length_exceeded`` code."""
    proc = copy.copy(processor)
    proc.max_length = None
    return proc


def prepare(vlm, processor, request: ChatCompletionRequest, images: list[str | bytes],
            settings: ServeSettings) -> PreparedRequest:
    """Decode and check the images, render and tokenize the prompt, and settle the generation settings.
    Runs in a worker thread (image decoding is CPU work)."""
    decoded = []
    for i, image in enumerate(images):
        try:
            data = decode_data_url(image) if isinstance(image, str) else image
            read_image_size(data, max_image_pixels=settings.max_image_pixels)
        except ImageError as e:
            raise APIError(400, f"image {i}: {e}", param="messages", code="invalid_image") from None
        decoded.append(data)
    try:
        inputs = processor.process_messages(_messages(request, decoded), max_pixels=settings.max_pixels)
    except ImageError as e:
        raise APIError(400, str(e), param="messages", code="invalid_image") from None
    except InputError as e:
        raise APIError(400, str(e), param="messages", code="invalid_prompt") from None
    prompt_tokens = int(inputs.input_ids.shape[1])
    extras = {}
    if inputs.pixel_values is not None:
        extras = {"pixel_values": inputs.pixel_values, "image_grid_thw": inputs.image_grid_thw}
    config = generation_config(vlm, request, prompt_tokens)
    return PreparedRequest(inputs.input_ids, extras, config, prompt_tokens)


def _messages(request: ChatCompletionRequest, images: list[bytes]) -> list[dict[str, Any]]:
    """OpenAI messages -> the processor's messages, image parts carrying the decoded bytes."""
    images_left = iter(images)
    out = []
    for m in request.messages:
        role = "system" if m.role == "developer" else m.role
        if not isinstance(m.content, list):
            out.append({"role": role, "content": m.content or ""})
            continue
        parts = [{"type": "text", "text": p.text} if isinstance(p, TextPart) else
                 {"type": "image", "image": next(images_left)} for p in m.content]
        out.append({"role": role, "content": parts})
    return out


def generation_config(vlm, request: ChatCompletionRequest, prompt_tokens: int) -> GenerationConfig:
    """The checkpoint's generation settings with the request's on top. A prompt (plus an explicit ``max_tokens``) over
    the context is refused; without ``max_tokens`` the answer is cut to the room left."""
    base = vlm.generation_config
    context = vlm.context_limit
    room = None if context is None else context - prompt_tokens
    if base.max_length is not None:
        room = base.max_length - prompt_tokens if room is None else min(room, base.max_length - prompt_tokens)
    wanted = request.new_tokens
    if room is not None and (room < 1 or (wanted is not None and wanted > room)):
        raise APIError(400, f"this model's context is {context} tokens; the prompt takes {prompt_tokens} (images "
                            f"included){f' and max_tokens asks for {wanted} more' if wanted else ''}. Shorten the "
                            "conversation, send fewer or smaller images, or lower max_tokens.",
                       param="messages", code="context_length_exceeded")
    if wanted is None:
        wanted = base.max_new_tokens if room is None else min(base.max_new_tokens, room)
    settings: dict[str, Any] = {"max_new_tokens": wanted, "max_length": None,
                                "stop_strings": tuple(base.stop_strings) + request.stop_strings}
    if request.temperature is not None:
        sample = request.temperature > 0
        settings.update(do_sample=sample, temperature=request.temperature if sample else 1.0)
    if request.top_p is not None:
        settings["top_p"] = request.top_p
    if request.seed is not None:
        settings["seed"] = request.seed
    try:
        return GenerationConfig(**{**asdict(base), **settings})
    except ConfigError as e:
        raise APIError(400, str(e), code="invalid_value") from None
