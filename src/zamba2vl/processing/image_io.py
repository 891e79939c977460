"""Opening images: every accepted source becomes one RGB ``PIL.Image``, or an ``ImageError`` that says why not.

Accepted sources
    * a path (``str`` or ``os.PathLike``; a ``file://`` prefix is stripped);
    * raw encoded bytes (``bytes``, ``bytearray``, ``memoryview``) or a binary file object (read whole);
    * a ``data:`` URL (``data:image/png;base64,...``; percent-encoded data URLs work too);
    * a ``PIL.Image.Image`` (its current frame is used, as it is);
    * a numpy array, height first: ``(H, W)`` or ``(H, W, C)`` with C in {1, 3, 4}, of dtype uint8, uint16
      (decoded like PIL's 16-bit grey ``I;16``, so C must be 1), bool, or float with every value in [0, 1]
      (turned into uint8 as ``round(x * 255)``; a float array is not a reference input, the reference would
      reinterpret it). Channels-first arrays are refused: the shape is ambiguous.
    http(s) URLs are refused (nothing is downloaded here) and so are bare base64 strings (use a data URL).

Decisions, following the model card's pipeline (``qwen_vl_utils``: ``Image.open(...).convert("RGB")``) and
``Qwen2VLImageProcessor`` (``convert("RGB")`` when the mode is not RGB):
    * Colour: plain PIL ``convert("RGB")``; alpha is dropped without compositing (RGBA, LA, PA, P with
      transparency), CMYK uses PIL's naive formula, 16-bit grey (``I;16``) is clipped to 255 by PIL, not scaled.
    * EXIF orientation is NOT applied: neither reference calls ``ImageOps.exif_transpose`` (only transformers'
      own ``load_image`` helper does, and the card does not use it), so a photo tagged "rotate 90" reaches the
      model as stored. ``exif_transpose=True`` opts in.
    * Animated images (GIF, APNG, WebP, multi-page TIFF): the first frame only.
    * Decompression bombs: an image whose header promises more than ``max_image_pixels`` pixels (default
      ``PIL.Image.MAX_IMAGE_PIXELS``, about 89.5 M) is refused before any pixel is decoded. PIL's own hard limit
      (twice its ``MAX_IMAGE_PIXELS``) still applies: to go beyond it, raise ``PIL.Image.MAX_IMAGE_PIXELS``
      yourself. Decoded in-memory images (PIL, numpy) are not checked.
    * Truncated, empty, random or otherwise undecodable data raises ``ImageError`` naming the source and the
      decoder's complaint. (If something set ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES``, PIL pads truncated
      files with black instead, and so do we.)

``read_image_size`` opens only the header (PIL decodes lazily), so token budgets can be computed before any
pixel is decoded.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import io
import os
import urllib.parse
import warnings
from collections.abc import Callable, Iterator
from typing import Any, Union

import numpy as np
from PIL import Image, ImageOps

from zamba2vl.errors import ImageError

ImageSource = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, Image.Image, np.ndarray]

_EXIF_ORIENTATION = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)  # transpose, rotate 270, transverse, rotate 90: width and height swap


def load_image(
    source: ImageSource, *, max_image_pixels: int | None = None, exif_transpose: bool = False
) -> Image.Image:
    """Decode ``source`` (see the module docstring) into an RGB PIL image, exactly as the reference does."""
    limit = _pixel_limit(max_image_pixels)
    if isinstance(source, np.ndarray):
        return _finish(_array_to_pil(source), exif_transpose)
    if isinstance(source, Image.Image):
        with _decoding("the PIL image"):
            source.load()
            return _finish(source, exif_transpose)
    name, opener = _encoded(source)
    with _decoding(name), opener() as image:
        _check_pixels(name, image.size, limit)
        image.load()  # the first frame only
        return _finish(image, exif_transpose)


def read_image_size(
    source: ImageSource, *, max_image_pixels: int | None = None, exif_transpose: bool = False
) -> tuple[int, int]:
    """``(height, width)`` of the image ``load_image`` would return, read from the header without decoding.

    Applies the same pixel limit as ``load_image``, so a budget computed here is never for an image that
    ``load_image`` would refuse.
    """
    limit = _pixel_limit(max_image_pixels)
    if isinstance(source, np.ndarray):
        _check_array(source)
        return int(source.shape[0]), int(source.shape[1])  # numpy arrays carry no EXIF
    if isinstance(source, Image.Image):
        (width, height), orientation = source.size, _orientation(source, exif_transpose)
    else:
        name, opener = _encoded(source)
        with _decoding(name), opener() as image:
            _check_pixels(name, image.size, limit)
            (width, height), orientation = image.size, _orientation(image, exif_transpose)
    return (width, height) if orientation in _SWAPPING_ORIENTATIONS else (height, width)


def _orientation(image: Image.Image, exif_transpose: bool) -> int | None:
    # JPEG keeps EXIF in its header; for some formats (PNG with a late eXIf chunk) PIL has to read further.
    return image.getexif().get(_EXIF_ORIENTATION) if exif_transpose else None


def _pixel_limit(max_image_pixels: int | None) -> int | None:
    if max_image_pixels is None:
        return Image.MAX_IMAGE_PIXELS  # read at call time: the user may have changed it
    if max_image_pixels < 1:
        raise ValueError(f"max_image_pixels must be a positive number of pixels or None, got {max_image_pixels}")
    return max_image_pixels


def _finish(image: Image.Image, exif_transpose: bool) -> Image.Image:
    if exif_transpose:
        image = ImageOps.exif_transpose(image)
    # The reference converts only when needed, so an RGB image passes through untouched (no copy).
    return image if image.mode == "RGB" else image.convert("RGB")


@contextlib.contextmanager
def _decoding(name: str) -> Iterator[None]:
    """Turn whatever PIL raises while opening/decoding into an ``ImageError`` that names the source."""
    with warnings.catch_warnings():
        # The pixel limit is enforced by _check_pixels with a clearer message; PIL's warning would only be noise.
        # (catch_warnings is process-global: racing threads may leave this one filter on, which is harmless.)
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            yield
        except ImageError:
            raise
        except Image.DecompressionBombError as e:
            raise ImageError(
                f"{name} is too large to decode safely: {e} If you trust it, raise PIL.Image.MAX_IMAGE_PIXELS "
                "(or set it to None) and pass max_image_pixels, or downscale the image before passing it in."
            ) from e
        except Image.UnidentifiedImageError as e:
            raise ImageError(f"{name} is not an image format PIL can read (random or corrupt data?): {e}") from e
        except MemoryError as e:
            raise ImageError(f"{name} does not fit in memory once decoded; downscale it first.") from e
        except Exception as e:  # noqa: BLE001 - PIL's plugins raise OSError, SyntaxError, struct.error, ...
            raise ImageError(f"{name} could not be decoded (truncated or corrupt?): {type(e).__name__}: {e}") from e


def _check_pixels(name: str, size: tuple[int, int], limit: int | None) -> None:
    width, height = size
    if width < 1 or height < 1:
        raise ImageError(f"{name} has no pixels ({width}x{height}).")
    if limit is not None and width * height > limit:
        raise ImageError(
            f"{name} is {width}x{height} = {width * height} pixels, more than the limit of {int(limit)} pixels "
            "(a guard against decompression bombs). Downscale the image first, or if you trust it pass a larger "
            "max_image_pixels (beyond twice PIL.Image.MAX_IMAGE_PIXELS, raise that too)."
        )


def _encoded(source: Any) -> tuple[str, Callable[[], Image.Image]]:
    """A short name of an encoded source for messages, and a zero-argument function that opens it lazily."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        return _from_bytes(data, f"image bytes ({len(data)} bytes)")
    if hasattr(source, "read"):  # an open binary file or stream: read it whole
        data = source.read()
        if not isinstance(data, bytes):
            raise TypeError(f"an image stream must be opened in binary mode, got {type(data).__name__} from read()")
        return _from_bytes(data, f"the image stream ({len(data)} bytes)")
    if isinstance(source, os.PathLike):
        source = os.fspath(source)
    if not isinstance(source, str):
        raise TypeError(
            "an image must be a path, bytes, a data: URL, a PIL image or a numpy array, "
            f"got {type(source).__name__}"
        )
    if source.startswith("data:"):
        return _from_bytes(_decode_data_url(source), "the data: URL image")
    if source.startswith(("http://", "https://")):
        raise ImageError(f"image URLs are not downloaded here ({source[:80]}); fetch it and pass the bytes or a path.")
    path = source[len("file://"):] if source.startswith("file://") else source
    name = f"image file {path!r}"
    if not os.path.isfile(path):
        reason = "is a directory" if os.path.isdir(path) else "does not exist"
        raise ImageError(f"{name} {reason}.")
    if os.path.getsize(path) == 0:
        raise ImageError(f"{name} is empty (0 bytes).")
    return name, lambda: Image.open(path)


