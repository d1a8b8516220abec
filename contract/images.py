"""Reading image files the way every folder reader of the project does: refuse what is not a good image
before it costs memory or a run, and say why.

``read_image`` returns the BGR image or raises ``ImageError`` naming the file and the reason: empty file,
truncated (a JPEG without its end marker, a PNG without IEND), larger than ``max_pixels`` (read from the
header, before decoding: a 20000 x 20000 frame is 1.2 GB decoded), or not decodable. ``SkippedImages``
counts what a folder reader skipped and logs one warning line at the end instead of one per file.
"""
from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Optional

import cv2
import numpy as np

from .errors import UserError

log = logging.getLogger(__name__)

MAX_PIXELS = int(os.environ.get("AACLIP_MAX_IMAGE_PIXELS", 100_000_000))
"""Largest image accepted (width x height); AACLIP_MAX_IMAGE_PIXELS overrides it."""


class ImageError(UserError):
    """One image file that cannot be used (the message names it and why)."""


def header_size(data: bytes) -> Optional[tuple[int, int]]:
    """(width, height) from a PNG, JPEG or BMP header without decoding; None for other formats."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        return struct.unpack(">II", data[16:24])
    if data[:2] == b"BM" and len(data) >= 26:
        w, h = struct.unpack("<ii", data[18:26])
        return abs(w), abs(h)
    if data[:2] == b"\xff\xd8":
        i = 2
        while i + 9 < len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                i += 2
                continue
            length = struct.unpack(">H", data[i + 2:i + 4])[0]
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
                h, w = struct.unpack(">HH", data[i + 5:i + 9])
                return w, h
            i += 2 + length
    return None


def _truncated(data: bytes) -> bool:
    body = data.rstrip(b"\0")
    if data[:2] == b"\xff\xd8":
        return not body.endswith(b"\xff\xd9")
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return b"IEND" not in body[-12:]
    return False


def decode_image(data: bytes, name: str, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes to BGR uint8; ``ImageError`` (naming ``name``) for anything that is not a good image."""
    if not data:
        raise ImageError(f"{name}: empty file")
    size = header_size(data)
    if size is not None and size[0] * size[1] > max_pixels:
        raise ImageError(f"{name}: {size[0]} x {size[1]} pixels is more than the limit of {max_pixels:,} "
                         "(AACLIP_MAX_IMAGE_PIXELS); resize it first")
    if _truncated(data):
        raise ImageError(f"{name}: truncated (the file ends before the image does)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise ImageError(f"{name}: not an image OpenCV can decode")
    return image


def read_image(path: Path, max_pixels: int = MAX_PIXELS) -> tuple[np.ndarray, bytes]:
    """(BGR image, the file's bytes) of ``path``; ``ImageError`` when it is missing, a folder, a broken link,
    empty, truncated, too large or not an image."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except IsADirectoryError:
        raise ImageError(f"{path}: a folder, not an image file") from None
    except FileNotFoundError:
        raise ImageError(f"{path}: not found (a broken link?)") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot be read ({exc.strerror or exc})") from None
    return decode_image(data, str(path), max_pixels), data


class SkippedImages:
    """Counts images a reader skipped; ``report()`` logs one warning with the count and the first reasons."""

    def __init__(self, what: str):
        self.what = what
        self.reasons: list[str] = []

    def skip(self, error: ImageError) -> None:
        self.reasons.append(str(error))
        log.debug("skipped %s", error)

    def __len__(self) -> int:
        return len(self.reasons)

    def report(self) -> None:
        if self.reasons:
            examples = "; ".join(self.reasons[:3]) + ("; ..." if len(self.reasons) > 3 else "")
            log.warning("%s: skipped %d unusable image file(s): %s", self.what, len(self.reasons), examples)
