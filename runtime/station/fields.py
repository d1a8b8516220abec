"""How a setting is declared: ``setting(default, doc, check=...)`` on a dataclass field, and the small checks
(``one_of``, ``at_least``, ``above``) that say what is allowed and how to fix a wrong value.

The loader (``load``) and the writer (``write``) read these declarations; nothing else about a section
needs to be written down twice.
"""
from __future__ import annotations

import math
from dataclasses import MISSING, field
from typing import Any, Callable, Optional

Check = Callable[[Any], Optional[str]]  # None: allowed; else "what to write instead"


def setting(default: Any = MISSING, doc: str = "", check: Optional[Check] = None, key: Optional[str] = None,
            flag: Optional[str] = None, default_factory: Any = MISSING):
    """A dataclass field that is a key of the station file.

    ``doc``: one line, written as a comment by ``--print-config``; ``check``: refuses bad values with a fix;
    ``key``: the TOML key when it differs from the field name (``class``); ``flag``: the command-line option
    that fills it (shown in errors and docs)."""
    metadata = {"doc": doc, "check": check, "key": key, "flag": flag}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata)
    return field(default=default, metadata=metadata)


def toml_key(f) -> str:
    return f.metadata.get("key") or f.name


def one_of(*choices: str) -> Check:
    def check(value: Any) -> Optional[str]:
        return None if value in choices else f"write one of {', '.join(repr(c) for c in choices)}"
    return check


def at_least(low: float) -> Check:
    def check(value: Any) -> Optional[str]:
        return None if value >= low else f"write a value >= {low:g}"
    return check


def above(low: float) -> Check:
    def check(value: Any) -> Optional[str]:
        return None if value > low and math.isfinite(value) else f"write a value > {low:g}"
    return check
