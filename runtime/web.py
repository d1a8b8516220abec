"""``--http [HOST]:PORT``: the live line view, ``/metrics`` and ``/healthz``, served from the runtime process.

A standard-library threaded HTTP server (one thread per connection, daemon threads) reads the
``LineMonitor``'s state; it never calls into the loop. Routes:

- ``/``: the camera's page (``/cam/0``; a list when there are several cameras);
- ``/cam/N``: the live page: the annotated stream, a score chart, counters, the last alarms, the model;
- ``/cam/N/stream.mjpg``: the annotated frames as ``multipart/x-mixed-replace`` (an ``<img>`` shows it,
  no plugin); frames are rendered only while such a stream is open, at most ``--view-fps`` per second;
- ``/cam/N/state.json``: what the page shows, polled by it; ``/cam/N/alarm/SEQ.jpg``: an alarm's thumbnail;
- ``/metrics``: Prometheus text format (``metrics``); ``/healthz``: 200 when every camera delivered a frame
  within ``--health-timeout`` seconds, else 503, with JSON details.

A stalled client is dropped after ``CLIENT_TIMEOUT_S`` (socket timeout); it only ever held finished JPEG
bytes, never a frame buffer. There is no authentication: bind to a trusted network (``127.0.0.1:8080``).
"""
from __future__ import annotations

import json
import logging
import re
import socket
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any, Optional

from aaclip.contract.errors import UserError

from .metrics import INSTALL_HINT, open_metrics
from .monitor import LineMonitor

log = logging.getLogger(__name__)

CLIENT_TIMEOUT_S = 10.0   # a client that accepts no data for this long is dropped
STREAM_SNDBUF = 256 * 1024  # socket send buffer of a stream: bounds what a stalled client leaves queued
STREAM_WAIT_S = 1.0       # how often a stream thread checks that the server still runs
BOUNDARY = "aaclipframe"
_CAM_ROUTE = re.compile(r"^/cam/(\d+)(?:/(stream\.mjpg|state\.json|alarm/(\d+)\.jpg))?/?$")


def parse_address(spec: str) -> tuple[str, int]:
    """``:8080`` (all interfaces), ``8080``, ``127.0.0.1:8080`` or ``[::1]:8080`` -> (host, port)."""
    text = spec.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]")
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"--http {spec!r}: give [HOST]:PORT, e.g. :8080 (all interfaces) or 127.0.0.1:8080")
    return host, int(port)