def _from_bytes(data: bytes, name: str) -> tuple[str, Callable[[], Image.Image]]:
    if not data:
        raise ImageError(f"{name} is empty (0 bytes).")
    return name, lambda: Image.open(io.BytesIO(data))


def _decode_data_url(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not sep:
        raise ImageError("a data: URL needs a comma before its payload (data:image/png;base64,...).")
    if header.endswith(";base64"):
        try:
            return base64.b64decode("".join(payload.split()), validate=True)
        except (binascii.Error, ValueError) as e:
            raise ImageError(f"the data: URL's base64 payload is invalid: {e}") from e
    return urllib.parse.unquote_to_bytes(payload)


def _check_array(array: np.ndarray) -> None:
    if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
        raise ImageError(
            f"a numpy image must be (H, W) or (H, W, C) with C in 1, 3, 4 (channels last), got shape {array.shape}"
        )
    if array.ndim not in (2, 3):
        raise ImageError(f"a numpy image must be (H, W) or (H, W, C), got shape {array.shape}")
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageError(f"the numpy image has no pixels (shape {array.shape}).")


def _array_to_pil(array: np.ndarray) -> Image.Image:
    _check_array(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.dtype == np.uint16:
        if array.ndim != 2:
            raise ImageError("a uint16 numpy image must be single-channel (16-bit grey); convert colour to uint8.")
        return Image.fromarray(np.ascontiguousarray(array, dtype="<u2"))  # mode I;16
    if array.dtype == np.bool_:
        return Image.fromarray(array)  # mode 1
    if np.issubdtype(array.dtype, np.floating):
        if not np.all((array >= 0) & (array <= 1)):  # also false for NaN
            raise ImageError("a float numpy image must have every value in [0, 1] (NaN is not allowed).")
        array = np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ImageError(f"a numpy image must be uint8, uint16, bool or float in [0, 1], got dtype {array.dtype}")
    return Image.fromarray(np.ascontiguousarray(array))
