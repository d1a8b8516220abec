"""The line monitor: live per-camera state behind the web view, ``/metrics`` and ``/healthz``.

``LineMonitor`` is a sink. On the loop's thread it counts each decision and keeps short histories (scores
for the chart, latencies, the last alarms with a thumbnail). It asks the loop for a rendered view only
while someone watches a camera, at most ``view_fps`` times a second (and once per alarm onset, for the
alarm's thumbnail), and encodes that view once into the camera's latest-JPEG slot. Server threads only
read: snapshots taken under a short lock, and JPEG bytes that never change once stored. A slow or
stalled browser therefore holds neither a frame buffer nor the loop.
"""
from __future__ import annotations

import bisect
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Optional

import cv2
import numpy as np
from aaclip.contract.score import SHOWN_THRESHOLD

from .decide import Decision
from .overlay import View
from .sinks import LoopContext, Sink

if TYPE_CHECKING:
    from .reviews import ReviewLog

log = logging.getLogger(__name__)

CHART_POINTS = 300      # scores kept per camera for the live chart
LATENCY_WINDOW = 1024   # latencies kept per camera for p50/p95
FPS_WINDOW_S = 5.0      # frames per second over this many recent seconds
ALARMS_KEPT = 20        # last alarms listed per camera
THUMBNAIL_WIDTH = 240
JPEG_QUALITY = 80
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)


def encode_jpeg(image: np.ndarray, max_width: int, quality: int = JPEG_QUALITY) -> bytes:
    """``image`` scaled down to at most ``max_width`` pixels wide, as JPEG bytes (a new, immutable object)."""
    h, w = image.shape[:2]
    if w > max_width:
        image = cv2.resize(image, (max_width, max(1, round(h * max_width / w))), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise ValueError("cv2.imencode could not encode the view")
    return buf.tobytes()


def iso_time(wall_time: float) -> str:
    return datetime.fromtimestamp(wall_time, timezone.utc).isoformat(timespec="milliseconds")


def finite(value: float) -> Optional[float]:
    return float(value) if math.isfinite(value) else None


@dataclass(frozen=True)
class AlarmRecord:
    """One alarm onset as listed on the page."""

    seq: int
    wall_time: float
    frame: int
    class_name: str
    score: float
    evidence: Optional[str]
    thumbnail: Optional[bytes]  # JPEG of the overlay, None when no view could be rendered
    decision: Optional[Decision] = None  # what a review of this alarm records

    def as_dict(self, camera: int) -> dict[str, Any]:
        return {"seq": self.seq, "timestamp": iso_time(self.wall_time), "frame": self.frame,
                "class": self.class_name, "score": finite(self.score), "evidence": self.evidence,
                "thumbnail": f"/cam/{camera}/alarm/{self.seq}.jpg" if self.thumbnail else None}


class BucketCounts:
    """A histogram's counts (Prometheus ``le`` buckets), filled on the loop's thread at about a
    microsecond per value and read by ``/metrics`` (under the camera's lock)."""

    def __init__(self, bounds: tuple[float, ...] = LATENCY_BUCKETS_S):
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> list[tuple[str, int]]:
        """(upper bound, values at or below it) pairs, ending with ``+Inf``: the exposition's buckets."""
        out, total = [], 0
        for bound, n in zip((*map(str, self.bounds), "+Inf"), self.counts):
            total += n
            out.append((bound, total))
        return out


class CameraState:
    """One camera's counters, histories and latest JPEG. ``cond``'s lock guards everything; waiting on
    ``cond`` wakes when a new JPEG is stored or the monitor closes."""

    def __init__(self, index: int, name: str, label: str, t_start: float):
        self.index, self.name, self.label = index, name, label
        self.cond = threading.Condition()
        self.inspected = self.anomalous = self.alarm_frames = self.alarms = 0
        self.last: Optional[Decision] = None
        self.last_t = t_start  # perf_counter of the last decision (the loop's start before the first)
        self.scores: deque = deque(maxlen=CHART_POINTS)       # (wall_time, score)
        self.latencies: deque = deque(maxlen=LATENCY_WINDOW)  # seconds
        self.times: deque = deque(maxlen=LATENCY_WINDOW)      # perf_counter of decisions
        self.recent_alarms: deque = deque(maxlen=ALARMS_KEPT)  # newest first
        self.latency_buckets = BucketCounts()    # capture -> decision
        self.inference_buckets = BucketCounts()  # the backend call
        self.jpeg: Optional[bytes] = None
        self.jpeg_seq = 0
        self.watchers = 0
        self.next_view = 0.0
        self.on_screen: Optional[tuple[Decision, View]] = None  # the decision and view of ``jpeg``

    def record(self, d: Decision, now: float) -> None:
        """Count one decision (caller holds ``cond``)."""
        self.inspected += 1
        self.anomalous += d.anomalous
        self.alarm_frames += d.alarm
        self.alarms += d.onset
        self.last, self.last_t = d, now
        self.scores.append((d.wall_time, d.score))
        self.latencies.append(d.latency_s)
        self.times.append(now)
        self.latency_buckets.observe(d.latency_s)
        self.inference_buckets.observe(d.inference_s)

    def fps(self, now: float) -> float:
        """Decisions per second over the last ``FPS_WINDOW_S`` seconds (caller holds ``cond``)."""
        times = [t for t in self.times if now - t <= FPS_WINDOW_S]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-9)

    def alarm_jpeg(self, seq: int) -> Optional[bytes]:
        with self.cond:
            return next((a.thumbnail for a in self.recent_alarms if a.seq == seq), None)


