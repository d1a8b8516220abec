"""Running as a systemd service: the sd_notify protocol (``READY=1`` once every camera delivered its first
frame, ``WATCHDOG=1`` from the camera loop itself, ``STOPPING=1``) and the unit file
``aaclip-runtime --systemd-unit`` prints.

The protocol is a few lines (one datagram per message to the unix socket named by ``$NOTIFY_SOCKET``; ``@``
starts an abstract socket name), written here instead of adding a dependency for them (the ``sdnotify``
package is these lines too, without the watchdog interval). ``$WATCHDOG_USEC`` (set by systemd from
``WatchdogSec=``) gives the interval: the loop pings twice per interval, so a loop stuck in a backend call
or a dead capture thread that stops the loop turning gets the service restarted (``Restart=on-failure``).
"""
from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Optional

from .sinks import LoopContext, Sink

log = logging.getLogger(__name__)

WATCHDOG_SEC = 30


def notify_address(value: str) -> str:
    """The socket address of ``$NOTIFY_SOCKET`` (``@name``: Linux abstract namespace)."""
    return "\0" + value[1:] if value.startswith("@") else value


class SystemdNotifier(Sink):
    """A sink that tells systemd how the loop is: READY=1 after the first frame of every camera, WATCHDOG=1
    every half ``watchdog_s`` from the loop's turns (``tick``), STATUS= lines, STOPPING=1 on close."""

    name = "systemd"

    def __init__(self, address: str, watchdog_s: Optional[float] = None, clock=time.monotonic):
        self.address = notify_address(address)
        self.watchdog_s = watchdog_s
        self.clock = clock
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.ready = False
        self.seen: set[int] = set()
        self.n_cameras = 0
        self.sent: list[str] = []  # the messages sent (for the log and the tests)
        self._next_ping = 0.0
        self._names: tuple[str, ...] = ()

    @classmethod
    def from_environment(cls) -> Optional["SystemdNotifier"]:
        """A notifier when systemd started us with ``Type=notify`` (``$NOTIFY_SOCKET``), else None."""
        address = os.environ.get("NOTIFY_SOCKET")
        if not address:
            return None
        watchdog_s = None
        usec, pid = os.environ.get("WATCHDOG_USEC"), os.environ.get("WATCHDOG_PID")
        if usec and usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            watchdog_s = int(usec) / 1e6
        return cls(address, watchdog_s)

    def send(self, message: str) -> bool:
        try:
            self.sock.sendto(message.encode("utf-8"), self.address)
        except OSError as exc:
            self.failed(f"systemd notification {message.splitlines()[0]!r} not sent to {self.address!r}", exc)
            return False
        self.sent.append(message)
        return True

    def start(self, context: LoopContext) -> None:
        self.n_cameras = len(context.source_names)
        self._names = context.source_names
        self.send(f"STATUS=waiting for the first frame of {self.n_cameras} camera(s)\nMAINPID={os.getpid()}")
        self.tick(0.0)

    def emit(self, decision, view) -> None:
        if self.ready:
            return
        self.seen.add(decision.source_index)
        if len(self.seen) == self.n_cameras:
            self.ready = True
            self.send(f"READY=1\nSTATUS=inspecting {', '.join(self._names)}")
            log.info("systemd: ready (every camera delivered a frame)")

    def tick(self, now: float) -> None:
        if self.watchdog_s is None:
            return
        t = self.clock()
        if t >= self._next_ping:
            self._next_ping = t + self.watchdog_s / 2
            self.send("WATCHDOG=1")

    def close(self) -> None:
        if self.sock.fileno() >= 0:
            self.send("STOPPING=1")
            self.sock.close()


def runtime_command() -> list[str]:
    """How the unit starts aaclip-runtime: the console script of this environment, else ``python -m``."""
    script = Path(sys.executable).with_name("aaclip-runtime")
    if script.is_file():
        return [str(script)]
    found = shutil.which("aaclip-runtime")
    return [found] if found else [sys.executable, "-m", "aaclip.runtime.cli"]


def unit_text(config: Path, station_name: str, user: Optional[str] = None,
              watchdog_s: int = WATCHDOG_SEC) -> str:
    """A systemd unit running ``aaclip-runtime --config CONFIG`` (Type=notify, watchdog, restart on failure,
    SIGHUP reload)."""
    config = Path(config).absolute()
    command = " ".join(_quote(a) for a in runtime_command() + ["--config", str(config)])
    lines = [
        "# aaclip-edge station (written by aaclip-runtime --systemd-unit). Install: docs/deploy-station.md",
        "[Unit]",
        f"Description=aaclip-edge station {station_name}",
        "Wants=network-online.target",
        "After=network-online.target",
        "StartLimitIntervalSec=600",
        "StartLimitBurst=10",
        "",
        "[Service]",
        "Type=notify",
        "NotifyAccess=main",
        f"ExecStart={command}",
        "ExecReload=/bin/kill -HUP $MAINPID",
        f"WorkingDirectory={config.parent}",
        "Environment=PYTHONUNBUFFERED=1",
        f"WatchdogSec={watchdog_s}",
        "Restart=on-failure",
        "RestartSec=5",
        "TimeoutStartSec=600",
        "TimeoutStopSec=30",
        "KillSignal=SIGTERM",
    ]
    if user:
        lines += [f"User={user}", "SupplementaryGroups=video"]
    lines += ["", "[Install]", "WantedBy=multi-user.target", ""]
    return "\n".join(lines)


def _quote(arg: str) -> str:
    """systemd's ExecStart quoting: double quotes around arguments with spaces, backslash escapes inside."""
    if arg and all(c.isalnum() or c in "/._-+:=@,%" for c in arg):
        return arg.replace("%", "%%")
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'
