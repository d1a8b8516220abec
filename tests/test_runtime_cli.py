"""``aaclip-runtime`` command: results, one-line errors with exit 2, clean shutdown on SIGINT/SIGTERM."""
import re
import signal

import pytest
from aaclip.runtime import sources as src
from aaclip.runtime.cli import main
from click.testing import CliRunner
from runtime_fixtures import make_onnx_artifact, read_events, signal_when, start_runtime, write_video


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


@pytest.mark.both_cpus
def test_run_on_file_prints_summary(tmp_path):
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 6, defect_frames=[2, 3])
    events = tmp_path / "ev.jsonl"
    r = invoke(art, "--camera", video, "--no-drop", "--debounce", "2", "--events", events, "-q")
    assert r.exit_code == 0, r.output
    assert "summary: 6 frames" in r.stdout and "2 anomalous, 1 alarms (1 alarm frames)" in r.stdout
    assert [e["decision"] for e in read_events(events)] == ["normal", "normal", "anomalous", "alarm", "normal",
                                                            "normal"]
    r = invoke(art, "--camera", video, "--no-drop", "--threshold", "0.1", "--max-frames", "3", "-q")
    assert r.exit_code == 0 and "summary: 3 frames" in r.stdout and "3 anomalous" in r.stdout


def test_tampered_artifact_exits_2_with_rebuild_command(tmp_path):
    art = make_onnx_artifact(tmp_path)
    art.write_bytes(art.read_bytes() + b"x")
    r = invoke(art, "--camera", write_video(tmp_path / "v.avi", 1))
    assert r.exit_code == 2
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: artifact ")
    assert r.stderr.strip().endswith("rebuild it with: aaclip-export runs/test/ckpt --format onnx --out model.onnx")


def test_multi_class_artifact_needs_class(tmp_path):
    art = make_onnx_artifact(tmp_path, classes=("bottle", "cable"), class_offsets=(0.0, 1.0))
    video = write_video(tmp_path / "v.avi", 1)
    r = invoke(art, "--camera", video)
    assert r.exit_code == 2 and "choose with --class NAME" in r.stderr and "available: bottle, cable" in r.stderr
    r = invoke(art, "--camera", video, "--class", "screw")
    assert r.exit_code == 2 and "unknown class 'screw'" in r.stderr


def test_pipeline_without_gstreamer_exits_2(tmp_path, monkeypatch):
    monkeypatch.setattr(src.cv2, "getBuildInformation", lambda: "    GStreamer:    NO\n")
    art = make_onnx_artifact(tmp_path)
    r = invoke(art, "--camera", "nvarguscamerasrc ! nvvidconv ! appsink")
    assert r.exit_code == 2 and "was built without it" in r.stderr and "JetPack's OpenCV" in r.stderr


def test_show_without_display_exits_2(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    art = make_onnx_artifact(tmp_path)
    r = invoke(art, "--camera", write_video(tmp_path / "v.avi", 1), "--show")
    assert r.exit_code == 2 and "--show needs a display" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_finishes_frame_flushes_and_exits_0(tmp_path, sig):
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 10, defect_frames=[4, 5])
    events, evidence, annotated = tmp_path / "ev.jsonl", tmp_path / "evidence", tmp_path / "out.avi"
    proc = start_runtime(art, "--camera", video, "--loop", "--events", events, "--evidence", evidence, "--video",
                         annotated, "--stats-every", "0.5")
    out, err = signal_when(proc, lambda: events.exists() and events.read_text().count("\n") >= 25, sig)
    assert proc.returncode == 0, err
    m = re.search(r"summary: (\d+) frames .* stopped by (\w+)", out)
    assert m and m.group(2) == sig.name, out
    text = events.read_text()
    assert text.endswith("\n")
    ev = read_events(events)  # every line is complete JSON
    assert len(ev) == int(m.group(1)) >= 25
    assert any(e["alarm"] for e in ev)
    assert all(p.suffix == ".jpg" and not p.name.startswith(".") for p in evidence.iterdir())
    assert annotated.stat().st_size > 0 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert f"{sig.name} received: finishing the current frame" in err


def test_files_and_folders_default_to_every_frame_and_events_name_the_file(tmp_path, caplog):
    """No --drop/--no-drop: a video file and an image folder are inspected frame by frame (nothing dropped,
    however slow the model); events of a folder name each image; an uncalibrated artifact warns at start
    and marks its events calibrated: false."""
    import cv2
    from aaclip.runtime.cli import RunConfig, run
    from runtime_fixtures import frame_image

    art = make_onnx_artifact(tmp_path)
    folder = tmp_path / "parts"
    (folder / "line2").mkdir(parents=True)
    for i, rel in enumerate(["a.png", "b.png", "line2/c.png"]):
        cv2.imwrite(str(folder / rel), frame_image(defect=rel == "b.png", seed=i))
    events = tmp_path / "ev.jsonl"
    r = invoke(art, "--camera", folder, "--events", events)
    assert r.exit_code == 0, r.output
    assert "offline mode (every frame) for files" in r.stderr and "is not calibrated" in r.stderr
    ev = read_events(events)
    assert [e["file"] for e in ev] == ["a.png", "b.png"]  # the folder's own images, by name
    assert [e["anomalous"] for e in ev] == [False, True] and all(e["calibrated"] is False for e in ev)
    video = write_video(tmp_path / "v.avi", 12)
    summary = run(RunConfig(art, (str(video),), stats_every=0))
    assert summary.frames == 12 and summary.dropped == 0
    live = RunConfig(art, (str(video),)).loop_config(sources=[src.CaptureSource(0, "camera0", is_live=True)])
    assert live.drop is True and RunConfig(art, (), drop=False).loop_config(sources=[]).drop is False
    r = invoke(art, "--camera", video, "--drop", "-v")
    assert r.exit_code == 0 and "live mode (newest frame only)," in r.stderr


def test_calibrated_artifact_events_say_so(tmp_path):
    from aaclip.contract.manifest import load_manifest, write_manifest

    art = make_onnx_artifact(tmp_path)
    data = load_manifest(art).data
    data["score"].update(source="calibration", calibration={"method": "test", "frames": 2, "far": 0.01})
    write_manifest(art, data)
    events = tmp_path / "ev.jsonl"
    r = invoke(art, "--camera", write_video(tmp_path / "v.avi", 2), "--events", events)
    assert r.exit_code == 0 and "not calibrated" not in r.stderr
    assert [e["calibrated"] for e in read_events(events)] == [True, True] and read_events(events)[0]["file"] is None
    # a threshold set by hand is not the calibrated one: the runtime warns and the events say so
    r = invoke(art, "--camera", write_video(tmp_path / "v2.avi", 2), "--events", events, "--threshold", "0.25")
    assert r.exit_code == 0 and "--threshold 0.25 replaces the calibrated threshold" in r.stderr
    hand = read_events(events)[2:]
    assert [e["calibrated"] for e in hand] == [False, False] and all(e["threshold"] == 0.25 for e in hand)
