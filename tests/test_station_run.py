"""``aaclip-runtime --config station.toml``: two cameras with two artifacts in one process, flags that override
the file, ``--print-config`` round trips, SIGHUP reload between two frames without losing one."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aaclip.runtime
import cv2
import pytest
from aaclip.runtime.cli import main
from click.testing import CliRunner
from runtime_fixtures import frame_image, make_onnx_artifact, read_events, write_video

# the darkness graph: a clean frame scores about 0.216, a frame with a black disc about 0.62; class "b" of
# the multi-class artifact adds 0.1 to every map value (0.316 / 0.72)
LEFT_DEFECTS, RIGHT_DEFECTS = (5, 6, 7, 8, 12), (3, 4, 9)


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def two_camera_station(tmp_path: Path, extra: str = "") -> Path:
    make_onnx_artifact(tmp_path, "plates.onnx")
    make_onnx_artifact(tmp_path, "caps.onnx", classes=("a", "b"), class_offsets=(0.0, 0.1))
    write_video(tmp_path / "left.avi", 16, defect_frames=LEFT_DEFECTS)
    write_video(tmp_path / "right.avi", 12, defect_frames=RIGHT_DEFECTS)
    path = tmp_path / "station.toml"
    path.write_text(f"""\
[station]
name = "line 3"

[runtime]
stats_every = 0
debounce = 2

[artifacts.plates]
path = "plates.onnx"

[artifacts.caps]
path = "caps.onnx"

[[cameras]]
name = "left"
source = "left.avi"
artifact = "plates"

[[cameras]]
name = "right"
source = "right.avi"
artifact = "caps"
class = "b"
threshold = 0.7
debounce = 1

