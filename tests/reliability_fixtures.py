"""Fault injection for the reliability tests: a full disk and a read-only folder, each two ways.

- ``tmpfs``: the real thing, a size-limited or read-only tmpfs mount (root only; skips elsewhere);
- ``injected``: the same errno raised at the os layer for paths below the folder (``os.open``/``os.write``
  against a byte budget: ENOSPC; ``os.open`` for writing, ``os.mkdir``, ``os.access(W_OK)``: EROFS). It runs
  everywhere (a non-root CI job included) but reaches only Python's own calls: writes done in C (OpenCV's
  imwrite and VideoWriter, ONNX's and torch's savers) do not see it. docs/testing.md says which test uses which.
"""
from __future__ import annotations

import contextlib
import errno
import os
import subprocess
from pathlib import Path

import pytest

FAULTS = ("tmpfs", "injected")


@contextlib.contextmanager
def tmpfs(path: Path, size: str = "64k", read_only: bool = False):
    """A real tmpfs of ``size`` at ``path`` (read-only when asked); skips the test where mounting is not allowed."""
    path.mkdir(parents=True, exist_ok=True)
    opts = f"size={size}" + (",ro" if read_only else "")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {done.stderr.strip()}; the 'injected' variant of "
                    "this test runs instead")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def fill(path: Path, leave_bytes: int = 0) -> None:
    """Fill the file system of ``path`` (leaving about ``leave_bytes``)."""
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


def _below(folder: Path, target) -> bool:
    try:
        return Path(os.fspath(target)).resolve().is_relative_to(folder)
    except (TypeError, ValueError, OSError):
        return False


@contextlib.contextmanager
def full_disk(path: Path, free_bytes: int, how: str, monkeypatch):
    """A folder with about ``free_bytes`` left: a filled tmpfs, or a byte budget of ``os.write`` calls on files
    opened below it (ENOSPC once a write does not fit)."""
    if how == "tmpfs":
        with tmpfs(path, size="64k") as folder:
            fill(folder, leave_bytes=free_bytes)
            yield folder
        return
    path.mkdir(parents=True, exist_ok=True)
    folder = path.resolve()
    real_open, real_write = os.open, os.write
    tracked: set[int] = set()
    left = [free_bytes]

    def fake_open(file, flags, *args, **kwargs):
        fd = real_open(file, flags, *args, **kwargs)
        if _below(folder, file):
            tracked.add(fd)
        return fd

    def fake_write(fd, data):
        if fd in tracked:
            if len(data) > left[0]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            left[0] -= len(data)
        return real_write(fd, data)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "write", fake_write)
    try:
        yield path
    finally:
        monkeypatch.setattr(os, "open", real_open)
        monkeypatch.setattr(os, "write", real_write)


@contextlib.contextmanager
def read_only_folder(path: Path, how: str, monkeypatch):
    """A folder nothing can be created in: a read-only tmpfs, or EROFS from the os layer below it."""
    if how == "tmpfs":
        with tmpfs(path, read_only=True) as folder:
            yield folder
        return
    path.mkdir(parents=True, exist_ok=True)
    folder = path.resolve()
    real_open, real_mkdir, real_access = os.open, os.mkdir, os.access
    writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def erofs(target):
        return OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(target))

    def fake_open(file, flags, *args, **kwargs):
        if flags & writing and _below(folder, file):
            raise erofs(file)
        return real_open(file, flags, *args, **kwargs)

    def fake_mkdir(target, *args, **kwargs):
        if _below(folder, target) and not os.path.isdir(target):
            raise erofs(target)
        return real_mkdir(target, *args, **kwargs)

    def fake_access(target, mode, *args, **kwargs):
        if mode & os.W_OK and _below(folder, target):
            return False
        return real_access(target, mode, *args, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "access", fake_access)
    try:
        yield path
    finally:
        monkeypatch.setattr(os, "open", real_open)
        monkeypatch.setattr(os, "mkdir", real_mkdir)
        monkeypatch.setattr(os, "access", real_access)
