"""docs/reliability.md, the camera loop's part: full disks, read-only folders, bad options, dead and stalled
sources, signals, recalibration while running, temporary files of killed runs."""
import errno
import importlib.util
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from aaclip.contract.errors import UserError
from aaclip.contract.files import atomic_path
from aaclip.contract.manifest import load_manifest, manifest_path, open_artifact, write_manifest
from aaclip.runtime import sinks as sinks_module
from aaclip.runtime.backends import open_runner
from aaclip.runtime.capture import MAX_UNREADABLE_IN_A_ROW, Backoff
from aaclip.runtime.cli import RunConfig, main, run
from aaclip.runtime.loop import CameraLoop, LoopConfig
from aaclip.runtime.sinks import EventLog
from aaclip.runtime.sources import ImageFolderSource, Source, open_source
from click.testing import CliRunner
from reliability_fixtures import FAULTS, full_disk, read_only_folder
from runtime_fixtures import make_onnx_artifact, read_events, write_video

pytestmark = pytest.mark.reliability
FAST = Backoff(initial=0.0, maximum=0.0)


def strict_events(path: Path) -> list[dict]:
    """Every line complete, strict JSON (NaN/Infinity refused)."""
    text = path.read_text()
    assert text == "" or text.endswith("\n")

    def refuse(name):
        raise AssertionError(f"{name} in the event log")

    return [json.loads(line, parse_constant=refuse) for line in text.splitlines()]


def cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---- outputs on a full disk or a read-only folder --------------------------------------------------
@pytest.mark.parametrize("how", FAULTS)
def test_full_disk_keeps_inspecting_counts_failures_and_never_writes_half_lines(tmp_path, how, monkeypatch):
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 40, defect_frames=list(range(5, 40, 3)))
    with full_disk(tmp_path / "out", 6000, how, monkeypatch) as out:  # room for a few events (tmpfs: no evidence)
        summary = run(RunConfig(art, (str(video),), drop=False, events=out / "ev.jsonl", evidence=out / "evidence",
                                stats_every=0))
        events = strict_events(out / "ev.jsonl")
        assert summary.frames == 40 and summary.alarms > 0            # decisions and alarms went on
        assert 0 < len(events) < 40 and summary.write_failures >= 40 - len(events)
        assert [e["frame"] for e in events] == list(range(len(events)))
        assert "write failures" in summary.text()


def test_enospc_mid_line_is_cut_back_to_whole_lines(tmp_path, monkeypatch, caplog):
    real_write = os.write
    calls = {"n": 0}

    def flaky_write(fd, data):
        calls["n"] += 1
        if calls["n"] % 3 == 0:  # every third event: half of it reaches the disk, then ENOSPC
            real_write(fd, data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    log = EventLog(tmp_path / "ev.jsonl")
    monkeypatch.setattr(sinks_module.os, "write", flaky_write)
    for i in range(9):
        log.write({"frame": i})
    monkeypatch.undo()
    log.close()
    assert [e["frame"] for e in strict_events(tmp_path / "ev.jsonl")] == [0, 1, 3, 4, 6, 7]
    assert log.failures == 3 and log.count == 6
    assert "No space left on device" in caplog.text


@pytest.mark.parametrize("how", FAULTS)
def test_read_only_output_folder_is_one_error_line_at_start(tmp_path, how, monkeypatch):
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 2)
    with read_only_folder(tmp_path / "ro", how, monkeypatch) as ro:
        for option, target in (("--events", ro / "ev.jsonl"), ("--evidence", ro / "evidence"),
                               ("--video", ro / "out.avi")):
            r = cli(art, "--camera", video, option, target)
            assert r.exit_code == 2, r.output
            assert re.search(rf"error: cannot write (video |evidence into )?{re.escape(str(target))}: "
                             r"(Read-only file system|its folder is not writable)", r.stderr), r.stderr
            assert "Traceback" not in r.output


def test_evidence_is_capped_with_rotation(tmp_path):
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 12, defect_frames=range(2, 12))
    (tmp_path / "evidence").mkdir()
    (tmp_path / "evidence" / "earlier_run.jpg").write_bytes(b"old")
    summary = run(RunConfig(art, (str(video),), drop=False, evidence=tmp_path / "evidence", evidence_max=3,
                            events=tmp_path / "ev.jsonl", stats_every=0))
    kept = sorted(p.name for p in (tmp_path / "evidence").iterdir())
    assert summary.evidence == 10 and len(kept) == 3
    assert kept == sorted(Path(e["evidence"]).name for e in read_events(tmp_path / "ev.jsonl")[-3:])


