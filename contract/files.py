"""Small file helpers shared by every layer: atomic writes (temp file + rename), hashing, image files."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Union

from .errors import UserError

PathLike = Union[str, "os.PathLike[str]"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
"""File suffixes (lower case) every image folder reader accepts: sources, calibration, verify, data tools."""


def is_image_file(path: PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_SUFFIXES


def image_files(folder: PathLike, recursive: bool = False) -> list[Path]:
    """Image files in ``folder`` (sorted by path); a UserError for a missing folder or one without images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"image folder {folder} not found (or not a folder)")
    found = folder.rglob("*") if recursive else folder.iterdir()
    files = sorted(p for p in found if is_image_file(p) and p.is_file())
    if not files:
        raise UserError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


@contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    ``suffix`` lets writers that choose a format by extension (cv2.imwrite, VideoWriter) see the
    right one. Nothing half-written is ever left at ``path``: on error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix or ".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp creates 0600 files: give them the usual umask-based mode
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_text(path: PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: PathLike, obj: Any) -> None:
    """Strict JSON (NaN/Infinity refused: they are not JSON), written atomically."""
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, allow_nan=False) + "\n")


def sha256_file(path: PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()
