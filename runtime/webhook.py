"""``--webhook URL``: each alarm event POSTed as JSON (the event line) from a worker thread.

The loop only puts the event into a bounded queue (``queue_size``; a full queue drops the event and counts
it). The worker POSTs with a ``timeout_s`` per attempt and retries a failed call (connection error,
timeout, 5xx, 408, 429) after a doubling delay, at most ``attempts`` times in all; an event that
exhausts its attempts, or is refused with another 4xx, counts in ``failures``. On close the worker gets
``drain_s`` seconds to send what is queued; whatever is left counts as failed. Standard library only.

With a shared ``secret`` (``--webhook-secret-file`` or ``$AACLIP_WEBHOOK_SECRET``) each attempt carries
``X-Aaclip-Signature: t=UNIX_SECONDS,v1=HEX`` where HEX is HMAC-SHA256(secret, ``t + "." + body``): Stripe's
scheme. The receiver recomputes it over the raw body, compares in constant time and refuses an old ``t``
(a replayed POST); docs/security.md has the receiver's snippet. Each retry is signed afresh.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import queue
import threading
import time
import urllib.error
import urllib.request
from typing import Optional
from urllib.parse import urlsplit, urlunsplit

from aaclip.contract.errors import UserError

from .capture import Backoff
from .decide import Decision, encode_event
from .sinks import Sink

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({408, 429})
SIGNATURE_HEADER = "X-Aaclip-Signature"
_STOP = object()


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``X-Aaclip-Signature`` value of ``body`` sent at ``timestamp`` (Unix seconds)."""
    mac = hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={mac}"


def display_url(url: str) -> str:
    """``url`` without credentials (for logs)."""
    p = urlsplit(url)
    return urlunsplit(p._replace(netloc=p.hostname + (f":{p.port}" if p.port else ""))) if p.hostname else url


class WebhookSink(Sink):
    """POSTs alarm events to ``url``; see the module's docstring."""

    name = "webhook"
    order = 20  # after the evidence writer: the event carries the evidence path

    def __init__(self, url: str, timeout_s: float = 5.0, attempts: int = 4, backoff: Optional[Backoff] = None,
                 queue_size: int = 100, drain_s: float = 5.0, secret: Optional[str] = None):
        p = urlsplit(url)
        if p.scheme not in ("http", "https") or not p.hostname:
            raise UserError(f"--webhook {url!r}: give an http:// or https:// URL")
        self.url, self.shown = url, display_url(url)
        self._secret = secret
        self.timeout_s, self.attempts, self.drain_s = timeout_s, max(1, attempts), drain_s
        self.backoff = backoff or Backoff(0.5, 5.0)
        self.queue: queue.Queue = queue.Queue(queue_size)
        self.sent = 0
        self.failures = 0
        self._deadline: Optional[float] = None  # set by close: retries stop waiting past it
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self._work, name="webhook", daemon=True)
        self._thread.start()

    # ---- the loop's thread -----------------------------------------------------------------------
    def emit(self, decision: Decision, view) -> None:
        if not decision.onset:
            return
        try:
            self.queue.put_nowait(encode_event(decision.event()).encode())
        except queue.Full:
            self.failures += 1
            log.warning("webhook %s: queue full, alarm of %s frame %d dropped", self.shown, decision.source,
                        decision.frame)

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._deadline = time.monotonic() + self.drain_s
        self._closing.set()
        try:
            self.queue.put(_STOP, timeout=self.drain_s)
        except queue.Full:
            pass
        self._thread.join(max(0.0, self._deadline - time.monotonic()) + self.timeout_s)
        left = sum(1 for item in _drain(self.queue) if item is not _STOP)
        if left:
            self.failures += left
            log.warning("webhook %s: %d alarm(s) not sent at exit", self.shown, left)

    # ---- the worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            body = self.queue.get()
            if body is _STOP:
                return
            if self._deliver(body):
                self.sent += 1
            else:
                self.failures += 1

    def _deliver(self, body: bytes) -> bool:
        """POST ``body``; True once the receiver answered 2xx."""
        delays = self.backoff.delays()
        for attempt in range(1, self.attempts + 1):
            error = self._post(body)
            if error is None:
                return True
            retry, reason = error
            if not retry or attempt == self.attempts:
                log.error("webhook %s: alarm not delivered after %d attempt(s): %s", self.shown, attempt, reason)
                return False
            delay = next(delays)
            if self._deadline is not None and time.monotonic() + delay > self._deadline:
                log.error("webhook %s: alarm not delivered (shutting down): %s", self.shown, reason)
                return False
            log.warning("webhook %s: attempt %d failed (%s); retrying in %.2g s", self.shown, attempt, reason, delay)
            self._closing.wait(delay)  # close cuts the wait short: one last attempt, then the drain deadline
        return False

    def _post(self, body: bytes) -> Optional[tuple[bool, str]]:
        """One attempt: None on success, else (retry?, reason)."""
        headers = {"Content-Type": "application/json", "User-Agent": "aaclip-runtime"}
        if self._secret:
            headers[SIGNATURE_HEADER] = signature(self._secret, body, int(time.time()))
        request = urllib.request.Request(self.url, data=body, method="POST", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                response.read()
            return None
        except urllib.error.HTTPError as e:
            return e.code >= 500 or e.code in RETRY_STATUSES, f"HTTP {e.code} {e.reason}"
        except (urllib.error.URLError, OSError) as e:  # refused, unreachable, timeout
            return True, str(getattr(e, "reason", e))


def _drain(q: queue.Queue):
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return