# ---- options ------------------------------------------------------------------------------------
@pytest.mark.parametrize("option, value, message", [
    ("--threshold", "nan", "'nan' is not a finite number"),
    ("--threshold", "inf", "'inf' is not a finite number"),
    ("--reconnect-delay", "-1", "-1 must be >= 0"),
    ("--reconnect-max", "nan", "not a finite number"),
    ("--debounce", "0", "0 is not in the range x>=1"),
    ("--video-fps", "0", "0 must be > 0"),
    ("--stats-every", "-inf", "not a finite number"),
    ("--batch", "0", "0 is not in the range x>=1"),
    ("--evidence-max", "0", "0 is not in the range x>=1"),
    ("--open-timeout", "nan", "not a finite number"),
])
def test_numeric_options_refuse_nan_inf_and_out_of_range(tmp_path, option, value, message):
    art = make_onnx_artifact(tmp_path)
    r = cli(art, "--camera", "0", option, value)
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output


@pytest.mark.parametrize("argv, message", [
    (["threshold", "{art}", "--images", "{tmp}", "--far", "nan"], "'nan' is not a finite number"),
    (["threshold", "{art}", "--images", "{tmp}", "--pixel-far", "inf"], "'inf' is not a finite number"),
    (["int8", "{art}", "--images", "{tmp}", "--min-map-corr", "2"], "2 must be <= 1"),
])
def test_calibration_and_verify_options_refuse_nan_and_out_of_range(tmp_path, argv, message):
    from aaclip.calibration.cli import cli as calibrate
    from aaclip.export.cli import cli as export

    art = make_onnx_artifact(tmp_path)
    r = CliRunner().invoke(calibrate, [a.format(art=art, tmp=tmp_path) for a in argv])
    assert r.exit_code == 2 and message in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(export, ["--verify", str(art), "--map-tol", "nan"])
    assert r.exit_code == 2 and "'nan' is not a finite number" in r.output


# ---- sources that never deliver ------------------------------------------------------------------
def test_folder_of_broken_images_with_loop_ends_instead_of_spinning(tmp_path):
    art = make_onnx_artifact(tmp_path)
    folder = tmp_path / "broken"
    folder.mkdir()
    for name in ("a.png", "b.jpg", "c.png"):
        (folder / name).write_bytes(b"not an image")
    # refused at start, each file named
    with pytest.raises(UserError, match=r"camera .*broken: no readable image; skipped a.png \(not an image OpenCV "
                                        r"can decode\), b.jpg \(.*\), c.png \("):
        run(RunConfig(art, (str(folder),), drop=False, loop_files=True, stats_every=0))
    # readable at start, broken while looping: given up after MAX_UNREADABLE_IN_A_ROW, and reported lost
    cv2.imwrite(str(folder / "a.png"), np.full((32, 32, 3), 90, np.uint8))
    m = open_artifact(art)
    source = open_source(str(folder), loop=True)
    (folder / "a.png").write_bytes(b"not an image any more")
    with open_runner(m, "onnxruntime") as runner:
        loop = CameraLoop(runner, m, [source], [0], LoopConfig(stats_every=0))
        watchdog = threading.Timer(60, loop.stop, args=("watchdog",))  # a guard against spinning, not a limit
        watchdog.start()
        try:
            summary = loop.run()
        finally:
            watchdog.cancel()
    assert (summary.frames, summary.unreadable, summary.stopped_by) == (0, MAX_UNREADABLE_IN_A_ROW, "end")
    assert summary.sources_lost == ("broken",) and summary.text().endswith("; source lost: broken")


class NeverOpens(Source):
    name, is_live = "dead-camera", True

    def __init__(self, on_open=None):
        self.opens = 0
        self.on_open = on_open

    def open(self):
        self.opens += 1
        if self.on_open:
            self.on_open(self.opens)
        return False

    def read(self):
        return False, None


class RecordingEvent(threading.Event):
    """The loop's stop event, recording the timeouts the capture thread waits with (its reconnect delays)."""

    def __init__(self):
        super().__init__()
        self.waits: list[float] = []

    def wait(self, timeout=None):
        if threading.current_thread().name.startswith("capture-"):
            self.waits.append(timeout)
        return super().wait(timeout)


class CountLines(logging.Handler):
    def __init__(self, text: str):
        super().__init__()
        self.text, self.count = text, 0

    def emit(self, record):
        self.count += self.text in record.getMessage()


