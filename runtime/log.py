"""Logging set-up shared by every command: one format, level from -v/-q, messages to stderr."""
from __future__ import annotations

import logging
import sys


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 0 else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s: %(message)s", "%H:%M:%S"))
    handler.addFilter(_hide_library_chatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


def _hide_library_chatter(record: logging.LogRecord) -> bool:
    """OpenCLIP logs routine INFO messages on the root logger; keep them for -v (DEBUG) runs only."""
    if record.name == "root" and record.levelno < logging.WARNING and "open_clip" in record.pathname:
        return logging.getLogger().level <= logging.DEBUG
    return True


class UserError(Exception):
    """Bad input from the user. Commands print its message as one line and exit with status 2."""
