"""Who may read the line view: the one access decision every HTTP handler of the runtime calls.

Two kinds of credentials, either or both:

- a bearer token (``Authorization: Bearer TOKEN``), for machines: Prometheus' ``authorization``
  (``credentials_file``) scrape setting, scripts, a SCADA's HTTP client;
- users with passwords (``Authorization: Basic ...``), for people: the browser asks once and sends them with
  every request of the page (stream, state, thumbnails). Passwords are stored only as scrypt hashes
  (``hash_password``; ``aaclip-runtime --hash-password`` prints one), never in clear.

``HttpAuth.check`` returns the name of who is let in (``"token"`` or the user) or None; ``authorize(handler,
auth)`` is what a route calls first: it answers 401 with the ``WWW-Authenticate`` challenge and returns False
when the request may not proceed. A verified Basic header is remembered (keyed by an HMAC of the header under
a per-process random key, at most ``CACHE_SIZE`` of them) so that the page's polling does not pay scrypt's
deliberate ~50 ms on every request; a wrong password always pays it.

hashlib's scrypt (OpenSSL) is used rather than a password-hashing package: it is memory-hard, in the standard
library of every Python the runtime supports, and its parameters are stored in the hash, so they can grow
later without invalidating stored hashes.
"""
from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import Mapping, Optional
from urllib.parse import urlsplit

from aaclip.contract.errors import UserError

SCHEME = "scrypt"
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2 ** 14, 8, 1   # OWASP's minimum for scrypt; 16 MiB, ~50 ms per check
SALT_BYTES = 16
HASH_BYTES = 32
CACHE_SIZE = 256
REALM = "aaclip line view"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str, *, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P,
                  salt: Optional[bytes] = None) -> str:
    """``scrypt$N$R$P$SALT$HASH`` (base64): what the station config stores instead of the password."""
    if not password:
        raise UserError("an empty password cannot be hashed; choose one")
    salt = os.urandom(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * r * n + 2 ** 20,
                            dklen=HASH_BYTES)
    return f"{SCHEME}${n}${r}${p}${_b64(salt)}${_b64(digest)}"


def parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    """The parameters, salt and digest of a stored hash; ValueError when it is not one of ours."""
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != SCHEME:
        raise ValueError("not a scrypt$N$R$P$SALT$HASH password hash (make one with aaclip-runtime --hash-password)")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt, digest = base64.b64decode(parts[4], validate=True), base64.b64decode(parts[5], validate=True)
    except (ValueError, binascii.Error):
        raise ValueError("a malformed scrypt password hash (make one with aaclip-runtime --hash-password)") from None
    if n < 2 or n & (n - 1) or r < 1 or p < 1 or not salt or not digest:
        raise ValueError("a scrypt password hash with impossible parameters")
    return n, r, p, salt, digest


def verify_password(password: str, stored: str) -> bool:
    n, r, p, salt, digest = parse_hash(stored)
    candidate = hashlib.scrypt(password.encode("utf-8"), salt=salt, n=n, r=r, p=p, maxmem=2 * 128 * r * n + 2 ** 20,
                               dklen=len(digest))
    return hmac.compare_digest(candidate, digest)


def load_users(path: Path) -> dict[str, str]:
    """A users file: one ``NAME:HASH`` per line (``#`` comments and blank lines ignored)."""
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise UserError(f"cannot read the users file {path}: {e.strerror or e}") from None
    entries = [(f"{path} line {n}", line.strip()) for n, line in enumerate(lines, 1)]
    return _users([(where, line) for where, line in entries if line and not line.startswith("#")], str(path))


def parse_users(entries, where: str) -> dict[str, str]:
    """``NAME:HASH`` strings (the station file's ``users``) -> name -> hash."""
    return _users([(f"{where} entry {i}", e) for i, e in enumerate(entries, 1)], where)


def _users(entries: list[tuple[str, str]], where: str) -> dict[str, str]:
    users: dict[str, str] = {}
    for place, entry in entries:
        name, sep, stored = entry.partition(":")
        if not sep or not name:
            raise UserError(f"{place}: give NAME:HASH (the hash from aaclip-runtime --hash-password)")
        users[name] = stored
    return check_users(users, where)


