"""The station file loader (``aaclip.runtime.station``): every bad file gives one error naming the file, the
line, the key and the fix; ``station_toml`` writes what ``load_station`` reads back unchanged."""
from __future__ import annotations

import os
import re
from pathlib import Path

from dataclasses import dataclass
from typing import Optional

import pytest
from aaclip.runtime.station import ConfigError, StationConfig, load_station, setting, station_toml
from aaclip.runtime.station.lines import TomlLines

GOOD = """\
[station]
name = "line 3"

[runtime]
batch = 2
threshold = 0.4

[artifacts.plates]
path = "plates.onnx"

[artifacts.caps]
path = "caps.onnx"

[[cameras]]
source = "0"
name = "left"
artifact = "plates"
class = "plate"

[[cameras]]
source = "frames"
name = "right"
artifact = "caps"
threshold = 0.3
debounce = 3

[outputs.events]
path = "events.jsonl"
mode = "alarms"

[outputs.evidence]
dir = "evidence"
max_files = 50
"""


def station(tmp_path: Path, text: str = GOOD, name: str = "station.toml") -> Path:
    for artifact in ("plates.onnx", "caps.onnx"):
        (tmp_path / artifact).write_bytes(b"graph")
    (tmp_path / "frames").mkdir(exist_ok=True)
    path = tmp_path / name
    path.write_text(text)
    return path


