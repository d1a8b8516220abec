"""Progress of long loops (training epochs, evaluation): steps/s and an ETA from the first step on.

On a terminal a tqdm bar (steps done, steps/s, elapsed and remaining time); otherwise (a log file, a CI
job) log lines at the start, after the first step and then every ``every_s`` seconds, so a run on a large
backbone shows life within seconds either way. ``-q`` (logging above INFO) silences both.
"""
from __future__ import annotations

import logging
import sys
import time
from typing import Iterable, Iterator, Optional, TypeVar

from tqdm import tqdm

T = TypeVar("T")

LOG_EVERY_S = 10.0


def format_seconds(seconds: float) -> str:
    """``42 s``, ``3 min 05 s``, ``1 h 02 min``."""
    s = int(round(max(seconds, 0.0)))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    return f"{s // 3600} h {(s % 3600) // 60:02d} min"


class Progress:
    """Wraps an iterable of ``total`` steps; ``note(**values)`` adds values (e.g. the loss) to the display."""

    def __init__(self, iterable: Iterable[T], total: int, desc: str, log: logging.Logger,
                 every_s: float = LOG_EVERY_S, unit: str = "step", terminal: Optional[bool] = None):
        """``unit``: what one item is (``step``, ``batch``); its plural adds ``s`` or ``es``."""
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.log = log
        self.every_s = every_s
        self.unit = unit
        self.units = unit + ("es" if unit.endswith(("s", "sh", "ch", "x")) else "s")
        quiet = not log.isEnabledFor(logging.INFO)
        self.terminal = sys.stderr.isatty() if terminal is None else terminal
        self.bar = None if quiet or not self.terminal else tqdm(total=total, desc=desc, unit=unit, leave=False)
        self.logging = not quiet and self.bar is None
        self.done = 0
        self.values: dict[str, str] = {}
        self.t0 = time.perf_counter()
        self._last_log = self.t0

    def __iter__(self) -> Iterator[T]:
        if self.logging:
            self.log.info("%s: %d %s", self.desc, self.total, self.unit if self.total == 1 else self.units)
        try:
            for item in self.iterable:
                yield item
                self._advance()
        finally:
            if self.bar is not None:
                self.bar.close()

    def note(self, **values: float) -> None:
        self.values = {k: f"{v:.4f}" if isinstance(v, float) else str(v) for k, v in values.items()}
        if self.bar is not None:
            self.bar.set_postfix(self.values, refresh=False)

    @property
    def rate(self) -> float:
        elapsed = time.perf_counter() - self.t0
        return self.done / elapsed if elapsed > 0 else 0.0

    def line(self) -> str:
        """``desc: 3/10 steps, 0.58 steps/s, ETA 12 s, loss 0.1234``."""
        rate = self.rate
        eta = format_seconds((self.total - self.done) / rate) if rate > 0 else "unknown"
        extra = "".join(f", {k} {v}" for k, v in self.values.items())
        speed = f"{rate:.2f} {self.units}/s" if rate >= 0.1 else f"{1.0 / rate:.1f} s/{self.unit}" if rate > 0 else "-"
        return f"{self.desc}: {self.done}/{self.total} {self.units}, {speed}, ETA {eta}{extra}"

    def _advance(self) -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)
            return
        now = time.perf_counter()
        if self.logging and self.done < self.total and (self.done == 1 or now - self._last_log >= self.every_s):
            self._last_log = now
            self.log.info("%s", self.line())
