"""The camera loop: frames -> one batched inference -> image scores -> debounced decisions -> outputs.

Kept lean: the batch and class-id arrays are preallocated, frames are fitted straight into the batch,
and the anomaly maps are fetched from the backend only when a visual output (evidence, video, window)
needs them; decisions use ``map_max`` alone. Runs with any ``Runner`` and ``Source`` (tests inject fakes).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Optional, Sequence

import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.feeds import fit_frame
from aaclip.contract.manifest import Manifest
from aaclip.contract.score import image_score
from aaclip.runtime.decide import ALARM, ANOMALOUS, Debouncer

from .backends.base import Runner
from .capture import Backoff, CaptureHub, Frame
from .overlay import ALARM_COLOR, ANOMALOUS_COLOR, NORMAL_COLOR, draw_banner, evidence_image, heat_overlay
from .sinks import DisplaySink, EventLog, EvidenceWriter, StatsReporter, VideoSink
from .sources import Source

log = logging.getLogger(__name__)

MAP_OUTPUT, MAX_OUTPUT, CLS_OUTPUT = "anomaly_map", "map_max", "cls_score"
DECISION_COLORS = {ALARM: ALARM_COLOR, ANOMALOUS: ANOMALOUS_COLOR}


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


@dataclass
class Outputs:
    """Optional outputs; ``videos`` holds one VideoSink per source (or is empty)."""

    events: Optional[EventLog] = None
    evidence: Optional[EvidenceWriter] = None
    videos: Sequence[VideoSink] = ()
    display: Optional[DisplaySink] = None

    @property
    def need_maps(self) -> bool:
        return self.evidence is not None or bool(self.videos) or self.display is not None

    def close(self) -> None:
        for sink in (self.events, self.evidence, *self.videos, self.display):
            if sink is not None:
                try:
                    sink.close()
                except Exception:
                    log.exception("closing %s failed", type(sink).__name__)


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
    evidence: int = 0
    elapsed_s: float = 0.0
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    stopped_by: str = "end"

    @property
    def infer_fps(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def text(self) -> str:
        return (f"summary: {self.frames} frames in {self.elapsed_s:.1f} s ({self.infer_fps:.1f} fps), "
                f"{self.anomalous} anomalous, {self.alarms} alarms ({self.alarm_frames} alarm frames), "
                f"captured {self.captured}, dropped {self.dropped}, unreadable {self.unreadable}, "
                f"reconnects {self.reconnects}, evidence {self.evidence}, latency p50 {self.p50_ms:.1f} ms "
                f"p95 {self.p95_ms:.1f} ms, stopped by {self.stopped_by}")


def resolve_classes(manifest: Manifest, names: Sequence[str], n_sources: int) -> list[int]:
    """Class index per source from ``--class`` (none, one for all, or one per camera)."""
    if len(names) not in (0, 1, n_sources):
        raise UserError(f"give --class once, or once per camera ({n_sources} cameras, {len(names)} --class)")
    if not names:
        if len(manifest.classes) > 1 and manifest.class_input is not None:
            raise UserError(f"{manifest.artifact_path.name} holds several classes; choose with --class NAME "
                            f"(once, or once per camera); available: {', '.join(manifest.classes)}")
        return [0] * n_sources
    ids = [manifest.class_index(n) for n in names]
    return ids * n_sources if len(ids) == 1 else ids


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


class CameraLoop:
    """Runs ``runner`` (activated by the caller) on frames from ``sources`` until they end, ``max_frames``
    or ``stop()``."""

    def __init__(self, runner: Runner, manifest: Manifest, sources: Sequence[Source], class_ids: Sequence[int],
                 config: Optional[LoopConfig] = None, outputs: Optional[Outputs] = None):
        config = config or LoopConfig()
        if not sources:
            raise UserError("no camera given; pass --camera at least once")
        if len(class_ids) != len(sources):
            raise ValueError("one class id per source")
        if config.batch < 1:
            raise UserError(f"--batch must be >= 1, got {config.batch}")
        if manifest.batch_max is not None and config.batch > manifest.batch_max:
            raise UserError(f"--batch {config.batch} exceeds the artifact's max batch {manifest.batch_max}; lower "
                            "--batch or rebuild the engine with a larger batch profile")
        if outputs is not None and outputs.videos and len(outputs.videos) != len(sources):
            raise ValueError("one VideoSink per source")
        self.runner = runner
        self.manifest = manifest
        self.sources = list(sources)
        self.class_ids = list(class_ids)
        self.config = config
        self.outputs = outputs or Outputs()
        self.params = manifest.score.with_threshold(config.threshold)
        self.debouncers = [Debouncer(config.debounce) for _ in sources]
        self.stop_event = threading.Event()
        self.stop_reason = "end"
        self.summary = Summary()

        # Preallocated inputs; feeds[n] holds views for a batch of n (n >= the profile's min batch).
        b = max(config.batch, manifest.batch_min)
        self._batch = np.zeros((b, manifest.height, manifest.width, 3), dtype=np.uint8)
        self._class = np.zeros((b,), dtype=np.int64)
        self._feeds = {}
        for n in range(1, b + 1):
            feed = {manifest.input_name: self._batch[:n]}
            if manifest.class_input is not None:
                feed[manifest.class_input] = self._class[:n]
            self._feeds[n] = feed
        self._wanted = (MAX_OUTPUT, CLS_OUTPUT) + ((MAP_OUTPUT,) if self.outputs.need_maps else ())

    def stop(self, reason: str = "signal") -> None:
        """Ask the loop to stop after the batch in progress (safe from a signal handler)."""
        if not self.stop_event.is_set():
            self.stop_reason = reason
            self.stop_event.set()

    def run(self) -> Summary:
        cfg, s = self.config, self.summary
        hub = CaptureHub(self.sources, drop=cfg.drop, backoff=cfg.backoff, stop=self.stop_event)
        stats = StatsReporter(cfg.stats_every, start=time.perf_counter())
        t0 = time.perf_counter()
        hub.start()
        try:
            while not self.stop_event.is_set():
                want = cfg.batch
                if cfg.max_frames is not None:
                    want = min(want, cfg.max_frames - s.frames)
                    if want <= 0:
                        self.stop("max-frames")
                        break
                frames = hub.gather(want, cfg.poll_s)
                if not frames:
                    if hub.all_ended:
                        break
                    continue
                self._process(frames, stats)
                stats.maybe_report(time.perf_counter(), hub.captured, hub.dropped, hub.unreadable, hub.reconnects)
        finally:
            hub.close()
            self.outputs.close()
            s.elapsed_s = time.perf_counter() - t0
            s.captured, s.dropped = hub.captured, hub.dropped
            s.unreadable, s.reconnects = hub.unreadable, hub.reconnects
            s.alarms = sum(d.alarms for d in self.debouncers)
            s.evidence = self.outputs.evidence.count if self.outputs.evidence else 0
            s.p50_ms, s.p95_ms = stats.percentiles_ms()
            s.stopped_by = self.stop_reason
        return s

    def _process(self, frames: list[Frame], stats: StatsReporter) -> None:
        m, n = self.manifest, len(frames)
        for i, f in enumerate(frames):
            fit_frame(f.image, m.height, m.width, out=self._batch[i])
            self._class[i] = self.class_ids[f.source_index]
        n_feed = max(n, m.batch_min)
        if n_feed > n:  # engine profile needs more images: repeat the last one, ignore its results
            self._batch[n:n_feed] = self._batch[n - 1]
            self._class[n:n_feed] = self._class[n - 1]
        out = self.runner.infer(self._feeds[n_feed], self._wanted)
        map_max, cls_score = out[MAX_OUTPUT][:n], out[CLS_OUTPUT][:n]
        scores = image_score(map_max, cls_score, self.params)
        t_done = time.perf_counter()
        for i, f in enumerate(frames):
            self._handle(f, float(scores[i]), float(map_max[i]), float(cls_score[i]),
                         out[MAP_OUTPUT][i] if MAP_OUTPUT in out else None, t_done)
            stats.record(t_done - f.t_capture)

    def _handle(self, f: Frame, score: float, map_max: float, cls_score: float,
                amap: Optional[np.ndarray], t_done: float) -> None:
        s, o = self.summary, self.outputs
        anomalous = score >= self.params.threshold
        decision = self.debouncers[f.source_index].update(anomalous)
        s.frames += 1
        s.anomalous += anomalous
        s.alarm_frames += decision == ALARM
        source = self.sources[f.source_index]
        class_name = self.manifest.classes[self.class_ids[f.source_index]]
        latency_ms = (t_done - f.t_capture) * 1e3

        evidence_path = None
        if amap is not None and (o.videos or o.display or (o.evidence and decision == ALARM)):
            overlay = heat_overlay(f.image, amap, self.params)
            draw_banner(overlay, f"{class_name} {score:.3f} {decision}", DECISION_COLORS.get(decision, NORMAL_COLOR))
            if o.evidence and decision == ALARM:
                evidence_path = o.evidence.save(evidence_image(f.image, overlay), source.name, f.index, score)
            if o.videos:
                o.videos[f.source_index].write(overlay)
            if o.display is not None and o.display.show(source.name, overlay):
                self.stop("quit key")
        if decision == ALARM and self.debouncers[f.source_index].streak == self.config.debounce:
            log.warning("ALARM %s frame %d: %s score %.3f", source.name, f.index, class_name, score)
        if o.events is not None:
            o.events.write({
                "timestamp": _iso(f.wall_time), "source": source.name, "frame": f.index, "class": class_name,
                "score": round(score, 6), "decision": decision, "anomalous": bool(anomalous),
                "alarm": decision == ALARM, "map_max": round(map_max, 6), "cls_score": round(cls_score, 6),
                "threshold": self.params.threshold, "latency_ms": round(latency_ms, 3),
                "evidence": str(evidence_path) if evidence_path else None,
            })
