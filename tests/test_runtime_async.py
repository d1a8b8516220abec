"""The camera loop on an asynchronous backend (no server: a fake that answers late and loses batches):
batches in flight, in-order decisions, lost frames counted, reconnect with backoff."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from aaclip.contract.manifest import load_manifest
from aaclip.runtime.backends import open_runner
from aaclip.runtime.backends.base import BackendUnavailable, Runner
from aaclip.runtime.capture import Backoff
from aaclip.runtime.loop import CameraLoop, LoopConfig
from aaclip.runtime.sinks import EventLog
from aaclip.runtime.sources import open_source
from runtime_fixtures import make_onnx_artifact, read_events, write_video


class FlakyServer(Runner):
    """Runs the real ONNX Runtime runner on a worker thread, answers each batch ``delay_s`` late, and loses
    the batches submitted while it is "down" (requests ``down_from`` .. ``down_from + down_for - 1``)."""

    name = "flaky"
    asynchronous = True

    def __init__(self, inner: Runner, delay_s: float, down_from: int, down_for: int):
        super().__init__()
        self.inner, self.delay_s = inner, delay_s
        self.down = range(down_from, down_from + down_for)
        self.pool = ThreadPoolExecutor(1)
        self.requests = 0
        self.outstanding = self.max_outstanding = 0
        self.reconnect_tries = 0
        self.lock = threading.Lock()

    def activate_impl(self):
        self.inner.activate()
        self.input_names, self.output_names = self.inner.input_names, self.inner.output_names

    def deactivate_impl(self):
        self.pool.shutdown()
        self.inner.deactivate()

    def infer_impl(self, feeds, outputs):
        return self.submit(feeds, outputs).result()

    def submit(self, feeds, outputs=None):
        names = self.check_call(feeds, outputs)
        copy = {k: np.array(v) for k, v in feeds.items()}  # the loop reuses its buffers after submit
        lost = self.requests in self.down
        self.requests += 1
        with self.lock:
            self.outstanding += 1
            self.max_outstanding = max(self.max_outstanding, self.outstanding)

        def answer():
            time.sleep(self.delay_s)
            with self.lock:
                self.outstanding -= 1
            if lost:
                raise BackendUnavailable("connection reset")
            return {k: np.array(v) for k, v in self.inner.infer(copy, names).items()}

        return self.pool.submit(answer)

    def reconnect(self, stop, delays):
        for delay in delays:
            self.reconnect_tries += 1
            if stop.wait(delay):
                return False
            if self.reconnect_tries >= 3:  # "the server is back" on the third try
                return True
        return False


def test_batches_in_flight_are_decided_in_order_and_lost_ones_counted(tmp_path):
    manifest = load_manifest(make_onnx_artifact(tmp_path))
    video = write_video(tmp_path / "v.avi", 40, defect_frames=[2, 30])
    runner = FlakyServer(open_runner(manifest, "onnxruntime"), delay_s=0.03, down_from=10, down_for=3)
    with runner:
        loop = CameraLoop(runner, manifest, [open_source(str(video))], [0],
                          LoopConfig(drop=False, stats_every=0, in_flight=4, backoff=Backoff(0.01, 0.02)),
                          [EventLog(tmp_path / "ev.jsonl")])
        summary = loop.run()
    assert 2 <= runner.max_outstanding <= 4  # several batches on the "server" at once, never more than in_flight
    assert (summary.captured, summary.frames, summary.lost, summary.backend_reconnects) == (40, 37, 3, 1)
    assert runner.reconnect_tries == 3
    frames = [e["frame"] for e in read_events(tmp_path / "ev.jsonl")]
    assert frames == [i for i in range(40) if i not in (10, 11, 12)]  # in order; the three lost ones missing
    assert "lost 3, backend reconnects 1" in summary.text()


def test_local_runners_stay_synchronous(tmp_path):
    manifest = load_manifest(make_onnx_artifact(tmp_path))
    with open_runner(manifest, "onnxruntime") as runner:
        loop = CameraLoop(runner, manifest, [open_source(str(write_video(tmp_path / "v.avi", 3)))], [0],
                          LoopConfig(drop=False, stats_every=0, in_flight=8))
        assert loop.depth == 1 and runner.submit(loop.feeds.feeds(1)).done()
        assert loop.run().frames == 3


def test_two_artifacts_in_flight_stop_at_max_frames(tmp_path):
    """Two lanes (one asynchronous runner each) share the loop: batches of both in flight, each decided by its
    own artifact, and ``max_frames`` counts the frames still on the servers."""
    from aaclip.runtime.loop import Lane

    plates = load_manifest(make_onnx_artifact(tmp_path, "plates.onnx"))
    caps = load_manifest(make_onnx_artifact(tmp_path, "caps.onnx", classes=("a", "b"), class_offsets=(0.0, 0.1)))
    videos = [write_video(tmp_path / f"v{i}.avi", 30, defect_frames=[5]) for i in range(2)]
    with FlakyServer(open_runner(plates, "onnxruntime"), 0.02, 10**6, 0) as r1, \
            FlakyServer(open_runner(caps, "onnxruntime"), 0.02, 10**6, 0) as r2:
        lanes = [Lane(r1, plates, (0,)), Lane(r2, caps, (1,))]
        loop = CameraLoop(r1, plates, [open_source(str(v)) for v in videos], [0, 1],
                          LoopConfig(drop=False, stats_every=0, in_flight=4, max_frames=41),
                          [EventLog(tmp_path / "ev.jsonl")], lanes=lanes)
        summary = loop.run()
    events = read_events(tmp_path / "ev.jsonl")
    assert summary.frames == len(events) == 41 and summary.stopped_by == "max-frames"
    by_source = {e["source"]: e for e in events if e["frame"] == 0}
    assert by_source["v0.avi"]["class"] == "bottle" and by_source["v1.avi"]["class"] == "b"
    assert r1.max_outstanding >= 2 and r2.max_outstanding >= 2  # several batches of each lane in flight
