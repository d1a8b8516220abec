"""The camera loop end to end on ONNX Runtime (CPU), and with fake runners/sources for live behaviour."""
import logging
import threading
from datetime import datetime

import cv2
import numpy as np
import pytest
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import load_manifest
from aaclip.runtime.backends import open_runner
from aaclip.runtime.backends.base import Runner
from aaclip.runtime.capture import Backoff
from aaclip.runtime.loop import CameraLoop, LoopConfig, source_classes
from aaclip.runtime.sinks import AnnotatedVideo, EventLog, EvidenceWriter
from aaclip.runtime.sources import Source, open_source
from runtime_fixtures import make_onnx_artifact, read_events, write_video

FAST = Backoff(initial=0.01, maximum=0.04)


def offline(**kw):
    return LoopConfig(drop=False, stats_every=0, backoff=FAST, **kw)


def run_loop(manifest, sources, class_ids=None, config=None, sinks=(), runner=None):
    runner = runner or open_runner(manifest, "onnxruntime")
    with runner:
        loop = CameraLoop(runner, manifest, sources, class_ids or [0] * len(sources), config or offline(), sinks)
        return loop.run()


def test_end_to_end_decisions_events_evidence_video(tmp_path):
    m = load_manifest(make_onnx_artifact(tmp_path))
    video = write_video(tmp_path / "line.avi", 12, defect_frames=[3, 4, 5, 9])
    events, evidence, annotated = tmp_path / "ev.jsonl", tmp_path / "evidence", tmp_path / "out.avi"
    sinks = [EventLog(events), EvidenceWriter(evidence, "png"), AnnotatedVideo(annotated, [10])]
    summary = run_loop(m, [open_source(str(video))], config=offline(debounce=2), sinks=sinks)

    ev = read_events(events)
    assert [e["frame"] for e in ev] == list(range(12))
    assert {i for i, e in enumerate(ev) if e["anomalous"]} == {3, 4, 5, 9}
    assert [e["decision"] for e in ev][2:11] == ["normal", "anomalous", "alarm", "alarm", "normal", "normal",
                                                 "normal", "anomalous", "normal"]
    clean = [e["raw_score"] for e in ev if not e["anomalous"]]
    defect = [e["raw_score"] for e in ev if e["anomalous"]]
    assert max(clean) < 0.25 and min(defect) > 0.6  # darkness graph: ~0.216 vs ~0.62
    # the shown score: [0, 1] with the (raw) threshold at 0.5; the default threshold 0.5 shows raw itself
    assert all(e["score"] == pytest.approx(min(max(e["raw_score"], 0.0), 1.0), abs=2e-6) for e in ev)
    assert [e["score"] >= 0.5 for e in ev] == [e["anomalous"] for e in ev]
    assert all(e["map_max"] > 0.95 for e in ev if e["anomalous"])
    e4 = ev[4]
    assert (e4["source"], e4["class"], e4["threshold"], e4["alarm"]) == ("line.avi", "bottle", 0.5, True)
    assert e4["latency_ms"] >= 0 and datetime.fromisoformat(e4["timestamp"]).tzinfo is not None
    assert e4["raw_score"] == pytest.approx(0.5 * e4["map_max"] + 0.5 * e4["cls_score"], abs=2e-6)

    # Evidence: only alarm frames (4, 5), valid PNGs (frame | overlay side by side), no temp files left.
    files = sorted(p.name for p in evidence.iterdir())
    assert files == [f"line.avi_00000004_{ev[4]['score']:.3f}.png", f"line.avi_00000005_{ev[5]['score']:.3f}.png"]
    assert ev[4]["evidence"] == str(evidence / files[0]) and ev[3]["evidence"] is None
    img = cv2.imread(str(evidence / files[0]))
    assert img.shape == (96, 256, 3)
    assert (evidence / files[0]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cap = cv2.VideoCapture(str(annotated))
    n = 0
    while cap.read()[0]:
        n += 1
    assert n == 12 and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert (summary.frames, summary.anomalous, summary.alarms, summary.alarm_frames, summary.evidence) == (
        12, 4, 1, 2, 2)
    assert (summary.dropped, summary.unreadable, summary.stopped_by) == (0, 0, "end")


def test_threshold_override_and_max_frames(tmp_path):
    m = load_manifest(make_onnx_artifact(tmp_path))
    video = write_video(tmp_path / "v.avi", 10)
    s = run_loop(m, [open_source(str(video))], config=offline(threshold=0.2, max_frames=4, batch=3))
    assert (s.frames, s.anomalous, s.stopped_by) == (4, 4, "max-frames")  # clean frames score 0.216 >= 0.2


class SpyRunner(Runner):
    """Wraps a runner and records the feeds it was given."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def activate_impl(self):
        self.inner.activate()
        self.input_names, self.output_names = self.inner.input_names, self.inner.output_names

    def infer_impl(self, feeds, outputs):
        self.calls.append({k: v.copy() for k, v in feeds.items()} | {"_outputs": tuple(outputs)})
        return self.inner.infer(feeds, outputs)

    def deactivate_impl(self):
        self.inner.deactivate()


def test_multi_class_batch_feeds_class_id_per_camera(tmp_path):
    art = make_onnx_artifact(tmp_path, classes=("bottle", "cable"), class_offsets=(0.0, 1.0))
    m = load_manifest(art)
    video = write_video(tmp_path / "v.avi", 4, defect_frames=[1], size=(64, 64))
    events = tmp_path / "ev.jsonl"
    ids = source_classes(m, ["bottle", "cable"], 2)
    spy = SpyRunner(open_runner(m, "onnxruntime"))
    run_loop(m, [open_source(str(video)), open_source(str(video))], ids, offline(batch=2),
             [EventLog(events)], runner=spy)
    assert len(spy.calls) == 4
    assert all(c["class_id"].tolist() == [0, 1] and c["image"].shape == (2, 64, 64, 3) for c in spy.calls)
    assert all(c["_outputs"] == ("map_max", "cls_score") for c in spy.calls)  # no visual sink: no maps
    ev = read_events(events)
    bottle = [e["anomalous"] for e in ev if e["class"] == "bottle"]
    cable = [e["anomalous"] for e in ev if e["class"] == "cable"]
    assert bottle == [False, True, False, False] and cable == [True] * 4  # offset 1.0 makes all anomalous


def test_source_classes_errors(tmp_path):
    m = load_manifest(make_onnx_artifact(tmp_path, classes=("bottle", "cable"), class_offsets=(0.0, 1.0)))
    assert source_classes(m, ["cable"], 3) == [1, 1, 1]
    with pytest.raises(UserError, match="holds several classes; choose with --class NAME.*available: bottle, cable"):
        source_classes(m, [], 1)
    with pytest.raises(UserError, match="unknown class 'screw'.*available: bottle, cable"):
        source_classes(m, ["bottle", "screw"], 2)
    with pytest.raises(UserError, match=r"once per camera \(3 cameras, 2 --class\)"):
        source_classes(m, ["bottle", "cable"], 3)
    (tmp_path / "single").mkdir()
    single = load_manifest(make_onnx_artifact(tmp_path / "single"))
    assert source_classes(single, [], 2) == [0, 0]


def test_batch_above_engine_profile_refused(tmp_path):
    m = load_manifest(make_onnx_artifact(tmp_path, batch={"min": 1, "opt": 1, "max": 2}))
    with pytest.raises(UserError, match="--batch 3 exceeds the artifact's max batch 2"):
        CameraLoop(open_runner(m, "onnxruntime"), m, [open_source(str(write_video(tmp_path / "v.avi", 1)))], [0],
                   offline(batch=3))


class ZeroRunner(Runner):
    """Returns clean results; ``on_infer`` lets a test act during inference (e.g. let frames arrive)."""

    name = "zero"

    def __init__(self, on_infer=None):
        super().__init__()
        self.on_infer, self.batches = on_infer, []

    def activate_impl(self):
        self.input_names, self.output_names = ("image",), ("anomaly_map", "map_max", "cls_score")

    def infer_impl(self, feeds, outputs):
        n = feeds["image"].shape[0]
        self.batches.append(n)
        if self.on_infer:
            self.on_infer()
        return {"anomaly_map": np.zeros((n, 64, 64), np.float32), "map_max": np.zeros(n, np.float32),
                "cls_score": np.zeros(n, np.float32)}

    def deactivate_impl(self):
        pass


class GatedLiveSource(Source):
    """A live camera that delivers one frame per permit; lets a test pace capture deterministically."""

    name, is_live = "gated", True

    def __init__(self):
        self.permits = threading.Semaphore(1)
        self.cond = threading.Condition()
        self.served, self.waiting, self.stop = 0, False, threading.Event()

    def open(self):
        return True

    def read(self):
        with self.cond:
            self.waiting = True
            self.cond.notify_all()
        while not self.permits.acquire(timeout=0.01):
            if self.stop.is_set():
                return False, None
        with self.cond:
            self.waiting, self.served = False, self.served + 1
        return True, np.full((64, 64, 3), 200, np.uint8)

    def deliver(self, n):
        """Let ``n`` more frames arrive and wait until the capture thread has stored all of them."""
        with self.cond:
            target = self.served + n
        self.permits.release(n)
        with self.cond:
            assert self.cond.wait_for(lambda: self.waiting and self.served == target, timeout=10)


def test_live_mode_keeps_newest_frame_and_counts_drops(tmp_path):
    m = load_manifest(make_onnx_artifact(tmp_path))
    source = GatedLiveSource()
    events = tmp_path / "ev.jsonl"
    runner = ZeroRunner(on_infer=lambda: source.deliver(3))  # 3 frames arrive during every inference
    with runner:
        loop = CameraLoop(runner, m, [source], [0], LoopConfig(drop=True, max_frames=5, stats_every=0, backoff=FAST),
                          [EventLog(events)])
        source.stop = loop.stop_event
        s = loop.run()
    # Each inference lets frames k+1..k+3 in: k+1 and k+2 are replaced by k+3 before the loop takes it.
    assert [e["frame"] for e in read_events(events)] == [0, 3, 6, 9, 12]
    assert (s.frames, s.dropped, s.captured, s.stopped_by) == (5, 10, 16, "max-frames")


class FlakyLiveSource(Source):
    """Serves frames 0..2, then fails (unplugged); the first reopen fails, the second works; one frame of
    the second session is unreadable."""

    name, is_live = "flaky", True

    def __init__(self):
        self.script = [True, True, True, False, True, None, True, True, True, True, True, True]
        self.opens, self.open_results = 0, [False, True]
        self.value = 0

    def open(self):
        self.opens += 1
        return self.open_results.pop(0) if self.open_results else True

    def read(self):
        step = self.script.pop(0) if self.script else True
        if step is False:
            return False, None
        if step is None:
            return True, None
        self.value += 1
        return True, np.full((64, 64, 3), 200, np.uint8)


def test_reconnect_after_failure_mid_stream(tmp_path, caplog):
    m = load_manifest(make_onnx_artifact(tmp_path))
    source = FlakyLiveSource()
    events = tmp_path / "ev.jsonl"
    with caplog.at_level(logging.WARNING, logger="aaclip.runtime.capture"):
        s = run_loop(m, [source], config=offline(max_frames=7), sinks=[EventLog(events)])
    assert (s.frames, s.reconnects, s.unreadable) == (7, 1, 1)
    assert source.opens == 2
    assert [e["frame"] for e in read_events(events)] == list(range(7))
    text = caplog.text
    assert "flaky: no frame (unplugged or stalled); reconnecting" in text
    assert "flaky: reconnect try 1 failed; retrying every 0.05 s or slower" in text and "flaky: reconnected (try 2)" in text


class UnpluggedAfterOneFrame(FlakyLiveSource):
    """Serves one frame, then fails: the loop cannot inspect 3 frames without the capture thread reconnecting
    (first reopen fails, second works; then one unreadable frame, then frames)."""

    def __init__(self):
        super().__init__()
        self.script = [True, False, None]


def test_reconnect_in_live_mode_thread(tmp_path):
    m = load_manifest(make_onnx_artifact(tmp_path))
    runner = ZeroRunner()
    source = UnpluggedAfterOneFrame()
    s = run_loop(m, [source], config=LoopConfig(drop=True, max_frames=3, stats_every=0, backoff=FAST),
                 runner=runner)
    assert (s.frames, s.stopped_by) == (3, "max-frames")
    assert (s.reconnects, source.opens, s.unreadable) == (1, 2, 1)  # one reconnect, after one failed reopen
    assert s.captured >= 3


def test_backoff_delays():
    it = Backoff(initial=0.5, maximum=3.0, factor=2.0).delays()
    assert [next(it) for _ in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]
    it = Backoff(initial=0.0, maximum=0.0).delays()  # --reconnect-delay 0 never spins
    assert [next(it) for _ in range(3)] == [0.05, 0.05, 0.05]


def test_image_folder_unreadable_counted_and_stop(tmp_path):
    m = load_manifest(make_onnx_artifact(tmp_path))
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(3):
        cv2.imwrite(str(folder / f"{i}.png"), np.full((64, 64, 3), 200, np.uint8))
    (folder / "1b.png").write_bytes(b"broken")
    s = run_loop(m, [open_source(str(folder))])
    assert (s.frames, s.unreadable, s.stopped_by) == (3, 1, "end")

    runner = ZeroRunner()
    with runner:
        loop = CameraLoop(runner, m, [open_source(str(folder), loop=True)], [0], offline())
        runner.on_infer = lambda: loop.stop("signal")  # a signal arriving during the first inference
        s = loop.run()
    assert (s.frames, s.stopped_by) == (1, "signal")  # the current frame was finished, then stop