def check_users(users: Mapping[str, str], where: str) -> dict[str, str]:
    """Validated users (name -> hash); a UserError naming the user whose entry is not a hash."""
    for name, stored in users.items():
        if ":" in name or not name:
            raise UserError(f"{where}: user name {name!r} is empty or contains ':'")
        try:
            parse_hash(stored)
        except ValueError as e:
            raise UserError(f"{where}: user {name}: {e}") from None
    return dict(users)


@dataclass
class HttpAuth:
    """The credentials that open the line view; with neither a token nor users, everyone is let in."""

    token: Optional[str] = None
    users: Mapping[str, str] = field(default_factory=dict)  # name -> scrypt hash

    def __post_init__(self) -> None:
        self._key = os.urandom(32)
        self._verified: OrderedDict[bytes, str] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return bool(self.token) or bool(self.users)

    @property
    def kinds(self) -> str:
        return " and ".join(k for k, on in (("bearer token", self.token), ("user/password", self.users)) if on)

    def challenge(self) -> str:
        """The ``WWW-Authenticate`` value of a 401 (Basic first: a browser then asks for a user and password)."""
        schemes = []
        if self.users:
            schemes.append(f'Basic realm="{REALM}", charset="UTF-8"')
        if self.token:
            schemes.append(f'Bearer realm="{REALM}"')
        return ", ".join(schemes)

    def check(self, authorization: Optional[str]) -> Optional[str]:
        """Who an ``Authorization`` header value proves to be (``"token"`` or a user name), else None.
        Always ``"anonymous"`` when no credentials are configured."""
        if not self.enabled:
            return "anonymous"
        if not authorization:
            return None
        scheme, _, value = authorization.strip().partition(" ")
        scheme, value = scheme.lower(), value.strip()
        if scheme == "bearer" and self.token:
            return "token" if hmac.compare_digest(value.encode("utf-8"), self.token.encode("utf-8")) else None
        if scheme == "basic" and self.users:
            return self._check_basic(value)
        return None

    def _check_basic(self, value: str) -> Optional[str]:
        key = hmac.new(self._key, value.encode("utf-8"), hashlib.sha256).digest()
        with self._lock:
            if key in self._verified:
                self._verified.move_to_end(key)
                return self._verified[key]
        try:
            name, sep, password = base64.b64decode(value, validate=True).decode("utf-8").partition(":")
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None
        stored = self.users.get(name)
        if not sep or stored is None:
            verify_password(password, _dummy_hash())  # the same time as a wrong password: names are not probed
            return None
        if not verify_password(password, stored):
            return None
        with self._lock:
            self._verified[key] = name
            while len(self._verified) > CACHE_SIZE:
                self._verified.popitem(last=False)
        return name


@functools.lru_cache(maxsize=1)
def _dummy_hash() -> str:
    return hash_password(os.urandom(16).hex())


def cross_site(headers) -> bool:
    """True when a browser says the request comes from another site's page (``Origin``, else ``Referer``, names
    another host:port than ``Host``): a form or script elsewhere riding on the browser's saved password."""
    source = headers.get("Origin") or headers.get("Referer")
    if not source or source == "null":
        return source == "null"
    return urlsplit(source).netloc.lower() != (headers.get("Host") or "").lower()


def authorize(handler, auth: Optional[HttpAuth], write: bool = False) -> bool:
    """Call first in any route of a ``BaseHTTPRequestHandler``: ``authorize(self, self.server.access.auth)``.
    True when the request may proceed; otherwise a 401 with the challenge (or, for a ``write`` route such as a
    POST that changes something, a 403 when it comes from another site's page: HTTP Basic credentials are sent
    by the browser whatever page asks) has been sent and the handler must return."""
    if write and cross_site(handler.headers):
        _refuse(handler, HTTPStatus.FORBIDDEN, b"cross-site request refused\n")
        return False
    if auth is None or auth.check(handler.headers.get("Authorization")) is not None:
        return True
    _refuse(handler, HTTPStatus.UNAUTHORIZED, b"authentication required\n", auth.challenge())
    return False


def _refuse(handler, status: HTTPStatus, body: bytes, challenge: Optional[str] = None) -> None:
    handler.send_response(status)
    if challenge:
        handler.send_header("WWW-Authenticate", challenge)
    handler.send_header("Content-Type", "text/plain; charset=utf-8")
    handler.send_header("Content-Length", str(len(body)))
    handler.send_header("Cache-Control", "no-store")
    handler.end_headers()
    handler.wfile.write(body)