[outputs.events]
path = "events.jsonl"
{extra}""")
    return path


def by_camera(events: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for e in events:
        out.setdefault(e["source"], []).append(e)
    return out


def test_two_cameras_two_artifacts_from_one_file(tmp_path):
    station = two_camera_station(tmp_path)
    r = invoke("--config", station, "-q")
    assert r.exit_code == 0, r.output
    assert "summary: 28 frames" in r.stdout
    cams = by_camera(read_events(tmp_path / "events.jsonl"))
    left, right = cams["left"], cams["right"]
    assert [e["frame"] for e in left] == list(range(16)) and [e["frame"] for e in right] == list(range(12))
    assert {(e["class"], e["threshold"]) for e in left} == {("bottle", 0.5)}
    assert {(e["class"], e["threshold"]) for e in right} == {("b", 0.7)}
    # left: debounce 2 from [runtime]: the second frame of each run of defects alarms (frame 12 alone never)
    assert [e["frame"] for e in left if e["alarm"]] == [6, 7, 8]
    assert [e["frame"] for e in left if e["onset"]] == [6]
    # right: its own artifact's class offset (+0.1 on every score), threshold 0.7 and debounce 1
    assert [e["frame"] for e in right if e["alarm"]] == list(RIGHT_DEFECTS)
    assert all(0.31 < e["raw_score"] < 0.33 for e in right if not e["alarm"])
    assert all(0.20 < e["raw_score"] < 0.23 for e in left if not e["anomalous"])


def test_flags_override_the_file(tmp_path):
    station = two_camera_station(tmp_path)
    other = tmp_path / "other.jsonl"
    r = invoke("--config", station, "--threshold", "0.9", "--debounce", "1", "--events", other, "-q")
    assert r.exit_code == 0, r.output
    assert not (tmp_path / "events.jsonl").exists()
    cams = by_camera(read_events(other))
    # --threshold sets [runtime] threshold; the right camera's own key still wins over it
    assert {e["threshold"] for e in cams["left"]} == {0.9} and {e["threshold"] for e in cams["right"]} == {0.7}
    assert not any(e["alarm"] for e in cams["left"])
    printed = invoke("--config", station, "--threshold", "0.9", "--print-config")
    assert printed.exit_code == 0 and "\nthreshold = 0.9  #" in printed.stdout


def test_flags_print_config_config_reproduce_the_same_events(tmp_path):
    art = make_onnx_artifact(tmp_path, "model.onnx", classes=("a", "b"), class_offsets=(0.0, 0.05))
    video = write_video(tmp_path / "v.avi", 10, defect_frames=(2, 3, 4, 8))
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(6):
        cv2.imwrite(str(folder / f"{i:02d}.png"), frame_image(i in (1, 2), seed=i))
    flags = [art, "--camera", video, "--camera", folder, "--class", "a", "--class", "b", "--debounce", "2",
             "--threshold", "0.45", "--batch", "2", "--stats-every", "0"]
    first = invoke(*flags, "--events", tmp_path / "first.jsonl", "-q")
    assert first.exit_code == 0, first.output
    printed = invoke(*flags, "--events", tmp_path / "second.jsonl", "--print-config")
    assert printed.exit_code == 0, printed.output
    os.chdir(tmp_path.parent)  # the file works from any folder: its paths are absolute
    station = tmp_path / "copy" / "station.toml"
    station.parent.mkdir()
    station.write_text(printed.stdout)
    second = invoke("--config", station, "-q")
    assert second.exit_code == 0, second.output

    def comparable(path):
        return [{k: v for k, v in e.items() if k not in ("run", "timestamp", "latency_ms")} for e in read_events(path)]

    a, b = comparable(tmp_path / "first.jsonl"), comparable(tmp_path / "second.jsonl")
    assert len(a) == 16 and sorted(a, key=lambda e: (e["source"], e["frame"])) == sorted(
        b, key=lambda e: (e["source"], e["frame"]))
    # debounce 2: the video alarms on frames 3 and 4 (8 stands alone), the folder on frame 2
    assert sorted((e["source"], e["frame"]) for e in a if e["alarm"]) == [("frames", 2), ("v.avi", 3), ("v.avi", 4)]
    assert {e["class"] for e in a if e["source"] == "frames"} == {"b"}


@pytest.mark.parametrize("edit, message", [
    (("threshold = 0.7", "threshhold = 0.7"), "key 'threshhold' of camera #2: unknown key; did you mean 'threshold'?"),
    (('path = "caps.onnx"', 'path = "gone.onnx"'), "key 'path' of [artifacts.caps]: artifact"),
    (('class = "b"', 'class = "c"'), "key 'class' of camera #2: unknown class 'c' for caps.onnx; available: a, b"),
    (('name = "right"', 'name = "left"'), "key 'name' of camera #2: camera name 'left' is also camera #1's"),
    (("debounce = 2", 'debounce = "two"'), "key 'debounce' of [runtime]: expected a whole number, got \"two\""),
])
def test_bad_station_files_exit_2_with_one_line(tmp_path, edit, message):
    """Unknown key, missing artifact, unknown class, duplicate camera name, wrong type: one line each."""
    station = two_camera_station(tmp_path)
    text = station.read_text()
    assert text.count(edit[0]) == 1
    line = text[: text.index(edit[0])].count("\n") + 1
    station.write_text(text.replace(*edit))
    r = invoke("--config", station)
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {station} line {line}: {message}"), r.stderr


def test_unreadable_station_file_exits_2(tmp_path):
    r = invoke("--config", tmp_path / "none.toml")
    assert r.exit_code == 2 and r.stderr.startswith(f"error: {tmp_path / 'none.toml'}: station file not found")
    r = invoke()
    assert r.exit_code == 2 and "give ARTIFACT" in r.stderr


def _env():
    root = Path(aaclip.runtime.__file__).parents[2]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def _wait(predicate, proc, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    raise AssertionError("timed out")


def test_sighup_reloads_thresholds_debounce_and_outputs_without_losing_a_frame(tmp_path):
    """Two cameras on two artifacts looping over image folders, every frame inspected; SIGHUP changes a
    threshold, a debounce and adds evidence between two frames; a second SIGHUP asks for a new source and is
    refused."""
    make_onnx_artifact(tmp_path, "plates.onnx")
    make_onnx_artifact(tmp_path, "caps.onnx", classes=("cap",))
    for name, defects in (("a", (2, 3, 4)), ("b", (5,))):
        (tmp_path / name).mkdir()
        for i in range(8):
            cv2.imwrite(str(tmp_path / name / f"{i}.png"), frame_image(i in defects, (48, 64), seed=i))
    station = tmp_path / "station.toml"
    text = """\
[runtime]
stats_every = 0
loop = true
drop = false
debounce = 1

[artifacts.plates]
path = "plates.onnx"

[artifacts.caps]
path = "caps.onnx"

[[cameras]]
name = "a"
source = "a"
artifact = "plates"

[[cameras]]
name = "b"
source = "b"
artifact = "caps"
threshold = 0.5

