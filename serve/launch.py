"""Start ``aaclip-serve`` as a separate process on loopback, wait until its model is ready, stop or kill it.

Standard library only, so the project's own environment (numpy 2) drives a server that runs in PyTriton's
(numpy < 2): the tests and ``aaclip-bench --backends triton`` use it. The server gets its own process group,
so stopping or killing it takes PyTriton's ``tritonserver`` child along.
"""
from __future__ import annotations

import glob
import logging
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

log = logging.getLogger(__name__)

SERVE_PYTHON_ENV = "AACLIP_SERVE_PYTHON"
SERVE_VENV = ".venv-serve"
LOOPBACK = "127.0.0.1"


def serve_python(start: Optional[Path] = None) -> Optional[Path]:
    """The Python of the serve environment: ``$AACLIP_SERVE_PYTHON``, else ``.venv-serve/bin/python`` in the
    working directory or above ``start`` (the repository); None when there is none."""
    env = os.environ.get(SERVE_PYTHON_ENV)
    if env:
        return Path(env) if Path(env).is_file() else None
    roots = [Path.cwd()] + (list(Path(start).resolve().parents) if start else [])
    for root in roots:
        candidate = root / SERVE_VENV / "bin" / "python"
        if candidate.is_file():
            return candidate
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@dataclass
class Ports:
    grpc: int = field(default_factory=free_port)
    http: int = field(default_factory=free_port)
    metrics: int = field(default_factory=free_port)


@dataclass
class ServerProcess:
    """A running ``aaclip-serve`` (see ``start_server``)."""

    process: subprocess.Popen
    ports: Ports
    model: str
    log_path: Path
    workspace: Optional[Path] = None  # PyTriton's workspace, removed once the server is gone

    @property
    def grpc_url(self) -> str:
        return f"grpc://{LOOPBACK}:{self.ports.grpc}/{self.model}"

    @property
    def http_url(self) -> str:
        return f"http://{LOOPBACK}:{self.ports.http}/{self.model}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def ready(self) -> bool:
        url = f"http://{LOOPBACK}:{self.ports.http}/v2/models/{self.model}/ready"
        try:
            with urllib.request.urlopen(url, timeout=1.0) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 90.0) -> "ServerProcess":
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"aaclip-serve exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.ready():
                return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"aaclip-serve was not ready within {timeout_s:.0f} s:\n{self.log_tail()}")

    def _signal_group(self, sig: int) -> None:
        try:
            os.killpg(self.process.pid, sig)  # its own group (start_new_session): PyTriton's tritonserver too
        except ProcessLookupError:
            pass

    def stop(self, timeout_s: float = 30.0) -> int:
        """SIGTERM (aaclip-serve stops PyTriton and its server), then SIGKILL after ``timeout_s``."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("aaclip-serve did not stop within %.0f s; killing it", timeout_s)
        self.kill()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the server and everything it started (a crash, as far as clients can tell), then remove the
        shared-memory blocks PyTriton names after that process (nobody else will)."""
        self._signal_group(signal.SIGKILL)
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            return
        for path in glob.glob(f"/dev/shm/pytrtion{self.process.pid}-*"):  # PyTriton's spelling
            try:
                os.unlink(path)
            except OSError:
                pass
        if self.workspace is not None:
            shutil.rmtree(self.workspace, ignore_errors=True)


def start_server(python: Path, artifact: Path, args: Sequence[str] = (), model: str = "aaclip",
                 ports: Optional[Ports] = None, log_path: Optional[Path] = None) -> ServerProcess:
    """Start ``aaclip-serve ARTIFACT`` with ``python`` (the serve environment's) on loopback; not yet waited for
    (``.wait_ready()``)."""
    ports = ports or Ports()
    log_path = Path(log_path) if log_path else Path(artifact).with_name(f"serve-{ports.grpc}.log")
    # a short path of our own (PyTriton puts unix sockets there: at most 107 bytes), removed after a kill too
    workspace = Path(tempfile.mkdtemp(prefix="aaclip-serve-"))
    cmd = [str(python), "-m", "aaclip.serve.cli", str(artifact), "--model-name", model, "--host", LOOPBACK,
           "--grpc-port", str(ports.grpc), "--http-port", str(ports.http), "--metrics-port", str(ports.metrics),
           "--workspace", str(workspace / "pytriton"), *args]
    with open(log_path, "ab") as out:
        process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   start_new_session=True)
    log.info("started aaclip-serve (pid %d) for %s on gRPC %d / HTTP %d", process.pid, artifact, ports.grpc,
             ports.http)
    return ServerProcess(process, ports, model, log_path, workspace)


__all__ = ["serve_python", "free_port", "Ports", "ServerProcess", "start_server", "SERVE_PYTHON_ENV", "SERVE_VENV"]