def page_html() -> bytes:
    return resources.files(__package__).joinpath("static", "line.html").read_bytes()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], monitor: LineMonitor):
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.monitor = monitor
        self.page = page_html()
        super().__init__(address, _Handler)

    def handle_error(self, request, client_address) -> None:
        """A client that went away mid-request is routine (debug); anything else is logged with its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError)):
            log.debug("line view: client %s went away: %s", client_address, error)
        else:
            log.exception("line view: request from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = CLIENT_TIMEOUT_S
    protocol_version = "HTTP/1.1"
    server_version = "aaclip-runtime"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        monitor = self.server.monitor
        path = self.path.split("?", 1)[0]
        try:
            if path == "/":
                self._root(monitor)
            elif path == "/healthz":
                health = monitor.health()
                self._json(health, HTTPStatus.OK if health["healthy"] else HTTPStatus.SERVICE_UNAVAILABLE)
            elif path == "/metrics":
                self._metrics(monitor)
            elif match := _CAM_ROUTE.match(path):
                self._camera(monitor, int(match.group(1)), match.group(2), match.group(3))
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True

    # ---- routes --------------------------------------------------------------------------------------
    def _root(self, monitor: LineMonitor) -> None:
        if len(monitor.cameras) == 1 or not monitor.started.is_set():
            self.send_response(HTTPStatus.FOUND)
            self.send_header("Location", "/cam/0")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        links = "".join(f'<li><a href="/cam/{c.index}">{_escape(c.name)}</a></li>' for c in monitor.cameras)
        body = f"<!doctype html><title>aaclip line view</title><h1>Cameras</h1><ul>{links}</ul>".encode()
        self._send(HTTPStatus.OK, body, "text/html; charset=utf-8")

    def _metrics(self, monitor: LineMonitor) -> None:
        if monitor.metrics is None:
            self._send(HTTPStatus.NOT_IMPLEMENTED, f"prometheus_client is not installed: {INSTALL_HINT}\n".encode(),
                       "text/plain; charset=utf-8")
            return
        self._send(HTTPStatus.OK, monitor.metrics.text(), monitor.metrics.content_type)

    def _camera(self, monitor: LineMonitor, index: int, what: Optional[str], seq: Optional[str]) -> None:
        if what is None:  # the page itself knows its camera from the URL and waits for the loop
            self._send(HTTPStatus.OK, self.server.page, "text/html; charset=utf-8")
            return
        cam = monitor.camera(index)
        if cam is None:
            self._send(HTTPStatus.NOT_FOUND, b"no such camera (or the loop has not started)\n",
                       "text/plain; charset=utf-8")
        elif what == "state.json":
            self._json(monitor.state(cam))
        elif what == "stream.mjpg":
            self._stream(monitor, cam)
        else:
            jpeg = cam.alarm_jpeg(int(seq))
            if jpeg is None:
                self._send(HTTPStatus.NOT_FOUND, b"no such alarm thumbnail\n", "text/plain; charset=utf-8")
            else:
                self._send(HTTPStatus.OK, jpeg, "image/jpeg", cache=True)

    def _stream(self, monitor: LineMonitor, cam) -> None:
        """Sends each new JPEG of ``cam`` until the client goes away or the monitor closes."""
        self.close_connection = True
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, STREAM_SNDBUF)
        monitor.watch(cam, +1)
        try:
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
            self.send_header("Cache-Control", "no-store")
            self.send_header("Connection", "close")
            self.end_headers()
            seq = -1
            while not monitor.closed.is_set():
                jpeg, new_seq = monitor.next_jpeg(cam, seq, STREAM_WAIT_S)
                if jpeg is None or new_seq == seq:
                    continue
                seq = new_seq
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                                 .encode("ascii") + jpeg + b"\r\n")
                self.wfile.flush()
        finally:
            monitor.watch(cam, -1)

    # ---- helpers -------------------------------------------------------------------------------------
    def _json(self, data: Any, status: HTTPStatus = HTTPStatus.OK) -> None:
        body = json.dumps(data, separators=(",", ":"), allow_nan=False).encode()
        self._send(status, body, "application/json")

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.end_headers()
        self.wfile.write(body)


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")


class LineView(LineMonitor):
    """The monitor with its HTTP server: listening from construction (a busy port fails before the first
    frame) until ``close``."""

    def __init__(self, address: str, view_fps: float = 5.0, view_width: int = 640, health_timeout_s: float = 10.0):
        super().__init__(view_fps=view_fps, view_width=view_width, health_timeout_s=health_timeout_s)
        self.metrics = open_metrics(self)  # None without prometheus_client: /metrics answers 501
        host, port = parse_address(address)
        try:
            self.server = _Server((host, port), self)
        except OSError as e:
            raise UserError(f"--http {address}: cannot listen on {host or 'all interfaces'} port {port}: "
                            f"{e.strerror or e}") from None
        self.host, self.port = host, self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="line-view", daemon=True)
        self._thread.start()
        log.info("line view on %s/ (listening on %s; metrics /metrics, health /healthz)", self.url,
                 host or "all interfaces")

    @property
    def url(self) -> str:
        """The address of the server from this machine."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://[{host}]:{self.port}" if ":" in host else f"http://{host}:{self.port}"

    def close(self) -> None:
        super().close()  # wakes the stream threads, which then end
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(2.0)
        self.server.server_close()