[outputs.events]
path = "events.jsonl"
"""
    station.write_text(text)
    events = tmp_path / "events.jsonl"
    proc = subprocess.Popen([sys.executable, "-m", "aaclip.runtime.cli", "--config", str(station)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        _wait(lambda: events.exists() and events.read_text().count("\n") >= 40, proc)
        station.write_text(text.replace("threshold = 0.5", "threshold = 0.9")
                           .replace("debounce = 1", "debounce = 2")
                           + '\n[outputs.evidence]\ndir = "evidence"\nformat = "png"\n')
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: '"threshold":0.9' in events.read_text() and '"evidence":"' in events.read_text(), proc)
        station.write_text(text.replace('source = "b"', 'source = "a"'))
        proc.send_signal(signal.SIGHUP)
        n = events.read_text().count("\n")
        _wait(lambda: events.read_text().count("\n") >= n + 40, proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    cams = by_camera(read_events(events))
    for name, ev in cams.items():  # every frame of both cameras, in order: none lost around the reloads
        assert [e["frame"] for e in ev] == list(range(len(ev))), name
    assert {e["class"] for e in cams["a"]} == {"bottle"} and {e["class"] for e in cams["b"]} == {"cap"}
    b = cams["b"]
    switch = next(i for i, e in enumerate(b) if e["threshold"] == 0.9)
    assert switch > 0 and {e["threshold"] for e in b[:switch]} == {0.5} and {e["threshold"] for e in b[switch:]} == {0.9}
    assert not any(e["anomalous"] for e in b[switch:])  # 0.62 < 0.9: the defect frame 5 no longer counts
    a = cams["a"]
    # debounce 1 -> 2: before, frames 2, 3, 4 of every pass alarm; after, 3 and 4 only (one file = one frame)
    a_switch = next(i for i, e in enumerate(a) if e["evidence"])
    before = [e["frame"] % 8 for e in a[:a_switch - 2] if e["alarm"]]
    after = [e["frame"] % 8 for e in a[a_switch + 8:] if e["alarm"]]
    assert set(before) == {2, 3, 4} and set(after) == {3, 4}
    assert all(Path(e["evidence"]).parent == tmp_path / "evidence" for e in a[a_switch:] if e["alarm"])
    assert re.search(r"reloaded .*station.toml: a debounce 1 -> 2; b threshold 0\.5 -> 0\.9; b debounce 1 -> 2; "
                     r"\[outputs.evidence\]", err), err
    assert re.search(r"reload of .*station.toml refused: camera #2 source changed, which needs a restart", err), err
    assert "[outputs.evidence]" in err and "stopped by SIGTERM" in out
    # the refused reload left the running configuration: camera b still reads folder b (its defect frame 5)
    assert cams["b"][-1]["file"] == f"{cams['b'][-1]['frame'] % 8}.png"


def test_one_line_view_shows_each_cameras_artifact(tmp_path):
    from aaclip.runtime.monitor import LineMonitor
    from aaclip.runtime.service import run_station
    from aaclip.runtime.station import load_station

    view = LineMonitor()
    summary = run_station(load_station(two_camera_station(tmp_path)), extra_sinks=[view])
    assert summary.frames == 28
    left, right = (view.state(cam) for cam in view.cameras)
    assert (left["camera"]["name"], left["model"]["artifact"], left["model"]["threshold"]) == ("left", "plates.onnx", 0.5)
    assert (right["camera"]["name"], right["model"]["artifact"], right["model"]["threshold"]) == ("right", "caps.onnx", 0.7)
    assert right["model"]["classes"] == ["a", "b"] and left["counters"]["inspected"] == 16
    assert right["counters"]["alarms"] == 2 and left["counters"]["alarms"] == 1  # right: 3, 4 | 9; left: 6-8


def test_a_file_of_outputs_with_the_cameras_on_the_command_line(tmp_path):
    art = make_onnx_artifact(tmp_path, "plates.onnx")
    video = write_video(tmp_path / "v.avi", 10, defect_frames=(3, 4))
    outputs = tmp_path / "outputs.toml"
    outputs.write_text('[outputs.events]\npath = "alarms.jsonl"\nmode = "alarms"\n')
    r = invoke("--config", outputs, art, "--camera", video, "-q")
    assert r.exit_code == 0, r.output
    ev = read_events(tmp_path / "alarms.jsonl")
    assert [e["frame"] for e in ev if e.get("type") != "summary"] == [3, 4]
    assert [(e["type"], e["frames"], e["alarms"]) for e in ev if e.get("type") == "summary"] == [("summary", 10, 1)]
    r = invoke("--config", outputs)
    assert r.exit_code == 2 and r.stderr == f"error: {outputs}: the top level: no artifact; add [artifacts.NAME] with " \
                                           f"path = \"model.onnx\" (or give ARTIFACT)\n"
