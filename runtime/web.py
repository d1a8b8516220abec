"""``--http [HOST]:PORT``: the live line view, ``/metrics`` and ``/healthz``, served from the runtime process.

A standard-library threaded HTTP server (one thread per connection, daemon threads) reads the
``LineMonitor``'s state; it never calls into the loop. Routes:

- ``/``: the camera's page (``/cam/0``; a list when there are several cameras);
- ``/cam/N``: the live page: the annotated stream, a score chart, counters, the last alarms, the model;
- ``/cam/N/stream.mjpg``: the annotated frames as ``multipart/x-mixed-replace`` (an ``<img>`` shows it,
  no plugin); frames are rendered only while such a stream is open, at most ``--view-fps`` per second;
- ``/cam/N/state.json``: what the page shows, polled by it; ``/cam/N/alarm/SEQ.jpg``: an alarm's thumbnail;
- ``/metrics``: Prometheus text format (``metrics``); ``/healthz``: 200 when every camera delivered a frame
  within ``--health-timeout`` seconds, else 503, with JSON details;
- ``POST /cam/N/review``: an operator's verdict on an alarm or the frame on screen (``--reviews``; the
  logic, the file and who may review are ``reviews``'s).

Access (``HttpAccess``, from the ``[outputs.http]`` section, ``HttpOutput``): every route but an open ``/healthz`` passes
``http_auth.authorize`` first (bearer token and/or users with scrypt-hashed passwords; 401 otherwise);
HTTPS when a certificate and key are given (the TLS handshake runs in the connection's thread, under the
request timeout, so a slow handshake never holds the accepting thread). A bare ``:PORT`` listens on
loopback only; an address beyond it without credentials is refused unless ``allow_anonymous`` (which warns).
Bounded: at most ``max_viewers`` streams at once (more get 503), at most ``max_connections`` connections
(more get 503 and are closed at once), and a client that sends no request or accepts no data for
``timeout`` seconds is dropped; a stream thread only ever holds finished JPEG bytes, never a frame buffer.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import re
import socket
import ssl
import sys
import threading
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import TYPE_CHECKING, Any, Optional

from aaclip.contract.errors import UserError

from . import reviews
from .credentials import ENV_HTTP_TOKEN, read_secret
from .http_auth import HttpAuth, authorize, load_users, parse_users
from .metrics import INSTALL_HINT, open_metrics
from .station.outputs import HttpOutput
from .monitor import LineMonitor

if TYPE_CHECKING:
    from .reviews import ReviewLog

log = logging.getLogger(__name__)

STREAM_SNDBUF = 256 * 1024  # socket send buffer of a stream: bounds what a stalled client leaves queued
STREAM_WAIT_S = 1.0       # how often a stream thread checks that the server still runs
BOUNDARY = "aaclipframe"
_CAM_ROUTE = re.compile(r"^/cam/(\d+)(?:/(stream\.mjpg|state\.json|alarm/(\d+)\.jpg))?/?$")
_REVIEW_ROUTE = re.compile(r"^/cam/(\d+)/review$")

def parse_address(spec: str) -> tuple[str, int]:
    """``:8080`` or ``8080`` (this machine only: 127.0.0.1), ``0.0.0.0:8080`` (every IPv4 interface),
    ``[::]:8080``, ``192.168.1.20:8080`` or ``[::1]:8080`` -> (host, port)."""
    text = spec.strip()
    host, sep, port = text.rpartition(":")
    if not sep:
        host, port = "", text
    host = host.strip("[]") or "127.0.0.1"
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise UserError(f"--http {spec!r}: give [HOST]:PORT, e.g. :8080 (this machine only) or 0.0.0.0:8080 "
                        f"(every interface)")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass
class HttpAccess:
    """Who may connect and how much they may hold (see the module's docstring)."""

    auth: HttpAuth = field(default_factory=HttpAuth)
    tls: Optional[ssl.SSLContext] = None
    healthz_open: bool = True
    max_viewers: int = HttpOutput.max_viewers  # the station file's defaults
    max_connections: int = HttpOutput.max_connections
    timeout: float = HttpOutput.timeout
    allow_anonymous: bool = False

    @classmethod
    def from_options(cls, options: HttpOutput) -> "HttpAccess":
        """Reads the token, the users and the certificate the options name (a UserError when one is unusable)."""
        auth = options.auth
        users = parse_users(auth.users, "[outputs.http.auth] users")
        if auth.users_file is not None:
            users.update(load_users(auth.users_file))
        token = read_secret("HTTP bearer token", auth.token_file, ENV_HTTP_TOKEN)
        if options.max_viewers < 0 or options.max_connections < 1 or not options.timeout > 0:
            raise UserError("--max-viewers must be >= 0, max_connections >= 1 and the HTTP timeout > 0")
        return cls(auth=HttpAuth(token=token, users=users), tls=tls_context(options.tls_cert, options.tls_key),
                   healthz_open=options.healthz_open, max_viewers=options.max_viewers,
                   max_connections=options.max_connections, timeout=options.timeout,
                   allow_anonymous=options.allow_anonymous)


def tls_context(cert, key) -> Optional[ssl.SSLContext]:
    """A server TLS context (TLS 1.2+) from a PEM certificate (chain) and key; None when neither is given."""
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        raise UserError("HTTPS needs both --http-tls-cert and --http-tls-key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(cert), str(key))
    except (OSError, ssl.SSLError) as e:
        raise UserError(f"cannot use the TLS certificate {cert} with key {key}: {getattr(e, 'strerror', None) or e}; "
                        f"give a PEM certificate and its unencrypted PEM private key") from None
    return context


def page_html() -> bytes:
    return resources.files(__package__).joinpath("static", "line.html").read_bytes()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False
    request_queue_size = 64  # listen backlog: a burst of clients is accepted, not met with dropped SYNs (5)

    def __init__(self, address: tuple[str, int], monitor: LineMonitor, access: HttpAccess):
        host = address[0]
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.monitor = monitor
        self.access = access
        self.page = page_html()
        self.connections = 0  # open connections (each has a thread)
        self.viewers = 0      # open streams, all cameras
        self.refused = 0      # connections and streams answered 503 because of the caps
        self.count_lock = threading.Lock()
        super().__init__(address, _Handler)

    def process_request(self, request, client_address) -> None:
        """On the accepting thread: beyond ``max_connections`` the client gets a 503 and is closed at once
        (no thread); otherwise its thread starts."""
        with self.count_lock:
            full = self.connections >= self.access.max_connections
            if full:
                self.refused += 1
            else:
                self.connections += 1
        if not full:
            super().process_request(request, client_address)
            return
        try:
            if self.access.tls is None:  # a TLS client cannot read a clear answer: it is only closed
                request.setblocking(False)
                request.send(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 5\r\nContent-Length: 0\r\n"
                             b"Connection: close\r\n\r\n")
        except OSError:
            pass
        self.shutdown_request(request)

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            with self.count_lock:
                self.connections -= 1

    def finish_request(self, request, client_address) -> None:
        """Serves one connection; with TLS, the handshake happens here, in the connection's own thread."""
        if self.access.tls is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(self.access.timeout)
        try:
            conn = self.access.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as e:
            log.debug("line view: TLS handshake with %s failed: %s", client_address, e)
            return
        try:
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            conn.close()

    def take_viewer(self) -> bool:
        with self.count_lock:
            if self.viewers >= self.access.max_viewers:
                self.refused += 1
                return False
            self.viewers += 1
            return True

    def release_viewer(self) -> None:
        with self.count_lock:
            self.viewers -= 1

    def handle_error(self, request, client_address) -> None:
        """A client that went away mid-request is routine (debug); anything else is logged with its traceback."""
        error = sys.exc_info()[1]
        if isinstance(error, (ConnectionError, TimeoutError, ssl.SSLError)):
            log.debug("line view: client %s went away: %s", client_address, error)
        else:
            log.exception("line view: request from %s failed", client_address)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "aaclip-runtime"

    def setup(self) -> None:
        self.timeout = self.server.access.timeout  # every read and write of this connection (socket timeout)
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        monitor = self.server.monitor
        path = self.path.split("?", 1)[0]
        access = self.server.access
        try:
            if not (path == "/healthz" and access.healthz_open) and not authorize(self, access.auth):
                return
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

    def do_POST(self) -> None:
        match = _REVIEW_ROUTE.match(self.path.split("?", 1)[0])
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 <= length <= reviews.MAX_BODY:
            self.close_connection = True
            self._json({"error": f"a review is a JSON body of at most {reviews.MAX_BODY} bytes"},
                       HTTPStatus.REQUEST_ENTITY_TOO_LARGE if length > 0 else HTTPStatus.BAD_REQUEST)
            return
        body = self.rfile.read(length)
        if match is None:
            self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")
            return
        if (self.headers.get("Content-Type") or "").split(";")[0].strip().lower() != "application/json":
            self._json({"error": "send reviews as Content-Type: application/json"},
                       HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
            return
        auth = self.server.access.auth
        if not authorize(self, auth):  # the page's credentials (401 with the challenge otherwise)
            return
        who = auth.check(self.headers.get("Authorization")) if auth.enabled else None  # cached: no second scrypt
        refusal = reviews.allowed(self.client_address[0], auth.enabled)
        if refusal is not None:
            log.warning("review from %s refused: %s", self.client_address[0], refusal)
            self._json({"error": refusal}, HTTPStatus.FORBIDDEN)
            return
        cam = self.server.monitor.camera(int(match.group(1)))
        if cam is None:
            self._json({"error": "no such camera (or the loop has not started)"}, HTTPStatus.NOT_FOUND)
            return
        status, answer = reviews.handle_review(self.server.monitor, cam, body, who)
        self._json(answer, HTTPStatus(status))

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
            if not self.server.take_viewer():
                self.send_response(HTTPStatus.SERVICE_UNAVAILABLE)
                self.send_header("Retry-After", "5")
                body = f"too many viewers (at most {self.server.access.max_viewers} streams at once)\n".encode()
                self.send_header("Content-Type", "text/plain; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                return
            try:
                self._stream(monitor, cam)
            finally:
                self.server.release_viewer()
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
            # Each part ends with the next part's delimiter, sent at once, and a frame that stays the newest for
            # STREAM_WAIT_S is sent once more: Chromium shows a part only when the next one begins, so without
            # the repeat the last frame of a line that stopped would never be shown (and a "missed defect"
            # flag names the frame on screen).
            self.wfile.write(f"--{BOUNDARY}\r\n".encode("ascii"))
            seq, repeated = -1, True
            while not monitor.closed.is_set():
                jpeg, new_seq = monitor.next_jpeg(cam, seq, STREAM_WAIT_S)
                if jpeg is None or (new_seq == seq and repeated):
                    continue
                repeated = new_seq == seq
                seq = new_seq
                self.wfile.write(f"Content-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n".encode("ascii")
                                 + jpeg + f"\r\n--{BOUNDARY}\r\n".encode("ascii"))
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

    def __init__(self, address: str, view_fps: float = 5.0, view_width: int = 640, health_timeout_s: float = 10.0,
                 access: Optional[HttpAccess] = None, reviews: Optional["ReviewLog"] = None):
        super().__init__(view_fps=view_fps, view_width=view_width, health_timeout_s=health_timeout_s,
                         reviews=reviews)
        self.metrics = open_metrics(self)  # None without prometheus_client: /metrics answers 501
        host, port = parse_address(address)
        access = access or HttpAccess()
        if not is_loopback(host) and not access.auth.enabled:
            if not access.allow_anonymous:
                raise UserError(f"--http {address}: listening beyond this machine without authentication; give "
                                f"--http-token-file or --http-users (see docs/security.md), or --http-allow-anonymous "
                                f"to accept that anyone on the network sees the line")
            log.warning("line view on %s without authentication (--http-allow-anonymous): anyone who can reach "
                        "port %d sees the line, its streams and /metrics", host, port)
        elif not is_loopback(host) and access.tls is None:
            log.warning("line view on %s: credentials and frames travel unencrypted; give --http-tls-cert and "
                        "--http-tls-key for HTTPS", host)
        try:
            self.server = _Server((host, port), self, access)
        except OSError as e:
            raise UserError(f"--http {address}: cannot listen on {host} port {port}: "
                            f"{e.strerror or e}") from None
        self.host, self.port = host, self.server.server_address[1]
        self.access = access
        self._thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="line-view", daemon=True)
        self._thread.start()
        log.info("line view on %s/ (listening on %s; metrics /metrics, health /healthz%s; %s)", self.url,
                 {"0.0.0.0": "every IPv4 interface", "::": "every interface"}.get(host, host),
                 " open" if access.healthz_open else "",
                 f"{access.auth.kinds} required" if access.auth.enabled else "no authentication")

    @classmethod
    def from_options(cls, options: HttpOutput, reviews: Optional["ReviewLog"] = None) -> "LineView":
        if not options.view_fps > 0 or not options.health_timeout > 0:
            raise UserError("--view-fps and --health-timeout must be > 0")
        return cls(options.listen, view_fps=options.view_fps, health_timeout_s=options.health_timeout,
                   access=HttpAccess.from_options(options), reviews=reviews)

    @property
    def url(self) -> str:
        """The address of the server from this machine."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        scheme = "http" if self.access.tls is None else "https"
        return f"{scheme}://[{host}]:{self.port}" if ":" in host else f"{scheme}://{host}:{self.port}"

    def close(self) -> None:
        super().close()  # wakes the stream threads, which then end
        if self._thread.is_alive():
            self.server.shutdown()
            self._thread.join(2.0)
        self.server.server_close()