def camera_labels(names: tuple[str, ...]) -> list[str]:
    """Metric labels: the camera names, made unique with ``#index`` where two cameras share a name."""
    return [n if names.count(n) == 1 else f"{n}#{i}" for i, n in enumerate(names)]


def model_identity(context: LoopContext, source: int = 0) -> dict[str, Any]:
    """What the page and ``aaclip_model_info`` say about the model of camera ``source`` (a station may run
    several artifacts)."""
    m = context.manifest_of(source)
    calibration = m.data["score"].get("calibration") or {}
    return {"artifact": m.artifact_path.name, "method": m.method, "precision": m.precision,
            "format": m.artifact_format, "backend": context.backend_of(source), "sha256": m.sha256[:12],
            "created": m.data.get("created"), "calibrated": m.calibrated,
            "calibration_date": calibration.get("date") if m.calibrated else None,
            "threshold": finite(context.params_of(source).threshold), "shown_threshold": SHOWN_THRESHOLD,
            "classes": list(m.classes)}


class LineMonitor(Sink):
    """Per-camera live state for the web view and the metrics (see the module's docstring)."""

    name = "web"
    needs_maps = True  # alarm thumbnails and the live view show the heat map
    order = 20         # after the evidence writer: an alarm's evidence path is known

    def __init__(self, view_fps: float = 5.0, view_width: int = 640, health_timeout_s: float = 10.0,
                 reviews: Optional["ReviewLog"] = None):
        if not view_fps > 0:
            raise ValueError(f"view_fps must be > 0, got {view_fps}")
        self.view_period = 1.0 / view_fps
        self.view_fps = view_fps
        self.view_width = view_width
        self.health_timeout_s = health_timeout_s
        self.cameras: list[CameraState] = []
        self.context: Optional[LoopContext] = None
        self.identity: dict[str, Any] = {}
        self.identities: list[dict[str, Any]] = []  # per camera: its artifact (a station may run several)
        self.started = threading.Event()
        self.closed = threading.Event()
        self.views = 0  # JPEGs encoded for the live view
        self.reviews = reviews  # operator reviews (``reviews``), None when off
        self.failures = 0

    # ---- the loop's side ---------------------------------------------------------------------------
    def start(self, context: LoopContext) -> None:
        now = time.perf_counter()
        labels = camera_labels(context.source_names)
        self.cameras = [CameraState(i, n, labels[i], now) for i, n in enumerate(context.source_names)]
        self.context = context
        self.identity = model_identity(context)
        self.identities = [model_identity(context, i) for i in range(len(context.source_names))]
        self.started.set()

    def _view_due(self, cam: CameraState, now: float) -> bool:
        return cam.watchers > 0 and now >= cam.next_view

    def wants_view(self, decision: Decision) -> bool:
        return decision.onset or self._view_due(self.cameras[decision.source_index], time.perf_counter())

    def emit(self, decision: Decision, view: Optional[View]) -> None:
        cam = self.cameras[decision.source_index]
        now = time.perf_counter()
        jpeg = thumbnail = None
        if view is not None:  # encoded here, outside the lock; server threads get finished bytes
            try:
                if self._view_due(cam, now):
                    cam.next_view = now + self.view_period
                    jpeg = encode_jpeg(view.overlay, self.view_width)
                if decision.onset:
                    thumbnail = encode_jpeg(view.overlay, THUMBNAIL_WIDTH)
            except (cv2.error, ValueError) as e:  # a view the page cannot show never stops the loop
                self.failures += 1
                log.error("line view: frame %d of %s not encoded: %s", decision.frame, cam.name, e)
        with cam.cond:
            cam.record(decision, now)
            if decision.onset:
                cam.recent_alarms.appendleft(AlarmRecord(cam.alarms, decision.wall_time, decision.frame,
                                                         decision.class_name, decision.score, decision.evidence,
                                                         thumbnail, decision))
            if jpeg is not None:
                cam.jpeg, cam.jpeg_seq = jpeg, cam.jpeg_seq + 1
                cam.on_screen = (decision, view)
                self.views += 1
                cam.cond.notify_all()

    def close(self) -> None:
        self.closed.set()
        for cam in self.cameras:
            with cam.cond:
                cam.cond.notify_all()
        if self.reviews is not None:
            self.reviews.close()

    # ---- the servers' side (any thread) -------------------------------------------------------------
    def camera(self, index: int) -> Optional[CameraState]:
        return self.cameras[index] if self.started.is_set() and 0 <= index < len(self.cameras) else None

    def alarm(self, cam: CameraState, seq: Any) -> Optional[AlarmRecord]:
        """Alarm ``seq`` among those the camera's page lists, or None."""
        with cam.cond:
            return next((a for a in cam.recent_alarms if a.seq == seq and not isinstance(seq, bool)), None)

    def on_screen(self, cam: CameraState) -> Optional[tuple[Decision, View]]:
        """The decision and view of the frame the live view shows now (None before the first)."""
        with cam.cond:
            return cam.on_screen

    def watch(self, cam: CameraState, delta: int) -> None:
        """A viewer starts (+1) or stops (-1) watching ``cam``; views are rendered while any watches."""
        with cam.cond:
            cam.watchers += delta
            if delta > 0:
                cam.next_view = 0.0  # the next decision's view, at once

    def next_jpeg(self, cam: CameraState, after_seq: int, timeout: float) -> tuple[Optional[bytes], int]:
        """The newest JPEG once its sequence number differs from ``after_seq`` (or the timeout passes)."""
        with cam.cond:
            cam.cond.wait_for(lambda: cam.jpeg_seq != after_seq or self.closed.is_set(), timeout)
            return cam.jpeg, cam.jpeg_seq

    def health(self, now: Optional[float] = None) -> dict[str, Any]:
        """Healthy when the loop runs and every camera delivered a frame within ``health_timeout_s``."""
        now = time.perf_counter() if now is None else now
        if not self.started.is_set() or self.closed.is_set():
            return {"healthy": False, "status": "stopped" if self.closed.is_set() else "starting", "cameras": [],
                    "timeout_s": self.health_timeout_s}
        cams = []
        for cam in self.cameras:
            age = now - cam.last_t
            cams.append({"camera": cam.name, "last_frame_age_s": round(age, 3),
                         "healthy": age <= self.health_timeout_s})
        healthy = all(c["healthy"] for c in cams)
        return {"healthy": healthy, "status": "ok" if healthy else "stale camera", "cameras": cams,
                "timeout_s": self.health_timeout_s}

    def counters(self, cam: CameraState) -> dict[str, Any]:
        """The camera's counters: the loop's (inspected, alarms...) and the capture's (dropped...)."""
        capture = self.context.capture.source_counts(cam.index)
        now = time.perf_counter()
        with cam.cond:
            counts = {"inspected": cam.inspected, "anomalous": cam.anomalous, "alarm_frames": cam.alarm_frames,
                      "alarms": cam.alarms, "fps": round(cam.fps(now), 2)}
            latencies = np.fromiter(cam.latencies, np.float64, len(cam.latencies))
        p50, p95 = (np.percentile(latencies, [50, 95]) * 1e3) if latencies.size else (math.nan, math.nan)
        counts.update(captured=capture.captured, dropped=capture.dropped, unreadable=capture.unreadable,
                      reconnects=capture.reconnects, latency_p50_ms=finite(round(float(p50), 3)),
                      latency_p95_ms=finite(round(float(p95), 3)))
        return counts

    def state(self, cam: CameraState) -> dict[str, Any]:
        """Everything the camera's page shows, as JSON-ready data."""
        counters = self.counters(cam)
        with cam.cond:
            last = cam.last
            scores = [[round(t, 3), finite(s)] for t, s in cam.scores]
            alarms = [a.as_dict(cam.index) for a in cam.recent_alarms]
            runs = [a.decision.run_id if a.decision else "" for a in cam.recent_alarms]
            screen = cam.on_screen[0].frame if cam.on_screen is not None else None
        health = self.health()
        reviews = None
        if self.reviews is not None:
            reviews = self.reviews.camera_state(cam.name)
            for alarm, run in zip(alarms, runs):
                alarm["run"], alarm["verdict"] = run, self.reviews.verdict_of(run, cam.name, alarm["frame"])
        return {
            "camera": {"index": cam.index, "name": cam.name},
            "cameras": [c.name for c in self.cameras],
            "model": dict(self.identities[cam.index], **({} if last is None else {"threshold": finite(last.threshold)})),
            "reviews": reviews,
            "screen_frame": screen,  # the frame the live view shows (a "missed defect" flag is about it)
            "counters": counters,
            "last": None if last is None else {"frame": last.frame, "score": finite(last.score),
                                               "decision": last.state, "timestamp": iso_time(last.wall_time)},
            "scores": scores,
            "alarms": alarms,
            "health": health["cameras"][cam.index] if health["cameras"] else None,
            "healthy": health["healthy"],
            "view_fps": self.view_fps,
        }
