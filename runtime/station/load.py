"""Reading a station file: TOML (``tomllib``; ``tomli`` on Python 3.10) into ``StationConfig``, every
mistake one ``ConfigError`` naming the file, the line, the key and the fix (exit 2 in the command)."""
from __future__ import annotations

import math
import re
import sys
import typing
from dataclasses import MISSING, is_dataclass
from pathlib import Path
from typing import Any, Optional, Union

from aaclip.contract.errors import UserError

from .fields import toml_key
from .lines import TomlLines, describe, dotted
from .schema import ArtifactSection, CameraSection, StationConfig, settings

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class ConfigError(UserError):
    """A station file that cannot be used; the message says where and how to fix it."""


_EXAMPLES = {int: "1", float: "0.5", str: '"text"', bool: "true", Path: '"folder/file"'}
_NAMES = {int: "a whole number", float: "a number", str: "a string (in quotes)", bool: "true or false",
          Path: "a path (a string in quotes)"}


class _Reader:
    """Converts the parsed TOML of one file into sections, failing with the line of the offending key."""

    def __init__(self, origin: Path, lines: TomlLines):
        self.origin = origin
        self.lines = lines
        self.folder = origin.absolute().parent
        self.base = self.folder  # relative output paths: [station] state_dir, else the file's folder

    def fail(self, table: tuple, key: Optional[str], problem: str, fix: str) -> ConfigError:
        line = self.lines.line_of(table, key)
        at = f"{self.origin} line {line}" if line else str(self.origin)
        return ConfigError(f"{at}: {describe(table, key)}: {problem}; {fix}")

    def section(self, cls, value: Any, table: tuple):
        if not isinstance(value, dict):
            raise self.fail(table[:-1], str(table[-1]), f"expected a table, got {_what(value)}",
                            f"write it as a [{dotted(table)}] section with key = value lines")
        by_key = {toml_key(f): f for f in settings(cls)}
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for key, raw in value.items():
            f = by_key.get(key)
            if f is None:
                close = _close_match(key, by_key)
                raise self.fail(table, key, "unknown key",
                                (f"did you mean '{close}'? " if close else "") + f"known keys: {', '.join(by_key)}")
            kwargs[f.name] = self.value(f, hints[f.name], raw, table, key)
        for key, f in by_key.items():
            if f.default is MISSING and f.default_factory is MISSING and f.name not in kwargs:
                raise self.fail(table, None, f"key '{key}' is missing", f"add {key} = {_example(f, hints[f.name])}")
        return cls(**kwargs)

    def value(self, f, hint: Any, raw: Any, table: tuple, key: str) -> Any:
        base = _unoptional(hint)
        if is_dataclass(base):
            return self.section(base, raw, table + (key,))
        converted = self.convert(base, raw, table, key, f)
        check = f.metadata.get("check")
        problem = check(converted) if check else None
        if problem:
            raise self.fail(table, key, f"{_show(raw)} is not allowed", problem)
        return converted

    def convert(self, base, raw: Any, table: tuple, key: str, f) -> Any:
        if typing.get_origin(base) in (list, tuple):  # list[str], tuple[str, ...]: an array of one scalar type
            item = typing.get_args(base)[0]
            if not isinstance(raw, list):
                raise self.fail(table, key, f"expected an array of {_NAMES[item]}, got {_show(raw)} ({_what(raw)})",
                                f"write e.g. {key} = [{_EXAMPLES[item]}]")
            items = [self.convert(item, x, table, key, f) for x in raw]
            return tuple(items) if typing.get_origin(base) is tuple else items
        ok = {bool: isinstance(raw, bool), int: isinstance(raw, int) and not isinstance(raw, bool),
              float: isinstance(raw, (int, float)) and not isinstance(raw, bool),
              str: isinstance(raw, str), Path: isinstance(raw, str)}.get(base)
        if ok is None:
            raise TypeError(f"unsupported setting type {base}")
        if not ok:
            raise self.fail(table, key, f"expected {_NAMES[base]}, got {_show(raw)} ({_what(raw)})",
                            f"write e.g. {key} = {_example(f, base)}")
        if base is float:
            if not math.isfinite(raw):
                raise self.fail(table, key, f"{raw} is not a finite number", f"write e.g. {key} = {_example(f, base)}")
            return float(raw)
        if base is Path:
            if not raw.strip():
                raise self.fail(table, key, "empty path", f"write e.g. {key} = {_example(f, base)} or leave the key out")
            path = Path(raw).expanduser()
            return path if path.is_absolute() else self.base / path
        return raw


def _unoptional(hint: Any) -> Any:
    if typing.get_origin(hint) is Union:
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return args[0]
    return hint


def _example(f, hint: Any) -> str:
    default = f.default if f.default is not MISSING else None
    if isinstance(default, bool):
        return "true" if default else "false"
    if isinstance(default, (int, float)):
        return repr(default)
    if isinstance(default, str):
        return f'"{default}"'
    return _EXAMPLES.get(_unoptional(hint), '"..."')


def _show(raw: Any) -> str:
    text = f'"{raw}"' if isinstance(raw, str) else repr(raw).replace("True", "true").replace("False", "false")
    return text if len(text) <= 60 else text[:57] + "..."


def _what(raw: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "an array",
            dict: "a table"}.get(type(raw), type(raw).__name__)


def _close_match(key: str, known) -> Optional[str]:
    import difflib

    found = difflib.get_close_matches(key, list(known), n=1, cutoff=0.75)
    return found[0] if found else None


