"""Secrets of the line outputs (MQTT and OPC UA passwords, the webhook's signing key, the HTTP bearer token):
read from a file or an environment variable, never from the command line, where ``ps`` shows them to every
user of the machine.

``read_secret`` takes the file when one is named (a ``--...-file`` flag or a ``*_file`` key of the station
config; one trailing newline is dropped), else the environment variable, else None. A file that group or
others may read is used with a warning (``chmod 600 FILE``). Every secret read is also registered with the
log filter (``hide_in_logs``): a record whose text would contain it, from this package or from a library
logging at debug level, shows ``***`` instead.
"""
from __future__ import annotations

import logging
import os
import stat
import threading
from pathlib import Path
from typing import Optional, Union
from urllib.parse import urlsplit

from aaclip.contract.errors import UserError

log = logging.getLogger(__name__)

MASK = "***"
MASK_MIN = 6         # shorter secrets are not masked in logs (and are warned about)
SHORT_SECRET = 12    # a secret shorter than this is easy to guess
ENV_MQTT_PASSWORD = "AACLIP_MQTT_PASSWORD"
ENV_WEBHOOK_SECRET = "AACLIP_WEBHOOK_SECRET"
ENV_OPCUA_PASSWORD = "AACLIP_OPCUA_PASSWORD"
ENV_HTTP_TOKEN = "AACLIP_HTTP_TOKEN"


def read_secret(what: str, file: Union[None, str, Path], env: Optional[str]) -> Optional[str]:
    """The secret ``what`` (named in messages) from ``file`` if given, else from ``$env``, else None."""
    if file is not None:
        path = Path(file)
        try:
            mode = path.stat().st_mode
            text = path.read_text(encoding="utf-8")
        except OSError as e:
            raise UserError(f"cannot read the {what} file {path}: {e.strerror or e}") from None
        secret = text[:-1] if text.endswith("\n") else text
        secret = secret[:-1] if secret.endswith("\r") else secret
        if not secret:
            raise UserError(f"the {what} file {path} is empty; write the {what} into it")
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("the %s file %s can be read by other users of this machine; chmod 600 %s", what, path, path)
        return _registered(what, secret, str(path))
    value = os.environ.get(env) if env else None
    return _registered(what, value, f"${env}") if value else None


def _registered(what: str, secret: str, where: str) -> str:
    if len(secret) < SHORT_SECRET:
        log.warning("the %s in %s is short (%d characters): easy to guess%s; use at least %d random characters",
                    what, where, len(secret), "" if len(secret) >= MASK_MIN else ", and not masked in logs",
                    SHORT_SECRET)
    hide_in_logs(secret)
    return secret


def refuse_url_password(option: str, url: Optional[str], fix: str) -> None:
    """A URL given on the command line must not carry a password (``ps`` shows it): a UserError naming ``fix``."""
    if url and urlsplit(url).password is not None:
        raise UserError(f"{option}: the URL contains a password, which every user of this machine can read with ps; "
                        f"remove it from the URL and {fix}")


class _Redactor(logging.Filter):
    """Replaces each registered secret in a record's message (arguments merged in) with ``***``."""

    def __init__(self) -> None:
        super().__init__("aaclip-secrets")
        self.secrets: set[str] = set()
        self._lock = threading.Lock()

    def add(self, secret: str) -> None:
        with self._lock:
            self.secrets.add(secret)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        try:
            text = record.getMessage()
        except Exception:  # a malformed record is the logging module's business, not ours
            return True
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        hidden = text
        exc_text = record.exc_text
        for secret in self.secrets:
            hidden = hidden.replace(secret, MASK)
            if exc_text:
                exc_text = exc_text.replace(secret, MASK)
        if hidden != text:
            record.msg, record.args = hidden, None
        record.exc_text = exc_text
        return True


_REDACTOR = _Redactor()


def hide_in_logs(secret: str) -> None:
    """Register ``secret`` with the filter on the root logger's handlers (installed on first use). A secret
    shorter than ``MASK_MIN`` characters is not masked (it would turn every such letter of every line into
    ``***``); ``read_secret`` warns about short secrets."""
    if len(secret) < MASK_MIN:
        return
    _REDACTOR.add(secret)
    for handler in logging.getLogger().handlers:
        if _REDACTOR not in handler.filters:
            handler.addFilter(_REDACTOR)
