"""Checking what clients send: uploaded images, item ids, filters and metadata (all bad input is a 4xx)."""
from __future__ import annotations

import io
import json
from typing import Any, Dict, Optional

from PIL import Image, UnidentifiedImageError

from metricvision.kb.items import check_filters

MAX_UPLOAD_BYTES = 8 * 1024 * 1024
MAX_PIXELS = 16_000_000


class BadRequest(Exception):
    """A client error: HTTP status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


def decode_upload(data: bytes, max_bytes: int = MAX_UPLOAD_BYTES, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Bytes of an uploaded image -> RGB PIL image, refusing oversize, non-image, bomb and truncated files."""
    if len(data) > max_bytes:
        raise BadRequest(413, f"image is {len(data)} bytes; the limit is {max_bytes}")
    if not data:
        raise BadRequest(400, "image is empty")
    try:
        im = Image.open(io.BytesIO(data))
        # header-only check first: a decompression bomb is refused before any pixel is decoded
        if im.width * im.height > max_pixels:
            raise BadRequest(413, f"image is {im.width}x{im.height} pixels; the limit is {max_pixels} pixels")
        im.load()
        return im.convert("RGB")
    except BadRequest:
        raise
    except UnidentifiedImageError:
        raise BadRequest(400, "the upload is not an image (accepted: PNG, JPEG, GIF, BMP, WebP)") from None
    except Image.DecompressionBombError as e:
        raise BadRequest(413, f"image refused as a decompression bomb: {e}") from None
    except (OSError, SyntaxError, ValueError) as e:
        raise BadRequest(400, f"image is truncated or corrupt: {e}") from None


def parse_item_id(raw: str) -> int:
    """A path segment -> item id; anything but ASCII digits (at most 18) is a 400."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 18:
        raise BadRequest(400, f"item id must be a non-negative integer (ASCII digits), got '{raw[:64]}'")
    return int(raw)


def _json_object(raw: str, what: str, example: str) -> Dict[str, Any]:
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as e:
        raise BadRequest(400, f"{what} must be a JSON object, e.g. {example}: {e}") from None
    if not isinstance(value, dict):
        raise BadRequest(400, f"{what} must be a JSON object, got {type(value).__name__}")
    return value


def parse_filters(raw: Optional[str]) -> Dict[str, Any]:
    """The ``filters`` form field (JSON object of scalars or lists of scalars) -> dict; bad ones are 400s."""
    if not raw:
        return {}
    filters = _json_object(raw, "filters", '{"vendor": "google"}')
    try:
        check_filters(filters)
    except ValueError as e:
        raise BadRequest(400, str(e)) from None
    return filters


def parse_metadata(raw: Optional[str]) -> Dict[str, Any]:
    """The ``metadata`` form field of a new item (JSON object of scalars) -> dict; bad ones are 400s."""
    if not raw:
        return {}
    meta = _json_object(raw, "metadata", '{"vendor": "google"}')
    try:
        for key, value in meta.items():
            if isinstance(value, (list, tuple)):
                raise ValueError(f"metadata '{key}' must be a string, number or boolean, got a list")
            check_filters({key: value})
    except ValueError as e:
        raise BadRequest(400, str(e).replace("filter", "metadata")) from None
    return meta
