"""The camera loop: frames -> one batched inference -> decide -> render (only when wanted) -> emit.

A frame's way from a camera to its decision: ``sources`` reads it, ``capture`` hands it over (newest
frame per live source, or every frame offline), the loop writes it once into the runner's lent input
buffer (``aaclip.contract.feeds.FeedBuilder``) and runs the batch, ``decide`` turns ``map_max`` and
``cls_score`` into one ``Decision`` per frame. Anomaly maps are fetched only when a sink shows pixels, and
a frame is rendered only when a sink wants that decision's view. Runs with any ``Runner`` and ``Source``
(tests inject fakes).

On an asynchronous backend (a Triton server) the loop keeps up to ``in_flight`` batches on the server and
decides them in order as their results arrive, so several cameras keep the server's batcher fed. A lost
server is handled like a lost camera: the frames of the failed batches are counted as lost, the loop waits
for the server with the reconnect backoff and goes on.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import Optional, Sequence

from aaclip.contract.errors import UserError
from aaclip.contract.feeds import FeedBuilder
from aaclip.contract.manifest import Manifest, ManifestWatch
from aaclip.contract.tensors import MAP_OUTPUT, SCORE_OUTPUTS

from .backends.base import BackendUnavailable, Pending, Runner
from .capture import Backoff, CapturedFrame, CaptureHub
from .decide import ALARM, Decider, Decision
from .overlay import render
from .sinks import LoopContext, Sink, StatsReporter
from .sources import Source

log = logging.getLogger(__name__)


@dataclass
class LoopConfig:
    batch: int = 1
    drop: bool = True               # live mode: keep only the newest frame per source
    threshold: Optional[float] = None  # overrides the manifest's score.threshold
    debounce: int = 1               # consecutive anomalous frames before an alarm
    max_frames: Optional[int] = None
    stats_every: float = 10.0       # seconds between stats lines; 0 = none
    backoff: Backoff = field(default_factory=Backoff)
    poll_s: float = 0.1             # how often an idle loop checks for a stop
    stop_event: Optional[threading.Event] = None  # set by signal handlers installed before the sources open
    reload_every_s: float = 2.0     # how often the manifest is checked for new score constants; 0 = never
    in_flight: int = 1              # batches an asynchronous backend (a server) holds before the oldest is awaited


@dataclass
class Summary:
    frames: int = 0
    anomalous: int = 0       # frames at or above the threshold
    alarm_frames: int = 0    # frames in the alarm state (debounced)
    alarms: int = 0          # alarm onsets
    captured: int = 0
    dropped: int = 0
    unreadable: int = 0
    reconnects: int = 0
    failed_reconnects: int = 0   # reconnect (or first connect) tries that failed
    sources_lost: tuple = ()     # sources that had delivered frames and were gone when the run ended
    evidence: int = 0
    write_failures: int = 0  # events, evidence or video frames a sink could not write (disk full, read-only)
    reloads: int = 0         # times new score constants were taken from a recalibrated manifest
    run_id: str = ""
    elapsed_s: float = 0.0
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    stopped_by: str = "end"
    lost: int = 0                # frames whose inference was lost with the backend (server down)
    backend_reconnects: int = 0  # times the loop got the backend back after losing it

    @property
    def infer_fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def count(self, decision: Decision) -> None:
        self.frames += 1
        self.anomalous += decision.anomalous
        self.alarm_frames += decision.state == ALARM
        self.evidence += decision.evidence is not None

    def text(self) -> str:
        return (f"summary: {self.frames} frames in {self.elapsed_s:.1f} s ({self.infer_fps:.1f} fps), "
                f"{self.anomalous} anomalous, {self.alarms} alarms ({self.alarm_frames} alarm frames), "
                f"captured {self.captured}, dropped {self.dropped}, unreadable {self.unreadable}, "
                f"reconnects {self.reconnects}{self._failed_tries()}, evidence {self.evidence}, "
                f"write failures {self.write_failures}, "
                f"latency p50 {self.p50_ms:.1f} ms p95 {self.p95_ms:.1f} ms, stopped by {self.stopped_by}, "
                f"lost {self.lost}, backend reconnects {self.backend_reconnects}, run {self.run_id}"
                + (f"; source lost: {', '.join(self.sources_lost)}" if self.sources_lost else ""))

    def _failed_tries(self) -> str:
        return f" ({self.failed_reconnects} failed tries)" if self.failed_reconnects else ""


def source_classes(manifest: Manifest, names: Sequence[str], n_sources: int) -> list[int]:
    """Class index per source from ``--class`` (none, one for all, or one per camera)."""
    if len(names) not in (0, 1, n_sources):
        raise UserError(f"give --class once, or once per camera ({n_sources} cameras, {len(names)} --class)")
    if not names:
        if len(manifest.classes) > 1:
            raise UserError(f"{manifest.artifact_path.name} holds several classes; choose with --class NAME "
                            f"(once, or once per camera); available: {', '.join(manifest.classes)}")
        return [0] * n_sources
    ids = [manifest.class_index(n) for n in names]
    return ids * n_sources if len(ids) == 1 else ids


class CameraLoop:
    """Runs ``runner`` (activated by the caller) on frames from ``sources`` until they end, ``max_frames``
    or ``stop()``; every decision goes to every sink."""

    def __init__(self, runner: Runner, manifest: Manifest, sources: Sequence[Source], class_ids: Sequence[int],
                 config: Optional[LoopConfig] = None, sinks: Sequence[Sink] = ()):
        config = config or LoopConfig()
        if not sources:
            raise UserError("no camera given; pass --camera at least once")
        if len(class_ids) != len(sources):
            raise ValueError("one class id per source")
        self.runner = runner
        self.manifest = manifest
        self.sources = list(sources)
        self.class_ids = list(class_ids)
        self.config = config
        self.sinks = sorted(sinks, key=lambda s: s.order)
        self.params = manifest.score.with_threshold(config.threshold)
        self.run_id = uuid.uuid4().hex[:12]
        self.decider = Decider(self.params, len(self.sources), config.debounce, self.run_id, self._calibrated(manifest))
        self._reload = ManifestWatch(manifest, config.reload_every_s)
        self.feeds = FeedBuilder(manifest, config.batch, allocate=runner.lend_input)
        self.stop_event = config.stop_event or threading.Event()
        self.stop_reason = "end"
        self.summary = Summary(run_id=self.run_id)
        self.stats = StatsReporter(config.stats_every)
        self._wanted = SCORE_OUTPUTS + ((MAP_OUTPUT,) if any(s.needs_maps for s in self.sinks) else ())
        self.depth = max(1, config.in_flight) if runner.asynchronous else 1
        self._pending: deque[tuple[list[CapturedFrame], Optional[tuple[Pending, float]]]] = deque()
        self._backend_down = False

    def stop(self, reason: str = "signal") -> None:
        """Ask the loop to stop after the batch in progress (safe from a signal handler)."""
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()

    def run(self) -> Summary:
        cfg, s = self.config, self.summary
        hub = CaptureHub(self.sources, drop=cfg.drop, backoff=cfg.backoff, stop=self.stop_event)
        context = LoopContext(self.manifest, self.params, self.runner.name,
                              tuple(src.name for src in self.sources), hub, tuple(self.sinks))
        try:  # before any thread runs: a sink that cannot start leaves nothing running
            for sink in self.sinks:
                sink.start(context)
        except BaseException:
            self._close_sinks()
            raise
        t0 = time.perf_counter()
        self.stats.restart(t0)
        hub.start()
        try:
            while not self.stop_event.is_set():
                if self._backend_down:
                    self._reconnect_backend()
                    continue
                want = cfg.batch
                if cfg.max_frames is not None:
                    want = min(want, cfg.max_frames - s.frames - sum(len(f) for f, _ in self._pending))
                    if want <= 0 and not self._pending:
                        self.stop("max-frames")
                        break
                frames = hub.gather(want, cfg.poll_s if not self._pending else 0.002) if want > 0 else []
                if frames or self._pending:
                    if self.depth == 1:
                        self._process(frames)
                    else:
                        self._pipeline(frames)
                elif hub.all_ended:
                    break
                now = time.perf_counter()
                self.stats.maybe_report(now, hub.captured, hub.dropped, hub.unreadable, hub.reconnects)
                self._reload_score(now)
        finally:
            self._drain()
            hub.close()
            self._close_sinks()
            s.elapsed_s = time.perf_counter() - t0
            s.captured, s.dropped = hub.captured, hub.dropped
            s.unreadable, s.reconnects = hub.unreadable, hub.reconnects
            s.failed_reconnects, s.sources_lost = hub.failed_reconnects, tuple(hub.down)
            s.alarms = self.decider.alarms
            s.write_failures = sum(getattr(sink, "failures", 0) for sink in self.sinks)
            s.p50_ms, s.p95_ms = self.stats.percentiles_ms()
            s.stopped_by = self.stop_reason
        return s

    def _calibrated(self, manifest: Manifest) -> bool:
        """Whether decisions use a threshold fitted on this line's good parts: not with --threshold."""
        return manifest.calibrated and self.config.threshold is None

    def _reload_score(self, now: float) -> None:
        """Take new score constants when the manifest was recalibrated on disk (no restart needed)."""
        fresh = self._reload.changed(now)
        if fresh is None:
            return
        params = fresh.score.with_threshold(self.config.threshold)
        if self._calibrated(fresh) != self.decider.calibrated:
            log.warning("manifest %s is %s now", self.manifest.path.name,
                        "calibrated" if fresh.calibrated else "no longer calibrated")
            self.decider.calibrated = self._calibrated(fresh)
        if params != self.params:
            log.warning("manifest %s changed: score constants reloaded (threshold %.6g -> %.6g%s)",
                        self.manifest.path.name, self.params.threshold, params.threshold,
                        ", --threshold still overrides it" if self.config.threshold is not None else "")
            self.params = self.decider.params = params
            self.summary.reloads += 1

    def _process(self, frames: list[CapturedFrame]) -> list[Decision]:
        """One batch: write, infer, decide, then render and emit each decision."""
        return self._finish(frames, self._submit(frames)) if frames else []

    def _pipeline(self, frames: list[CapturedFrame]) -> None:
        """Asynchronous backend: submit ``frames``, then decide every batch whose result is in (in order),
        waiting for the oldest when ``depth`` batches are out or nothing new came."""
        if frames:
            self._pending.append((frames, self._submit(frames)))
        while self._pending and (len(self._pending) >= self.depth or not frames or self._pending[0][1] is None
                                 or self._pending[0][1][0].done()):
            self._finish(*self._pending.popleft())

    def _drain(self) -> None:
        while self._pending:
            self._finish(*self._pending.popleft())

    def _submit(self, frames: list[CapturedFrame]) -> Optional[tuple[Pending, float]]:
        for i, f in enumerate(frames):
            self.feeds.put(i, f.image, self.class_ids[f.source_index])
        t_submit = time.perf_counter()
        try:
            return self.runner.submit(self.feeds.feeds(len(frames)), self._wanted), t_submit
        except BackendUnavailable as exc:
            self._lose(frames, exc)
            return None

    def _lose(self, frames: list[CapturedFrame], exc: BaseException) -> None:
        self.summary.lost += len(frames)
        if not self._backend_down:
            log.warning("%s backend unavailable (%s): %d frame(s) lost; reconnecting", self.runner.name, exc,
                        len(frames))
        self._backend_down = True

    def _reconnect_backend(self) -> None:
        """Like a camera loss: in-flight batches end (lost or decided), then wait for the backend with backoff."""
        self._drain()
        if self.runner.reconnect(self.stop_event, self.config.backoff.delays()):
            self.summary.backend_reconnects += 1
            self._backend_down = False
            log.warning("%s backend is back after %d lost frame(s) so far", self.runner.name, self.summary.lost)

    def _finish(self, frames: list[CapturedFrame], submitted: Optional[tuple[Pending, float]]) -> list[Decision]:
        """Decide a submitted batch (its frames count as lost when the backend failed)."""
        if submitted is None:
            return []
        pending, t_submit = submitted
        try:
            out = pending.result()
        except BackendUnavailable as exc:
            self._lose(frames, exc)
            return []
        t_done = time.perf_counter()
        names = [self.manifest.classes[self.class_ids[f.source_index]] for f in frames]
        decisions = self.decider.decide(frames, names, out, t_done, t_done - t_submit)
        maps = out.get(MAP_OUTPUT)
        for i, (frame, decision) in enumerate(zip(frames, decisions)):
            self._emit(decision, frame, None if maps is None else maps[i])
        return decisions

    def _emit(self, decision: Decision, frame: CapturedFrame, amap) -> None:
        view = None
        if amap is not None and any(s.wants_view(decision) for s in self.sinks):
            view = render(frame.image, amap, decision, self.params)
        for sink in self.sinks:
            sink.emit(decision, view)
            if sink.stop_reason:
                self.stop(sink.stop_reason)
        if decision.onset:
            log.warning("ALARM %s frame %d: %s score %.2f (raw %.4g)", decision.source, decision.frame,
                        decision.class_name, decision.score, decision.raw_score)
        self.summary.count(decision)
        self.stats.record(decision.latency_s)

    def _close_sinks(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - one sink failing to close must not hide the others
                log.exception("closing %s failed", type(sink).__name__)
