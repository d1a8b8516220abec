"""Small file helpers shared by every layer: atomic writes (temp file + rename), hashing, image files."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence, Union

from .errors import UserError

log = logging.getLogger(__name__)

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
    # by name only: folders, broken links and bad files named like images are the readers' to skip and count
    files = sorted(p for p in found if is_image_file(p))
    if not files:
        others = sorted(p.name for p in (folder.rglob("*") if recursive else folder.iterdir()) if p.is_file())
        holds = f"; skipped {name_some(others)}" if others else "; it is empty"
        raise UserError(f"image folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}){holds}")
    return files


def name_some(names: Sequence[str], most: int = 5) -> str:
    """'a, b, c' or 'a, b, c, d, e and 7 more': file names in one line."""
    names = list(names)
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


@contextmanager
def atomic_path(path: PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    ``suffix`` lets writers that choose a format by extension (cv2.imwrite, VideoWriter) see the
    right one. Nothing half-written is ever left at ``path``: on error the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=suffix or ".tmp", dir=path.parent)
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


_TEMP_NAME = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)~")


def temp_prefix(path: PathLike) -> str:
    """``.<name>.<pid>~``: temporary files and folders beside ``path`` carry the writer's process id, so a later
    start can tell those of a killed writer (``remove_stale_temps``) from those of a running one."""
    return f".{Path(path).name}.{os.getpid()}~"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder: PathLike) -> int:
    """Remove the temporary files/folders in ``folder`` left by writers that died (kill -9, power loss);
    returns how many. Those of running processes are kept."""
    folder = Path(folder)
    removed = 0
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if not m or _alive(int(m["pid"])):
            continue
        try:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
            removed += 1
        except OSError:
            continue
    if removed:
        log.info("removed %d temporary file(s) of an interrupted earlier run in %s", removed, folder)
    return removed


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


def append_line(fd: int, data: bytes) -> None:
    """Append ``data`` (one whole line) to the file open as ``fd`` (``O_APPEND``) in one ``write`` call.

    A write the disk refuses (full, read-only, short write) raises ``OSError`` after cutting the partial
    bytes off again, so the file never ends in a half line: the rule of the event log and the reviews file.
    """
    start = os.lseek(fd, 0, os.SEEK_END)
    try:
        written = os.write(fd, data)
        if written != len(data):
            raise OSError(28, f"short write ({written} of {len(data)} bytes)")
    except OSError:
        try:
            os.ftruncate(fd, start)
        except OSError:
            pass
        raise