def error_of(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_station(path)
    return str(info.value)


def test_good_file_fills_every_section(tmp_path):
    c = load_station(station(tmp_path))
    assert c.station.name == "line 3" and c.runtime.batch == 2 and c.runtime.threshold == 0.4
    assert list(c.artifacts) == ["plates", "caps"]
    assert c.artifacts["plates"].path == str(tmp_path / "plates.onnx")  # taken from the file's folder
    left, right = c.cameras
    assert (left.name, left.source, left.class_, left.artifact) == ("left", "0", "plate", "plates")
    assert right.source == str(tmp_path / "frames")  # a relative folder that exists there
    assert (c.camera_threshold(left), c.camera_threshold(right)) == (0.4, 0.3)
    assert (c.camera_debounce(left), c.camera_debounce(right)) == (1, 3)
    assert c.outputs.events.path == tmp_path / "events.jsonl" and c.outputs.events.mode == "alarms"
    assert c.outputs.events.max_bytes == 64 * 1024 * 1024 and c.outputs.events.keep == 4  # bounded by default
    assert c.outputs.evidence.max_files == 50 and c.outputs.evidence.max_age_days == 90.0
    assert c.outputs.http.listen is None and c.outputs.mqtt.url is None


def test_written_toml_reads_back_to_the_same_station(tmp_path):
    first = load_station(station(tmp_path))
    text = station_toml(first)
    copy = tmp_path / "elsewhere" / "copy.toml"
    copy.parent.mkdir()
    copy.write_text(text)
    second = load_station(copy)
    assert second == first  # absolute paths: the copy works from any folder
    assert station_toml(second) == text


def test_written_strings_survive_quotes_backslashes_and_unicode(tmp_path):
    c = load_station(station(tmp_path))
    c.station.name = 'Halle "B" \\ Linie 4 – Prüfung\ttab\x7f'
    c.cameras[0].source = "v4l2src device=/dev/video0 ! videoconvert ! appsink"
    path = tmp_path / "w.toml"
    path.write_text(station_toml(c))
    back = load_station(path)
    assert back.station.name == c.station.name and back.cameras[0].source == c.cameras[0].source


@pytest.mark.parametrize("edit, key, fix", [
    (("threshold = 0.3", "threshhold = 0.3"), "key 'threshhold' of camera #2", "did you mean 'threshold'?"),
    (("batch = 2", 'batch = "2"'), "key 'batch' of [runtime]", "write e.g. batch = 1"),
    (("batch = 2", "batch = 0"), "key 'batch' of [runtime]", "write a value >= 1"),
    (('mode = "alarms"', 'mode = "all"'), "key 'mode' of [outputs.events]", "write one of 'decisions', 'alarms'"),
    (('name = "right"', 'name = "left"'), "key 'name' of camera #2", "give each camera its own name"),
    (('artifact = "caps"', 'artifact = "cap"'), "key 'artifact' of camera #2", "use one of plates, caps"),
    (('path = "caps.onnx"', 'path = "missing.onnx"'), "key 'path' of [artifacts.caps]", "correct the path"),
    (("max_files = 50", "max_file = 50"), "key 'max_file' of [outputs.evidence]", "did you mean 'max_files'?"),
    (("[outputs.events]", "[output.events]"), "key 'output' of the top level", "did you mean [outputs]?"),
    (("threshold = 0.3", "threshold = nan"), "key 'threshold' of camera #2", "not a finite number"),
])
def test_each_mistake_names_file_line_key_and_fix(tmp_path, edit, key, fix):
    old, new = edit
    assert GOOD.count(old) == 1
    text = GOOD.replace(old, new)
    lines = text.splitlines()
    line = len(lines) - lines[::-1].index(new)  # the edited line (the last one: a duplicate name is the second)
    path = station(tmp_path, text)
    message = error_of(path)
    assert message.startswith(f"{path} line {line}: {key}: "), message
    assert fix in message and "\n" not in message


def test_camera_without_artifact_among_several_points_at_its_header(tmp_path):
    path = station(tmp_path, GOOD.replace('artifact = "plates"\n', ""))
    assert error_of(path).startswith(f"{path} line 14: camera #1: this camera names no artifact")


def test_missing_required_key_points_at_the_section(tmp_path):
    path = station(tmp_path, GOOD.replace('source = "0"\n', ""))
    assert error_of(path) == (f"{path} line 14: camera #1: key 'source' is missing; add source = \"text\"")


def test_invalid_toml_names_the_line(tmp_path):
    path = station(tmp_path, GOOD.replace("batch = 2", "batch = 2 2"))
    assert re.match(rf"{re.escape(str(path))} line 5: not valid TOML \(.+\); fix the syntax", error_of(path))


def test_missing_unreadable_and_folder_files(tmp_path):
    assert error_of(tmp_path / "nope.toml").startswith(f"{tmp_path / 'nope.toml'}: station file not found; ")
    assert "is a folder" in error_of(tmp_path)
    station(tmp_path)
    blocked = tmp_path / "plates.onnx" / "station.toml"  # a file where a folder should be
    assert error_of(blocked).startswith(f"{blocked}: cannot read the station file (Not a directory); ")
    path = station(tmp_path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: a mode-0 file is still readable")
        assert error_of(path) == (f"{path}: cannot read the station file (Permission denied); check its "
                                  "permissions (the service's user must be able to read it)")
    finally:
        path.chmod(0o644)
    path.write_bytes(b'[station]\nname = "\xff"\n')
    assert error_of(path) == f"{path} line 2: not UTF-8 text; save the station file as UTF-8"


def test_no_camera_and_no_artifact(tmp_path):
    path = station(tmp_path, '[station]\nname = "x"\n')
    assert "no artifact" in error_of(path)
    path = station(tmp_path, '[artifacts.a]\npath = "plates.onnx"\n')
    assert "no camera" in error_of(path) and "[[cameras]]" in error_of(path)


def test_lines_of_dotted_inline_and_multiline_keys():
    text = ('# comment = 1\n[runtime]\ncache_dir = """\nbatch = 9\n"""\nbatch = 2\n'
            '[artifacts]\nplates = { path = "p.onnx" }\ncaps.path = "c.onnx"\n[[cameras]]\nsource = "0"\n'
            '[[cameras]]\nsource = "1"\n')
    lines = TomlLines(text)
    assert lines.line_of(("runtime",), "batch") == 6  # not line 4, inside the multi-line string
    assert lines.line_of(("artifacts", "plates"), "path") == 8  # inline table: its key's line
    assert lines.line_of(("artifacts", "caps"), "path") == 9
    assert lines.line_of(("cameras", 1), "source") == 13 and lines.line_of(("cameras", 1)) == 12


def test_station_config_defaults_are_a_valid_empty_station():
    assert StationConfig() == StationConfig() and StationConfig().runtime.debounce == 1


def test_state_dir_is_where_relative_outputs_go(tmp_path):
    c = load_station(station(tmp_path, GOOD.replace('name = "line 3"', 'name = "line 3"\nstate_dir = "/var/lib/x"')))
    assert c.outputs.events.path == Path("/var/lib/x/events.jsonl") and c.outputs.evidence.dir == Path("/var/lib/x/evidence")
    assert c.artifacts["plates"].path == str(tmp_path / "plates.onnx")  # inputs stay beside the file


@dataclass
class _Auth:
    users: list[str] = setting(default_factory=list, doc="user names")
    token_file: Optional[Path] = setting(None, "a file holding the token")


@dataclass
class _Web:
    listen: Optional[str] = setting(None, "[HOST]:PORT")
    ports: tuple[int, ...] = setting((), "more ports")
    auth: _Auth = setting(default_factory=_Auth)


def test_array_and_nested_table_settings_a_new_section_can_use(tmp_path):
    """What a section added later may declare (a list of strings, a nested table): read, checked, written."""
    from aaclip.runtime.station.load import _Reader, tomllib
    from aaclip.runtime.station.write import _section

    text = '[web]\nlisten = ":8080"\nports = [1, 2]\n[web.auth]\nusers = ["ana", "bo"]\ntoken_file = "t"\n'
    reader = _Reader(tmp_path / "s.toml", TomlLines(text))
    web = reader.section(_Web, tomllib.loads(text)["web"], ("web",))
    assert web == _Web(":8080", (1, 2), _Auth(["ana", "bo"], tmp_path / "t"))
    bad = text.replace('["ana", "bo"]', '["ana", 3]')
    with pytest.raises(ConfigError, match=r"s.toml line 5: key 'users' of \[web.auth\]: expected a string"):
        _Reader(tmp_path / "s.toml", TomlLines(bad)).section(_Web, tomllib.loads(bad)["web"], ("web",))
    out: list[str] = []
    _section("[web]", web, out)
    written = "\n".join(out)
    assert "\n[web.auth]\nusers = [\"ana\", \"bo\"]  # user names\n" in written
    again = reader.section(_Web, tomllib.loads(written)["web"], ("web",))
    assert again == web
