"""docs/deploy-station.md stays true: its key tables list every key of the station file with its default, and
the example station in it loads."""
from __future__ import annotations

import re
from dataclasses import MISSING, is_dataclass
from pathlib import Path

from aaclip.runtime.station import ArtifactSection, CameraSection, StationConfig, station_from_dict
from aaclip.runtime.station.fields import toml_key
from aaclip.runtime.station.lines import TomlLines
from aaclip.runtime.station.load import tomllib
from aaclip.runtime.station.schema import settings
from aaclip.runtime.station.write import toml_value

DOC = Path(__file__).resolve().parents[1] / "docs" / "deploy-station.md"


def tables() -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    current = None
    for line in DOC.read_text().splitlines():
        m = re.match(r"\| `(\[.+\])` key \| default \| meaning \|", line)
        if m:
            current = out.setdefault(m.group(1), {})
            continue
        row = re.match(r"\| `([a-z_]+)` \| ([^|]+) \|", line)
        if current is not None and row:
            current[row.group(1)] = row.group(2).strip()
        elif not line.startswith("|"):
            current = None
    return out


def expected(cls, instance=None) -> dict[str, str]:
    rows = {}
    for f in settings(cls):
        if f.default is MISSING and f.default_factory is MISSING:
            rows[toml_key(f)] = "required"
            continue
        value = getattr(instance, f.name) if instance is not None else f.default
        if is_dataclass(value):
            continue  # a nested table: its own key table ([outputs.http.auth])
        rows[toml_key(f)] = "unset" if value is None else f"`{toml_value(value)}`"
    return rows


def nested(header: str, instance) -> dict[str, dict[str, str]]:
    """The key tables of ``instance`` and of its nested tables (``[outputs.http]``, ``[outputs.http.auth]``)."""
    out = {header: expected(type(instance), instance)}
    for f in settings(type(instance)):
        value = getattr(instance, f.name)
        if is_dataclass(value):
            out.update(nested(f"{header[:-1]}.{toml_key(f)}]", value))
    return out


def test_every_key_is_documented_with_its_default():
    docs = tables()
    c = StationConfig()
    want = {"[station]": expected(type(c.station), c.station), "[runtime]": expected(type(c.runtime), c.runtime),
            "[artifacts.NAME]": expected(ArtifactSection), "[[cameras]]": expected(CameraSection)}
    for f in settings(type(c.outputs)):
        want.update(nested(f"[outputs.{f.name}]", getattr(c.outputs, f.name)))
    assert set(docs) == set(want)
    for name, rows in want.items():
        assert docs[name] == rows, name


def test_the_example_station_reads(tmp_path):
    example = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S).group(1)
    config = station_from_dict(tomllib.loads(example), tmp_path / "station.toml", TomlLines(example))
    assert [c.name for c in config.cameras] == ["plates-top", "caps"] and config.outputs.events.mode == "alarms"
    assert config.camera_debounce(config.cameras[0]) == 2 and config.camera_debounce(config.cameras[1]) == 3
