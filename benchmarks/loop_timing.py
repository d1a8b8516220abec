"""The end-to-end runtime loop, timed per stage, on a video file in offline (no-drop) mode.

The loop is the runtime's own ``CameraLoop``, unchanged: thin wrappers only read the clock around its
parts. Stages, per frame:

- decode: ``Source.read`` (reading and decoding the MJPG frame);
- preprocess: from the start of a batch to the inference call (``FeedBuilder.put``: ``fit_frame`` into
  the runner's lent input buffer, class ids, batch fill);
- inference: the backend call (``Runner.infer``, outputs copied to the host);
- post-process/overlay: from the end of inference to the end of the batch (decisions, rendering and
  the sinks: event log, heat-map overlay and annotated video when enabled);
- other: the rest of the wall time (frame gathering, stats, start-up and closing).

Warm-up excluded: the first batch(es) run untimed (decoder, writer and caches start up), then
throughput is frames over the wall time of the timed batches; latency is the runtime's own (capture of
a frame to its decision), over the timed batches.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from aaclip.contract.manifest import Manifest
from aaclip.runtime.backends.base import Runner
from aaclip.runtime.loop import CameraLoop, LoopConfig
from aaclip.runtime.sinks import AnnotatedVideo, EventLog
from aaclip.runtime.sources import Source, open_source

from .measure import PERCENTILES

STAGES = ("decode", "preprocess", "inference", "postprocess", "other")


class TimedSource(Source):
    """A source whose ``read`` time (decode) is summed."""

    def __init__(self, inner: Source):
        self.inner = inner
        self.name = inner.name
        self.is_live = inner.is_live
        self.fps = inner.fps
        self.seconds = 0.0

    def open(self) -> bool:
        return self.inner.open()

    def read(self):
        t0 = time.perf_counter()
        try:
            return self.inner.read()
        finally:
            self.seconds += time.perf_counter() - t0

    def release(self) -> None:
        self.inner.release()


class TimedRunner(Runner):
    """Delegates to an already active runner and remembers when each ``infer`` started and ended."""

    def __init__(self, inner: Runner):
        super().__init__()
        self.inner = inner
        self.name = inner.name
        self.t_start = self.t_end = 0.0

    def activate_impl(self) -> None:
        self.inner.activate()
        self.input_names, self.output_names = self.inner.input_names, self.inner.output_names

    def infer_impl(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        self.t_start = time.perf_counter()
        out = self.inner.infer(feeds, outputs)
        self.t_end = time.perf_counter()
        return out

    def lend_input(self, name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        return self.inner.lend_input(name, shape, dtype)

    def deactivate_impl(self) -> None:
        pass  # the caller owns the inner runner


class TimedLoop(CameraLoop):
    """``CameraLoop`` with the clock read around each batch's decode, preprocess, inference and
    post-processing (one record per batch in ``records``)."""

    def __init__(self, runner: TimedRunner, manifest: Manifest, source: TimedSource, config: LoopConfig,
                 sinks: Sequence):
        super().__init__(runner, manifest, [source], [0], config, sinks)
        self.timed_runner = runner
        self.timed_source = source
        self.records: list[dict] = []
        self.t_run = 0.0
        self._decoded = 0.0

    def run(self):
        self.t_run = time.perf_counter()
        return super().run()

    def _process(self, frames):
        t0 = time.perf_counter()
        decode = self.timed_source.seconds - self._decoded
        self._decoded = self.timed_source.seconds
        decisions = super()._process(frames)
        t1 = time.perf_counter()
        r = self.timed_runner
        self.records.append({
            "frames": len(frames), "t_end": t1, "decode": decode, "preprocess": r.t_start - t0,
            "inference": r.t_end - r.t_start, "postprocess": t1 - r.t_end,
            "latencies": [d.latency_s for d in decisions],
        })
        return decisions


def steady_state(records: list[dict], t_run: float, warmup_batches: int) -> dict:
    """Throughput, latency percentiles and stage times over the batches after the first ``warmup_batches``.

    The window runs from the end of the last warm-up batch (the loop's start when there is none) to the
    end of the last batch; "other" is the part of that window no stage accounts for.
    """
    if len(records) <= warmup_batches:
        raise RuntimeError(f"the loop ran {len(records)} batches, not more than the {warmup_batches} warm-up ones")
    timed = records[warmup_batches:]
    t0 = records[warmup_batches - 1]["t_end"] if warmup_batches else t_run
    window = timed[-1]["t_end"] - t0
    frames = sum(r["frames"] for r in timed)
    seconds = {k: sum(r[k] for r in timed) for k in STAGES if k != "other"}
    seconds["other"] = max(0.0, window - sum(seconds.values()))
    lat_ms = np.asarray([x for r in timed for x in r["latencies"]], np.float64) * 1e3
    p50, p95, p99 = (float(v) for v in np.percentile(lat_ms, PERCENTILES))
    return {
        "frames": frames, "batches": len(timed), "elapsed_s": window, "images_per_s": frames / window,
        "latency_p50_ms": p50, "latency_p95_ms": p95, "latency_p99_ms": p99,
        "stage_ms_per_image": {k: 1e3 * seconds[k] / frames for k in STAGES},
        "stage_share": {k: seconds[k] / window for k in STAGES},
    }


def run_timed_loop(runner: Runner, manifest: Manifest, video: Path, batch: int, work_dir: Path,
                   overlay: bool = True, batches: int = 10, warmup_batches: int = 1) -> dict:
    """Run the camera loop on ``video`` with an active ``runner`` for ``warmup_batches + batches``
    batches; steady-state frames/s, latency and stage times (see ``steady_state``).

    ``overlay`` adds what a line station does with each frame besides the decision: a heat-map overlay
    written to an annotated MJPG video. An event log (one JSON line per frame) is always written.
    """
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    source = TimedSource(open_source(str(video)))
    sinks = [EventLog(work_dir / "events.jsonl")]
    if overlay:
        sinks.append(AnnotatedVideo(work_dir / "annotated.avi", [source.fps]))
    timed = TimedRunner(runner)
    timed.activate()
    config = LoopConfig(batch=batch, drop=False, stats_every=0.0, max_frames=batch * (batches + warmup_batches))
    try:
        loop = TimedLoop(timed, manifest, source, config, sinks)
        summary = loop.run()
    finally:
        for sink in sinks:
            sink.close()
        source.release()
    if summary.frames < batch * (batches + warmup_batches):
        raise RuntimeError(f"the loop got {summary.frames} frames from {video}, expected "
                           f"{batch * (batches + warmup_batches)}: the video is too short or OpenCV cannot decode it")
    result = steady_state(loop.records, loop.t_run, warmup_batches)
    result.update(overlay=overlay, warmup_batches=warmup_batches, dropped=summary.dropped,
                  anomalous=summary.anomalous)
    return result


__all__ = ["TimedSource", "TimedRunner", "TimedLoop", "steady_state", "run_timed_loop", "STAGES"]
