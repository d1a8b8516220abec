"""``--print-config``: a ``StationConfig`` as a TOML station file that ``load_station`` reads back to the same
configuration. A small writer of our own: the file holds only strings, numbers, booleans and tables, and
we want each key's meaning as a comment beside it (``tomli_w`` writes no comments)."""
from __future__ import annotations

import json
import re
from dataclasses import is_dataclass
from pathlib import Path
from typing import Any

from .fields import toml_key
from .schema import StationConfig, settings

_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def toml_string(text: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's; DEL is escaped too)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return toml_string(str(value))
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def toml_key_text(key: str) -> str:
    return key if _BARE.match(key) else toml_string(key)


def _section(header: str, section: Any, out: list[str]) -> None:
    """``[header]`` and its keys; a nested dataclass follows as ``[header.key]``."""
    out.append("")
    out.append(header)
    nested = []
    for f in settings(type(section)):
        value = getattr(section, f.name)
        key, doc = toml_key(f), f.metadata.get("doc", "")
        if is_dataclass(value):
            nested.append((key, value))
        elif value is None:
            out.append(f"# {key} = (unset){'  # ' + doc if doc else ''}")
        else:
            out.append(f"{key} = {toml_value(value)}{'  # ' + doc if doc else ''}")
    for key, value in nested:
        _section(f"{header[:-1]}.{toml_key_text(key)}]", value, out)


def station_toml(config: StationConfig) -> str:
    """The whole station as TOML (every section, unset keys as comments)."""
    out = ["# aaclip-runtime station file: aaclip-runtime --config THIS_FILE (written by --print-config).",
           "# Relative paths are taken from this file's folder; command-line flags override these keys."]
    _section("[station]", config.station, out)
    _section("[runtime]", config.runtime, out)
    for name, artifact in config.artifacts.items():
        _section(f"[artifacts.{toml_key_text(name)}]", artifact, out)
    for camera in config.cameras:
        _section("[[cameras]]", camera, out)
    for f in settings(type(config.outputs)):
        _section(f"[outputs.{toml_key_text(toml_key(f))}]", getattr(config.outputs, f.name), out)
    return "\n".join(out) + "\n"
