"""Timing statistics and memory readings shared by every benchmark row.

Latencies are per inference call (one batch). Throughput is ``batch / mean latency``, so
``images_per_s * latency_mean_ms / 1000 == batch`` holds exactly. Peak host memory is the resident set
high-water mark (``VmHWM``), reset before each row through ``/proc/self/clear_refs`` where Linux allows
it (else ``ru_maxrss``, the process-wide peak so far, which only grows).
"""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np

PERCENTILES = (50, 95, 99)


def latency_stats(latencies_s: Sequence[float], batch: int) -> dict[str, float]:
    """Mean/p50/p95/p99 (ms per call), ms per image and images/s of per-call latencies in seconds."""
    if not len(latencies_s):
        raise ValueError("no latencies measured")
    ms = np.asarray(latencies_s, np.float64) * 1e3
    mean = float(ms.mean())
    p50, p95, p99 = (float(v) for v in np.percentile(ms, PERCENTILES))
    return {
        "latency_mean_ms": mean, "latency_p50_ms": p50, "latency_p95_ms": p95, "latency_p99_ms": p99,
        "latency_min_ms": float(ms.min()), "latency_max_ms": float(ms.max()),
        "ms_per_image": mean / batch, "images_per_s": 1e3 * batch / mean,
    }


def time_calls(fn: Callable[[], object], reps: int, warmup: int, sync: Optional[Callable[[], None]] = None) -> list[float]:
    """Run ``fn`` ``warmup`` times untimed, then ``reps`` timed times; per-call seconds.

    ``sync`` (e.g. ``torch.cuda.synchronize``) is called before each clock read, so asynchronous
    device work is inside the call that queued it.
    """
    if reps < 1:
        raise ValueError(f"reps must be >= 1, got {reps}")
    for _ in range(max(0, warmup)):
        fn()
    if sync:
        sync()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return times


# ---- host memory ---------------------------------------------------------------------------------
_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> Optional[int]:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def reset_peak_rss() -> bool:
    """Reset the resident-set high-water mark to the current RSS (Linux); False when not possible."""
    try:
        _CLEAR_REFS.write_text("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> tuple[float, str]:
    """(peak resident set in MB, how it was read)."""
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024.0, "VmHWM"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (rss / 1024.0**2 if sys.platform == "darwin" else rss / 1024.0), "ru_maxrss"


class HostMemory:
    """Peak RSS over a block: ``with HostMemory() as m: ...; m.peak_mb``."""

    def __enter__(self) -> "HostMemory":
        self.reset = reset_peak_rss()
        return self

    def __exit__(self, *exc) -> None:
        self.peak_mb, method = peak_rss_mb()
        self.method = method if self.reset or method != "VmHWM" else "VmHWM (not reset: process peak)"


# ---- device memory -------------------------------------------------------------------------------
class DeviceMemory:
    """Peak CUDA memory over a block: PyTorch's allocator peak, or the growth of device-wide used memory.

    ``torch_allocator=True`` (PyTorch rows) reads ``torch.cuda.max_memory_allocated``; other backends
    allocate outside PyTorch, so their figure is used memory (``mem_get_info``) after minus before.
    ``peak_mb`` is None without CUDA.
    """

    def __init__(self, torch_allocator: bool):
        self.torch_allocator = torch_allocator
        self.peak_mb: Optional[float] = None
        self.method: Optional[str] = None
        self._torch = None

    def __enter__(self) -> "DeviceMemory":
        try:
            import torch

            if torch.cuda.is_available():
                self._torch = torch
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                free, total = torch.cuda.mem_get_info()
                self._used0 = total - free
        except Exception:  # noqa: BLE001 - no torch or no usable CUDA: no device memory figure
            self._torch = None
        return self

    def __exit__(self, *exc) -> None:
        torch = self._torch
        if torch is None:
            return
        torch.cuda.synchronize()
        if self.torch_allocator:
            self.peak_mb = torch.cuda.max_memory_allocated() / 2**20
            self.method = "torch.cuda.max_memory_allocated"
        else:
            free, total = torch.cuda.mem_get_info()
            self.peak_mb = max(0.0, (total - free - self._used0) / 2**20)
            self.method = "device used memory growth (mem_get_info)"


__all__ = ["latency_stats", "time_calls", "reset_peak_rss", "peak_rss_mb", "HostMemory", "DeviceMemory", "PERCENTILES"]