def test_camera_that_never_opens_backs_off_even_with_zero_delay(tmp_path, caplog):
    m = open_artifact(make_onnx_artifact(tmp_path))
    stats = CountLines("capture 0.0 fps | infer 0.0 fps")
    logging.getLogger().addHandler(stats)
    stop_event = RecordingEvent()

    def stop_when_seen_enough(opens):  # 8 tries and 3 stats lines: the loop kept reporting while stalled
        if opens >= 8 and stats.count >= 3:
            loop.stop("test")

    source = NeverOpens(stop_when_seen_enough)
    watchdog = None
    try:
        with open_runner(m, "onnxruntime") as runner:
            loop = CameraLoop(runner, m, [source], [0], LoopConfig(backoff=Backoff(0.0, 0.2), stats_every=0.3,
                                                                   stop_event=stop_event))
            watchdog = threading.Timer(60, loop.stop, args=("watchdog",))
            watchdog.start()
            with caplog.at_level("INFO"):
                summary = loop.run()
    finally:
        logging.getLogger().removeHandler(stats)
        if watchdog is not None:
            watchdog.cancel()
    assert summary.frames == 0 and summary.stopped_by == "test" and stats.count >= 3
    # every try waited first, 0.05, 0.1, 0.2, 0.2, ... s (never 0, whatever --reconnect-delay says); the last
    # wait is the one the stop ended
    it = Backoff(0.0, 0.2).delays()
    assert stop_event.waits == [next(it) for _ in range(source.opens + 1)]
    assert stop_event.waits[:4] == [0.05, 0.1, 0.2, 0.2]
    # a warning once per backoff step (tries 1, 2, 3), then every 10th try; never delivered: "connect try"
    logged = [a for a in range(1, source.opens + 1) if a <= 3 or a % 10 == 0]
    assert re.findall(r"dead-camera: (\w+) try (\d+) failed", caplog.text) == [("connect", str(a)) for a in logged]


