"""Fault injection for the reliability tests: real size-limited and read-only tmpfs mounts (root only)."""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

import pytest


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "64k", read_only: bool = False):
    """A real tmpfs of ``size`` at ``path`` (read-only when asked); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path, leave_bytes: int = 0) -> None:
    """Fill the file system of ``path`` (leaving about ``leave_bytes``)."""
    import os

    block = b"\0" * 4096
    fd = os.open(path / ".filler", os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        while os.write(fd, block) == len(block):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    if leave_bytes:
        size = os.path.getsize(path / ".filler")
        os.truncate(path / ".filler", max(0, size - leave_bytes))
