"""How a command waits for a live source's first frame: ``--open-timeout`` and ``--wait-for-source``, shared by
every command that opens a camera (``aaclip-runtime``, ``aaclip-calibrate ... --camera``; docs/cli.md, "Sources
fail fast"), and the hint their exit-2 error ends with."""
from __future__ import annotations

from dataclasses import dataclass

import click
from aaclip.contract.cli import FiniteFloat

from .sources import DEFAULT_OPEN_TIMEOUT_MS

DEFAULT_OPEN_TIMEOUT_S = DEFAULT_OPEN_TIMEOUT_MS / 1000.0
MIN_OPEN_TIMEOUT_S = 0.1
OPEN_HINT = ("--open-timeout sets how long to wait, --wait-for-source keeps waiting for a camera that starts after "
             "this PC")
"""What a ``NoFirstFrame`` error of a command line ends with (the station file names its keys instead)."""


@dataclass(frozen=True)
class FirstFrameWait:
    """``--open-timeout`` (seconds) and ``--wait-for-source``."""

    open_timeout: float = DEFAULT_OPEN_TIMEOUT_S
    wait_for_source: bool = False

    @property
    def open_timeout_ms(self) -> int:
        return int(self.open_timeout * 1000)

    @property
    def read_timeout_ms(self) -> int:
        """Network reads time out after half the open timeout, at least 1 s."""
        return max(self.open_timeout_ms // 2, 1000)


def first_frame_options(f):
    """Add ``--open-timeout`` and ``--wait-for-source`` (parameters ``open_timeout``, ``wait_for_source``)."""
    for option in reversed([
        click.option("--open-timeout", type=FiniteFloat(min=MIN_OPEN_TIMEOUT_S), default=DEFAULT_OPEN_TIMEOUT_S,
                     show_default=True,
                     help="Seconds a camera or stream may take to deliver its first frame at start; none by then: "
                          "exit 2 (network reads time out after half of it, >= 1 s)."),
        click.option("--wait-for-source", is_flag=True,
                     help="Wait for a camera that is not up at start (one that boots after this PC) instead of "
                          "exiting 2 after --open-timeout; it is retried until it delivers."),
    ]):
        f = option(f)
    return f


__all__ = ["DEFAULT_OPEN_TIMEOUT_S", "FirstFrameWait", "OPEN_HINT", "first_frame_options"]