def _stalled_rtsp_server():
    """A TCP server that accepts connections and never answers (a hung camera)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    return server, held, stop


def _env() -> dict:
    import aaclip.runtime

    root = Path(aaclip.runtime.__file__).parents[2]
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}


def test_sigterm_during_a_stalled_rtsp_connect_ends_cleanly(tmp_path):
    art = make_onnx_artifact(tmp_path)
    server, held, stop = _stalled_rtsp_server()
    port = server.getsockname()[1]
    try:
        proc = subprocess.Popen([sys.executable, "-m", "aaclip.runtime.cli", str(art), "--camera",
                                 f"rtsp://127.0.0.1:{port}/line", "--open-timeout", "3", "--events",
                                 str(tmp_path / "ev.jsonl")],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        deadline = time.monotonic() + 20
        while not held and time.monotonic() < deadline:  # the camera's connect is under way
            time.sleep(0.05)
        assert held, "the runtime never connected"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        stop.set()
        server.close()
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert "stopped by SIGTERM" in out and "Traceback" not in err and "Abort" not in err


# ---- events, run ids, recalibration while running ------------------------------------------------
def test_events_carry_a_run_id_and_stay_strict_json_with_nan_outputs(tmp_path, monkeypatch):
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 6, defect_frames=[2])
    events = tmp_path / "ev.jsonl"
    # the NaN outputs are injected into ONNX Runtime's runner: name it (auto picks OpenVINO on an Intel CPU)
    first = run(RunConfig(art, (str(video),), backend="onnxruntime", drop=False, events=events, stats_every=0))
    from aaclip.runtime.backends.onnxruntime import OnnxRuntimeRunner

    real = OnnxRuntimeRunner.infer_impl

    def nan_outputs(self, feeds, outputs):
        out = {k: np.array(v, np.float32) for k, v in real(self, feeds, outputs).items()}
        out["map_max"][:] = np.nan
        return out

    monkeypatch.setattr(OnnxRuntimeRunner, "infer_impl", nan_outputs)
    second = run(RunConfig(art, (str(video),), backend="onnxruntime", drop=False, events=events, stats_every=0))
    ev = strict_events(events)
    assert {e["run"] for e in ev[:6]} == {first.run_id} and {e["run"] for e in ev[6:]} == {second.run_id}
    assert first.run_id != second.run_id and len(first.run_id) == 12
    assert all(e["score"] is None and e["map_max"] is None and e["decision"] == "normal" for e in ev[6:])


class Recalibrator(EventLog):
    """The event log, plus a recalibration after the 4th decision (aaclip-calibrate writing the manifest while
    the loop runs), and a stop 3 decisions after the new threshold is in use."""

    def __init__(self, path: Path, art: Path, loop_holder: list):
        super().__init__(path)
        self.art, self.loop_holder = art, loop_holder
        self.decisions = self.after = 0

    def emit(self, decision, view):
        super().emit(decision, view)
        self.decisions += 1
        if self.decisions == 4:
            data = json.loads(manifest_path(self.art).read_text())
            data["score"].update(threshold=0.1, source="calibration")  # what aaclip-calibrate writes
            write_manifest(self.art, data)
        if decision.threshold == 0.1:
            self.after += 1
            if self.after == 3:
                self.loop_holder[0].stop("test")


def test_recalibrated_manifest_is_picked_up_without_restart(tmp_path, caplog):
    art = make_onnx_artifact(tmp_path, threshold=0.5)
    folder = tmp_path / "frames"
    folder.mkdir()
    import cv2
    from runtime_fixtures import frame_image

    for i in range(4):
        cv2.imwrite(str(folder / f"{i}.png"), frame_image(False, (64, 64), seed=i))  # clean: score ~0.22
    m = open_artifact(art)
    events = tmp_path / "ev.jsonl"
    holder: list = []
    with open_runner(m, "onnxruntime") as runner:
        loop = CameraLoop(runner, m, [ImageFolderSource(sorted(folder.iterdir()), "frames", loop=True)], [0],
                          LoopConfig(drop=False, stats_every=0, reload_every_s=0.05, poll_s=0.01),
                          [Recalibrator(events, art, holder)])
        holder.append(loop)
        watchdog = threading.Timer(60, loop.stop, args=("watchdog",))
        watchdog.start()
        try:
            with caplog.at_level("WARNING"):
                summary = loop.run()
        finally:
            watchdog.cancel()
    ev = read_events(events)
    assert summary.stopped_by == "test"
    assert summary.reloads == 1 and "score constants reloaded (threshold 0.5 -> 0.1)" in caplog.text
    thresholds = [e["threshold"] for e in ev]
    switch = thresholds.index(0.1)
    assert switch >= 4 and thresholds == [0.5] * switch + [0.1] * 3  # one switch, after the write, never back
    assert not any(e["anomalous"] for e in ev[:switch]) and all(e["anomalous"] for e in ev[switch:])
    assert load_manifest(art).score.threshold == 0.1


# ---- temporary files of a killed run ------------------------------------------------------------
def test_temporary_files_of_a_killed_run_are_removed_at_the_next_start(tmp_path):
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 4, defect_frames=[1, 2])
    (tmp_path / "evidence").mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale_video = tmp_path / f".out.avi.{dead.pid}~x1.avi"
    stale_evidence = tmp_path / "evidence" / f".v.avi_00000001_0.6.jpg.{dead.pid}~y2.jpg"
    alive = tmp_path / f".out.avi.{os.getpid()}~z3.avi"  # a writer still running: kept
    for p in (stale_video, stale_evidence, alive):
        p.write_bytes(b"partial")
    with atomic_path(tmp_path / "probe.txt") as tmp:
        assert tmp.name.startswith(f".probe.txt.{os.getpid()}~")
        tmp.write_text("x")
    run(RunConfig(art, (str(video),), drop=False, video=tmp_path / "out.avi", evidence=tmp_path / "evidence",
                  stats_every=0))
    assert not stale_video.exists() and not stale_evidence.exists() and alive.exists()
    assert (tmp_path / "out.avi").stat().st_size > 0


@pytest.mark.parametrize("backend", [
    "onnxruntime",
    pytest.param("openvino", marks=pytest.mark.skipif(importlib.util.find_spec("openvino") is None,
                                                      reason="openvino not installed (the dev extra installs it)")),
])
def test_manifest_whose_input_size_differs_from_the_graph_is_refused(tmp_path, backend):
    """A manifest copied beside another export (sha256 updated by hand) still cannot lie about the frame size:
    each backend checks its own graph's input (named explicitly: ``auto`` would test only one of them)."""
    from runtime_fixtures import build_darkness_onnx

    art = make_onnx_artifact(tmp_path)
    build_darkness_onnx(art, height=32, width=48)  # the graph now takes 32x48 frames
    data = json.loads(manifest_path(art).read_text())
    from aaclip.contract.files import sha256_file

    data["artifact"]["sha256"] = sha256_file(art)
    data["artifact"]["size_bytes"] = art.stat().st_size
    write_manifest(art, data)
    r = cli(art, "--camera", write_video(tmp_path / "v.avi", 1), "--backend", backend)
    assert r.exit_code == 2, r.output
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert errors == [r.stderr.splitlines()[-1]] and "Traceback" not in r.output, r.stderr
    assert errors[0].startswith(f"error: {backend}: the graph takes 32x48 frames but its manifest says 64x64"), r.stderr
