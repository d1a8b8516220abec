"""A real service: the unit ``aaclip-runtime --systemd-unit`` prints passes ``systemd-analyze verify``, and a real
``aaclip-runtime`` process tells systemd's side of the notify socket READY=1 (after every camera's first frame),
WATCHDOG=1 from its loop, and STOPPING=1."""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aaclip.runtime
import cv2
import pytest
from aaclip.runtime.cli import main
from aaclip.runtime.decide import NORMAL, Decision
from aaclip.runtime.systemd import SystemdNotifier
from click.testing import CliRunner
from runtime_fixtures import frame_image, make_onnx_artifact

STATION = """\
[station]
name = "press 7"

[runtime]
stats_every = 0
loop = true
drop = false

[artifacts.plates]
path = "plates.onnx"

[[cameras]]
name = "a"
source = "a"

[[cameras]]
name = "b"
source = "b"
"""


def station(tmp_path: Path) -> Path:
    make_onnx_artifact(tmp_path, "plates.onnx")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        for i in range(4):
            cv2.imwrite(str(tmp_path / name / f"{i}.png"), frame_image(i == 2, (48, 64), seed=i))
    path = tmp_path / "station.toml"
    path.write_text(STATION)
    return path


def analyze(unit: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze not installed (apt-get install systemd; .ci/run installs it)")
def test_unit_verifies(tmp_path):
    path = station(tmp_path)
    r = CliRunner().invoke(main, ["--config", str(path), "--systemd-unit"])
    assert r.exit_code == 0, r.output
    unit = r.stdout
    for line in ("Type=notify", "NotifyAccess=main", "WatchdogSec=30", "Restart=on-failure",
                 "ExecReload=/bin/kill -HUP $MAINPID", "Description=aaclip-edge station press 7",
                 f"WorkingDirectory={tmp_path}", "WantedBy=multi-user.target"):
        assert f"\n{line}\n" in unit, line
    exec_start = next(x for x in unit.splitlines() if x.startswith("ExecStart="))
    assert exec_start.endswith(f" --config {path}") and Path(exec_start.split()[0][len("ExecStart="):]).is_file()
    file = tmp_path / "aaclip-station.service"
    file.write_text(unit)
    result = analyze(file)
    assert result.returncode == 0 and result.stdout + result.stderr == "", result.stderr
    # the check can fail: a misspelt key and a missing program are caught
    file.write_text(unit.replace("Type=notify", "Type=notifyy"))
    assert "Failed to parse service type" in analyze(file).stderr
    file.write_text(unit.replace(exec_start, "ExecStart=/nonexistent/aaclip-runtime"))
    assert analyze(file).returncode != 0


def test_unit_needs_a_station_file(tmp_path):
    r = CliRunner().invoke(main, [str(make_onnx_artifact(tmp_path)), "--camera", "0", "--systemd-unit"])
    assert r.exit_code == 2 and "--systemd-unit runs a station file: give --config" in r.stderr


class NotifySocket:
    """systemd's side: a unix datagram socket collecting what the service sends."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="sd", dir="/tmp")  # short: unix socket paths are limited to 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._receive, daemon=True)
        self.thread.start()

    def _receive(self):
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except socket.timeout:
                continue
            except OSError:
                return

    def count(self, text: str) -> int:
        return sum(text in m.split("\n") for m in list(self.messages))

    def close(self):
        self._stop.set()
        self.thread.join(5)
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_ready_and_watchdog_arrive_from_a_real_process(tmp_path):
    path = station(tmp_path)
    notify = NotifySocket()
    root = Path(aaclip.runtime.__file__).parents[2]
    env = {**os.environ, "NOTIFY_SOCKET": notify.path, "WATCHDOG_USEC": "300000",
           "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    env.pop("WATCHDOG_PID", None)
    proc = subprocess.Popen([sys.executable, "-m", "aaclip.runtime.cli", "--config", str(path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (notify.count("READY=1") and notify.count("WATCHDOG=1") >= 3):
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not notify.count("STOPPING=1"):
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
        notify.close()
    assert proc.returncode == 0, err
    messages = notify.messages
    ready = next(i for i, m in enumerate(messages) if "READY=1" in m.split("\n"))
    assert messages[0].startswith("STATUS=waiting for the first frame of 2 camera(s)\nMAINPID=")
    assert messages[ready] == "READY=1\nSTATUS=inspecting a, b" and notify.count("READY=1") == 1
    assert sum(m == "WATCHDOG=1" for m in messages[ready:]) >= 2  # pings go on while the loop runs
    assert messages[-1] == "STOPPING=1"


def _decision(source_index: int) -> Decision:
    return Decision(source="a", source_index=source_index, frame=0, class_name="c", score=0.1, state=NORMAL,
                    onset=False, map_max=0.1, cls_score=0.1, threshold=0.5, wall_time=0.0, latency_s=0.0)


def test_ready_only_after_every_camera_and_pings_follow_the_loops_turns():
    notify = NotifySocket()
    clock = [100.0]
    try:
        n = SystemdNotifier(notify.path, watchdog_s=10.0, clock=lambda: clock[0])

        class Context:
            source_names = ("a", "b", "c")

        n.start(Context())
        for i in (0, 2, 0, 2):
            n.emit(_decision(i), None)
        assert not n.ready
        n.emit(_decision(1), None)
        assert n.ready
        for dt in (1.0, 4.0, 0.5, 0.5, 5.0, 1.0):  # turns of the loop at these clock steps: pings every 5 s
            clock[0] += dt
            n.tick(0.0)
        n.close()
    finally:
        notify.close()
    assert [m.split("\n")[0] for m in n.sent] == ["STATUS=waiting for the first frame of 3 camera(s)", "WATCHDOG=1",
                                                  "READY=1", "WATCHDOG=1", "WATCHDOG=1", "STOPPING=1"]


def test_no_notify_socket_no_notifier(monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert SystemdNotifier.from_environment() is None
    monkeypatch.setenv("NOTIFY_SOCKET", "@aaclip-test")
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")  # another process's watchdog: no pings from us
    n = SystemdNotifier.from_environment()
    assert n.address == "\0aaclip-test" and n.watchdog_s is None
    n.sock.close()
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    n = SystemdNotifier.from_environment()
    assert n.watchdog_s == 30.0
    n.sock.close()