def read_station_text(path: Path) -> str:
    """The file's text; a ConfigError for a missing, unreadable or non-UTF-8 file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{path}: station file not found; check the --config path (aaclip-runtime ... "
                          f"--print-config > {path.name} writes one from a command line)") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a station file; give the .toml file to --config") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the station file ({exc.strerror or exc}); check its "
                          "permissions (the service's user must be able to read it)") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path} line {line}: not UTF-8 text; save the station file as UTF-8") from None


_AT_LINE = re.compile(r"\s*\(at line (\d+), column (\d+)\)")


def load_station(path: Union[str, Path], check: bool = True) -> StationConfig:
    """Read a station file; relative paths are taken from its folder. ``check``: also what single keys cannot
    tell (``check_station``; off when the command line adds the artifact or cameras, checked after)."""
    path = Path(path)
    text = read_station_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        m = _AT_LINE.search(message)
        at = f"{path} line {m.group(1)}" if m else str(path)
        problem = _AT_LINE.sub("", message)
        raise ConfigError(f"{at}: not valid TOML ({problem}); fix the syntax: key = value, strings in quotes, "
                          "[section] headers") from None
    config = station_from_dict(data, path, TomlLines(text))
    if check:
        check_station(config)
    return config


def station_from_dict(data: dict, origin: Path, lines: TomlLines) -> StationConfig:
    """The sections of parsed TOML (types and allowed values checked; cross-references by ``check_station``)."""
    reader = _Reader(origin, lines)
    by_key = {toml_key(f): f for f in settings(StationConfig)}
    for key in data:
        if key not in by_key:
            close = _close_match(key, by_key)
            raise reader.fail((), key, "unknown section", (f"did you mean [{close}]? " if close else "")
                              + f"known sections: {', '.join(by_key)}")
    config = StationConfig(origin=origin, lines=lines)
    if "station" in data:
        config.station = reader.section(type(config.station), data["station"], ("station",))
        if config.station.state_dir is not None:
            reader.base = config.station.state_dir
    if "runtime" in data:
        config.runtime = reader.section(type(config.runtime), data["runtime"], ("runtime",))
    artifacts = data.get("artifacts", {})
    if not isinstance(artifacts, dict):
        raise reader.fail((), "artifacts", f"expected tables, got {_what(artifacts)}",
                          'write [artifacts.NAME] sections with path = "model.onnx"')
    for name, table in artifacts.items():
        artifact = reader.section(ArtifactSection, table, ("artifacts", name))
        if "://" not in artifact.path and not Path(artifact.path).expanduser().is_absolute():
            artifact.path = str(reader.folder / artifact.path)
        config.artifacts[name] = artifact
    cameras = data.get("cameras", [])
    if not isinstance(cameras, list):
        raise reader.fail((), "cameras", f"expected [[cameras]] tables, got {_what(cameras)}",
                          "write one [[cameras]] section per camera")
    for i, table in enumerate(cameras):
        camera = reader.section(CameraSection, table, ("cameras", i))
        camera.source = resolve_source(camera.source, reader.folder)
        config.cameras.append(camera)
    if "outputs" in data:
        config.outputs = reader.section(type(config.outputs), data["outputs"], ("outputs",))
    return config


def resolve_source(source: str, folder: Path) -> str:
    """A relative file or folder source is taken from ``folder`` when it is there (devices, URLs and pipelines
    are kept as they are)."""
    if "://" in source or "!" in source or source.isdigit() or Path(source).is_absolute():
        return source
    candidate = folder / source
    return str(candidate) if candidate.exists() else source


def check_station(config: StationConfig) -> None:
    """What single keys cannot tell: at least one artifact and one camera, each camera's artifact declared,
    artifact files present, camera names unique."""
    def fail(table: tuple, key: Optional[str], problem: str, fix: str) -> ConfigError:
        if config.origin is None or config.lines is None:
            return ConfigError(f"{problem}; {fix}")
        return _Reader(config.origin, config.lines).fail(table, key, problem, fix)

    if not config.artifacts:
        raise fail((), None, "no artifact", 'add [artifacts.NAME] with path = "model.onnx" (or give ARTIFACT)')
    if not config.cameras:
        raise fail((), None, "no camera", 'add a [[cameras]] section with source = "0" (or give --camera)')
    for name, artifact in config.artifacts.items():  # (a command line's ARTIFACT: open_artifact says it)
        if config.lines is not None and "://" not in artifact.path and not Path(artifact.path).expanduser().is_file():
            raise fail(("artifacts", name), "path", f"artifact {artifact.path} not found",
                       "correct the path, or export the model there (aaclip-export ... --out PATH)")
    seen: dict[str, int] = {}
    for i, camera in enumerate(config.cameras):
        if camera.artifact is not None and camera.artifact not in config.artifacts:
            raise fail(("cameras", i), "artifact", f"no artifact named '{camera.artifact}'",
                       f"use one of {', '.join(config.artifacts)} or add [artifacts.{camera.artifact}]")
        if camera.artifact is None and len(config.artifacts) > 1:
            raise fail(("cameras", i), None, "this camera names no artifact and there are several",
                       f"add artifact = one of {', '.join(repr(a) for a in config.artifacts)}")
        if camera.name is not None:
            if camera.name in seen:
                raise fail(("cameras", i), "name", f"camera name '{camera.name}' is also camera #{seen[camera.name] + 1}'s",
                           "give each camera its own name")
            seen[camera.name] = i
