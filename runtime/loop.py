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
from typing import Callable, Optional, Sequence

from aaclip.contract.errors import UserError
from aaclip.contract.feeds import FeedBuilder
from aaclip.contract.manifest import Manifest, ManifestWatch
from aaclip.contract.score import ScoreParams
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
    source_thresholds: tuple = ()   # per source: a threshold or None (the manifest's); empty: ``threshold`` for all
    source_debounces: tuple = ()    # per source; empty: ``debounce`` for all
    reload_event: Optional[threading.Event] = None  # set (SIGHUP): ``on_reload(loop)`` runs between two batches
    on_reload: Optional[Callable[["CameraLoop"], None]] = None

    def threshold_of(self, source: int) -> Optional[float]:
        return self.source_thresholds[source] if self.source_thresholds else self.threshold

    def debounce_of(self, source: int) -> int:
        return self.source_debounces[source] if self.source_debounces else self.debounce


@dataclass
class Lane:
    """One artifact of a station: its activated runner, its manifest and the sources (indices into the loop's
    sources) it scores. Several lanes share one loop, its capture, its sinks and its line view."""

    runner: Runner
    manifest: Manifest
    sources: tuple[int, ...]
    feeds: Optional[FeedBuilder] = field(default=None, repr=False)
    watch: Optional[ManifestWatch] = field(default=None, repr=False)
    wanted: tuple[str, ...] = SCORE_OUTPUTS
    depth: int = 1
    down: bool = False


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
                 config: Optional[LoopConfig] = None, sinks: Sequence[Sink] = (), lanes: Sequence[Lane] = ()):
        """``runner``/``manifest`` score every source; or give ``lanes`` (one per artifact: its runner,
        manifest and sources) and ``runner``/``manifest`` are the first lane's."""
        config = config or LoopConfig()
        if not sources:
            raise UserError("no camera given; pass --camera at least once")
        if len(class_ids) != len(sources):
            raise ValueError("one class id per source")
        self.lanes = list(lanes) or [Lane(runner, manifest, tuple(range(len(sources))))]
        if sorted(i for lane in self.lanes for i in lane.sources) != list(range(len(sources))):
            raise ValueError("every source belongs to exactly one lane")
        self.runner, self.manifest = self.lanes[0].runner, self.lanes[0].manifest
        self.lane_of = [None] * len(sources)
        for lane in self.lanes:
            for i in lane.sources:
                self.lane_of[i] = lane
        self.sources = list(sources)
        self.class_ids = list(class_ids)
        self.config = config
        self.sinks = sorted(sinks, key=lambda s: s.order)
        self.run_id = uuid.uuid4().hex[:12]
        n = len(self.sources)
        self.decider = Decider([self._params_of(i) for i in range(n)], n, [config.debounce_of(i) for i in range(n)],
                               self.run_id, [self._calibrated_of(i) for i in range(n)])
        for lane in self.lanes:
            lane.watch = ManifestWatch(lane.manifest, config.reload_every_s)
            lane.feeds = FeedBuilder(lane.manifest, config.batch, allocate=lane.runner.lend_input)
            lane.depth = max(1, config.in_flight) if lane.runner.asynchronous else 1
        self._want_maps()
        self.depth = max(lane.depth for lane in self.lanes)
        self.stop_event = config.stop_event or threading.Event()
        self.stop_reason = "end"
        self.summary = Summary(run_id=self.run_id)
        self.stats = StatsReporter(config.stats_every)
        self._pending: deque[tuple[Lane, list[CapturedFrame], Optional[tuple[Pending, float]]]] = deque()
        self.context: Optional[LoopContext] = None
        self._tickers: list[Sink] = []

    @property
    def params(self) -> ScoreParams:
        """The first source's score parameters (see ``decider.source_params`` for every source's)."""
        return self.decider.params

    @property
    def feeds(self) -> FeedBuilder:
        """The first lane's feed builder."""
        return self.lanes[0].feeds

    @property
    def _backend_down(self) -> bool:
        return any(lane.down for lane in self.lanes)

    def _params_of(self, source: int) -> ScoreParams:
        return self.lane_of[source].manifest.score.with_threshold(self.config.threshold_of(source))

    def _calibrated_of(self, source: int) -> bool:
        """Whether a source's decisions use a threshold fitted on this line's good parts: not when set by hand."""
        return self.lane_of[source].manifest.calibrated and self.config.threshold_of(source) is None

    def _want_maps(self) -> None:
        maps = (MAP_OUTPUT,) if any(s.needs_maps for s in self.sinks) else ()
        for lane in self.lanes:
            lane.wanted = SCORE_OUTPUTS + maps

    def set_alarm_settings(self, thresholds: Sequence[Optional[float]], debounces: Sequence[int]) -> list[str]:
        """New per-source thresholds (None: the manifest's) and debounces, from the next frame on (call between
        two batches: from ``on_reload``); returns what changed, as text."""
        old = [(p.threshold, d.n) for p, d in zip(self.decider.source_params, self.decider.debouncers)]
        self.config.source_thresholds, self.config.source_debounces = tuple(thresholds), tuple(debounces)
        changed = []
        for i, (threshold, debounce) in enumerate(old):
            self.decider.set_source(i, self._params_of(i), self.config.debounce_of(i), self._calibrated_of(i))
            new = (self.decider.source_params[i].threshold, self.decider.debouncers[i].n)
            if new[0] != threshold:
                changed.append(f"{self.sources[i].name} threshold {threshold:.6g} -> {new[0]:.6g}")
            if new[1] != debounce:
                changed.append(f"{self.sources[i].name} debounce {debounce} -> {new[1]}")
        return changed

    def replace_sinks(self, remove: Sequence[Sink], add: Sequence[Sink]) -> None:
        """Close ``remove`` and start ``add`` between two batches (a reload changed those outputs)."""
        for sink in remove:
            self.sinks.remove(sink)
            try:
                sink.close()
            except Exception:  # noqa: BLE001 - a sink failing to close must not stop the loop
                log.exception("closing %s failed", type(sink).__name__)
        started = []
        try:
            for sink in add:
                sink.start(self._context_with(tuple(self.sinks) + tuple(add)))
                started.append(sink)
        except BaseException:
            for sink in started:
                sink.close()
            raise
        self.sinks = sorted(self.sinks + list(add), key=lambda s: s.order)
        self.context = self._context_with(tuple(self.sinks))
        self._tickers = [s for s in self.sinks if type(s).tick is not Sink.tick]
        self._want_maps()

    def _context_with(self, sinks: tuple) -> LoopContext:
        c = self.context
        return LoopContext(c.manifest, c.params, c.backend, c.source_names, c.capture, sinks,
                           tuple(self.decider.source_params), c.source_manifests, c.source_backends)

    def stop(self, reason: str = "signal") -> None:
        """Ask the loop to stop after the batch in progress (safe from a signal handler)."""
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()

    def run(self) -> Summary:
        cfg, s = self.config, self.summary
        hub = CaptureHub(self.sources, drop=cfg.drop, backoff=cfg.backoff, stop=self.stop_event)
        context = LoopContext(self.manifest, self.params, self.runner.name,
                              tuple(src.name for src in self.sources), hub, tuple(self.sinks),
                              tuple(self.decider.source_params), tuple(lane.manifest for lane in self.lane_of),
                              tuple(lane.runner.name for lane in self.lane_of))
        self.context = context
        self._tickers = [s for s in self.sinks if type(s).tick is not Sink.tick]
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
                if cfg.reload_event is not None and cfg.reload_event.is_set():
                    cfg.reload_event.clear()
                    if cfg.on_reload is not None:
                        cfg.on_reload(self)
                if self._backend_down:
                    self._reconnect_backend()
                    continue
                want = cfg.batch
                if cfg.max_frames is not None:
                    want = min(want, cfg.max_frames - s.frames - sum(len(f) for _, f, _ in self._pending))
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
                for sink in self._tickers:
                    sink.tick(now)
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

    def _reload_score(self, now: float) -> None:
        """Take new score constants when a manifest was recalibrated on disk (no restart needed)."""
        for lane in self.lanes:
            fresh = lane.watch.changed(now)
            if fresh is None:
                continue
            was_calibrated = [self.decider.source_calibrated[i] for i in lane.sources]
            old = [self.decider.source_params[i] for i in lane.sources]
            lane.manifest = fresh
            for i in lane.sources:
                self.decider.set_source(i, self._params_of(i), self.decider.debouncers[i].n, self._calibrated_of(i))
            if [self.decider.source_calibrated[i] for i in lane.sources] != was_calibrated:
                log.warning("manifest %s is %s now", fresh.path.name,
                            "calibrated" if fresh.calibrated else "no longer calibrated")
            new = [self.decider.source_params[i] for i in lane.sources]
            if new != old:
                by_hand = any(self.config.threshold_of(i) is not None for i in lane.sources)
                log.warning("manifest %s changed: score constants reloaded (threshold %.6g -> %.6g%s)",
                            fresh.path.name, old[0].threshold, new[0].threshold,
                            ", --threshold still overrides it" if by_hand else "")
                self.summary.reloads += 1

    def _batches(self, frames: list[CapturedFrame]) -> list[tuple[Lane, list[CapturedFrame]]]:
        """The gathered frames split by lane (one inference call per artifact), in order."""
        if len(self.lanes) == 1:
            return [(self.lanes[0], frames)] if frames else []
        out: dict[int, tuple[Lane, list[CapturedFrame]]] = {}
        for f in frames:
            lane = self.lane_of[f.source_index]
            out.setdefault(id(lane), (lane, []))[1].append(f)
        return list(out.values())

    def _process(self, frames: list[CapturedFrame]) -> list[Decision]:
        """One batch per lane: write, infer, decide, then render and emit each decision."""
        decisions: list[Decision] = []
        for lane, batch in self._batches(frames):
            decisions += self._finish(lane, batch, self._submit(lane, batch))
        return decisions

    def _pipeline(self, frames: list[CapturedFrame]) -> None:
        """Asynchronous backend: submit ``frames``, then decide every batch whose result is in (in order),
        waiting for the oldest when ``depth`` batches are out or nothing new came."""
        for lane, batch in self._batches(frames):
            self._pending.append((lane, batch, self._submit(lane, batch)))
        while self._pending and (len(self._pending) >= self.depth or not frames or self._pending[0][2] is None
                                 or self._pending[0][2][0].done()):
            self._finish(*self._pending.popleft())

    def _drain(self) -> None:
        while self._pending:
            self._finish(*self._pending.popleft())

    def _submit(self, lane: Lane, frames: list[CapturedFrame]) -> Optional[tuple[Pending, float]]:
        for i, f in enumerate(frames):
            lane.feeds.put(i, f.image, self.class_ids[f.source_index])
        t_submit = time.perf_counter()
        try:
            return lane.runner.submit(lane.feeds.feeds(len(frames)), lane.wanted), t_submit
        except BackendUnavailable as exc:
            self._lose(lane, frames, exc)
            return None

    def _lose(self, lane: Lane, frames: list[CapturedFrame], exc: BaseException) -> None:
        self.summary.lost += len(frames)
        if not lane.down:
            log.warning("%s backend unavailable (%s): %d frame(s) lost; reconnecting", lane.runner.name, exc,
                        len(frames))
        lane.down = True

    def _reconnect_backend(self) -> None:
        """Like a camera loss: in-flight batches end (lost or decided), then wait for the backend with backoff."""
        self._drain()
        for lane in self.lanes:
            if lane.down and lane.runner.reconnect(self.stop_event, self.config.backoff.delays()):
                self.summary.backend_reconnects += 1
                lane.down = False
                log.warning("%s backend is back after %d lost frame(s) so far", lane.runner.name, self.summary.lost)

    def _finish(self, lane: Lane, frames: list[CapturedFrame],
                submitted: Optional[tuple[Pending, float]]) -> list[Decision]:
        """Decide a submitted batch (its frames count as lost when the backend failed)."""
        if submitted is None:
            return []
        pending, t_submit = submitted
        try:
            out = pending.result()
        except BackendUnavailable as exc:
            self._lose(lane, frames, exc)
            return []
        t_done = time.perf_counter()
        names = [lane.manifest.classes[self.class_ids[f.source_index]] for f in frames]
        decisions = self.decider.decide(frames, names, out, t_done, t_done - t_submit)
        maps = out.get(MAP_OUTPUT)
        for i, (frame, decision) in enumerate(zip(frames, decisions)):
            self._emit(decision, frame, None if maps is None else maps[i])
        return decisions

    def _emit(self, decision: Decision, frame: CapturedFrame, amap) -> None:
        view = None
        if amap is not None and any(s.wants_view(decision) for s in self.sinks):
            view = render(frame.image, amap, decision, self.decider.source_params[decision.source_index])
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
