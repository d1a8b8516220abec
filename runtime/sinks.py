"""Sinks: where decisions go. One small class each: EventLog, EvidenceWriter, AnnotatedVideo, DisplaySink.

A sink consumes ``Decision`` records (``emit``). Sinks that show pixels say so: ``needs_maps`` makes the
loop fetch anomaly maps at all, ``wants_view(decision)`` asks for the rendered overlay of one decision;
the loop renders a frame only when some sink wants it. ``start(context)`` hands each sink what the loop
runs with (manifest, threshold, cameras, capture counters) when it starts. ``StatsReporter`` is the
periodic stats line. The line outputs (web view, metrics, MQTT, webhook) live in ``monitor``, ``web``,
``metrics``, ``mqtt`` and ``webhook``.
"""
from __future__ import annotations

import logging
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import cv2
import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.files import PathLike, atomic_path
from aaclip.contract.manifest import Manifest
from aaclip.contract.score import ScoreParams

from .capture import CaptureHub
from .decide import ALARM, Decision, encode_event
from .overlay import View, evidence_image

log = logging.getLogger(__name__)

EVIDENCE_FORMATS = ("jpg", "png")
VIDEO_FOURCC = {".avi": "MJPG", ".mp4": "mp4v", ".mkv": "XVID"}
DEFAULT_VIDEO_FPS = 15.0


def slug(name: str, limit: int = 60) -> str:
    """A file-name-safe version of a source name."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")[:limit] or "source"


@dataclass(frozen=True)
class LoopContext:
    """What a running loop tells its sinks when it starts (``Sink.start``)."""

    manifest: Manifest
    params: ScoreParams          # the score parameters in use (threshold override applied)
    backend: str                 # the runner's name
    source_names: tuple[str, ...]
    capture: CaptureHub          # live per-camera counters (``capture.source_counts(i)``)
    sinks: tuple["Sink", ...]


class Sink:
    """Consumes decisions. ``order``: sinks with pixels run first (evidence paths reach the event log).
    ``name`` labels the sink in metrics; ``failures`` counts what it could not deliver or write."""

    name = "sink"
    needs_maps = False
    order = 0
    failures = 0
    stop_reason: Optional[str] = None  # set when the sink asks the loop to stop (the window's q key)

    def start(self, context: LoopContext) -> None:
        """Called once by the loop before the first frame."""

    def wants_view(self, decision: Decision) -> bool:
        return False

    def emit(self, decision: Decision, view: Optional[View]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class EventLog(Sink):
    """Events as JSON lines, appended and flushed one whole line at a time."""

    name = "events"
    order = 10

    def __init__(self, path: PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._f = open(self.path, "a", encoding="utf-8")
        self.count = 0

    def write(self, event: dict[str, Any]) -> None:
        self._f.write(encode_event(event) + "\n")
        self._f.flush()
        self.count += 1

    def emit(self, decision: Decision, view: Optional[View]) -> None:
        self.write(decision.event())

    def close(self) -> None:
        if not self._f.closed:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()


class EvidenceWriter(Sink):
    """Saves the frame and its overlay of every alarm frame atomically (temp file + rename: never a half
    file) as PNG or JPG; the path goes into the decision (and so into its event)."""

    name = "evidence"
    needs_maps = True

    def __init__(self, directory: PathLike, fmt: str = "jpg", jpeg_quality: int = 92):
        if fmt not in EVIDENCE_FORMATS:
            raise UserError(f"unknown evidence format {fmt!r}; choose {' or '.join(EVIDENCE_FORMATS)}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.fmt = fmt
        self.params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if fmt == "jpg" else []
        self.count = 0
        self.failures = 0

    def save(self, image: np.ndarray, source_name: str, frame_index: int, score: float) -> Optional[Path]:
        """Write one evidence image; returns its path, or None (logged) when the disk refuses it."""
        path = self.directory / f"{slug(source_name)}_{frame_index:08d}_{score:.3f}.{self.fmt}"
        try:
            with atomic_path(path, suffix=f".{self.fmt}") as tmp:
                if not cv2.imwrite(str(tmp), image, self.params):
                    raise OSError(f"cv2.imwrite could not write {tmp}")
        except (OSError, cv2.error) as e:
            self.failures += 1
            log.error("evidence %s not written: %s", path.name, e)
            return None
        self.count += 1
        return path

    def wants_view(self, decision: Decision) -> bool:
        return decision.state == ALARM

    def emit(self, decision: Decision, view: Optional[View]) -> None:
        if view is not None and decision.state == ALARM:
            path = self.save(evidence_image(view.frame, view.overlay), decision.source, decision.frame,
                             decision.score)
            decision.evidence = str(path) if path else None


class VideoSink:
    """A video file, opened on the first frame; written under a temporary name and renamed
    into place on ``close`` (an interrupted run leaves no half file at ``path``)."""

    def __init__(self, path: PathLike, fps: Optional[float] = None):
        self.path = Path(path)
        self.fps = fps or DEFAULT_VIDEO_FPS
        self.fourcc = VIDEO_FOURCC.get(self.path.suffix.lower(), "MJPG")
        self._writer: Optional[cv2.VideoWriter] = None
        self._atomic = None
        self.size: Optional[tuple[int, int]] = None
        self.count = 0

    def write(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if self._writer is None:
            self._atomic = atomic_path(self.path, suffix=self.path.suffix or ".avi")
            tmp = self._atomic.__enter__()
            self._writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self._writer.isOpened():
                self._abort()
                raise UserError(f"cannot write video {self.path} with codec {self.fourcc}; use a .avi file (MJPG)")
            self.size = (w, h)
        if (w, h) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.count += 1

    def _abort(self) -> None:
        if self._writer is not None:
            self._writer.release()
        self._writer = None
        if self._atomic is not None:
            try:
                self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)
            except RuntimeError:
                pass
            self._atomic = None

    def close(self) -> None:
        if self._writer is not None:
            self._writer.release()
            self._writer = None
            self._atomic.__exit__(None, None, None)
            self._atomic = None


class AnnotatedVideo(Sink):
    """Every decision's overlay written to a video, one file per source (``video_paths``)."""

    name = "video"
    needs_maps = True

    def __init__(self, path: PathLike, fps_per_source: Sequence[Optional[float]]):
        self.videos = [VideoSink(p, fps) for p, fps in zip(video_paths(path, len(fps_per_source)), fps_per_source)]

    def wants_view(self, decision: Decision) -> bool:
        return True

    def emit(self, decision: Decision, view: Optional[View]) -> None:
        if view is not None:
            self.videos[decision.source_index].write(view.overlay)

    def close(self) -> None:
        for video in self.videos:
            video.close()


def video_paths(path: PathLike, n_sources: int) -> list[Path]:
    """One video per source: ``out.avi`` for one camera, ``out_0.avi``, ``out_1.avi``... for several."""
    p = Path(path)
    if n_sources == 1:
        return [p]
    return [p.with_name(f"{p.stem}_{i}{p.suffix}") for i in range(n_sources)]


def display_available() -> bool:
    if sys.platform.startswith("linux"):
        return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    return True


class DisplaySink(Sink):
    """On-screen windows, one per source; q or Esc asks the loop to stop."""

    name = "display"
    needs_maps = True

    def __init__(self) -> None:
        if not display_available():
            raise UserError("--show needs a display (DISPLAY/WAYLAND_DISPLAY is not set); drop --show or "
                            "write a --video instead")
        self._windows: set[str] = set()

    def show(self, window: str, image: np.ndarray) -> bool:
        try:
            cv2.imshow(window, image)
            self._windows.add(window)
            key = cv2.waitKey(1) & 0xFF
        except cv2.error as e:
            raise UserError(f"this OpenCV cannot open windows ({str(e).strip().splitlines()[-1]}); it is a "
                            "headless build: drop --show or install an OpenCV with GUI support") from None
        return key in (ord("q"), 27)

    def wants_view(self, decision: Decision) -> bool:
        return True

    def emit(self, decision: Decision, view: Optional[View]) -> None:
        if view is not None and self.show(decision.source, view.overlay):
            self.stop_reason = "quit key"

    def close(self) -> None:
        if self._windows:
            try:
                cv2.destroyAllWindows()
            except cv2.error:
                pass


class StatsReporter:
    """Periodic stats line (capture FPS, inference FPS, dropped, p50/p95 latency) and run totals.

    Latencies (capture to decision) go into a preallocated ring of ``window`` values.
    """

    def __init__(self, every_s: float = 10.0, window: int = 4096, start: float = 0.0):
        self.every_s = every_s
        self._lat = np.zeros(window, dtype=np.float64)
        self.frames = 0
        self._last_t = start
        self._last_frames = 0
        self._last_captured = 0
        self.start = start

    def restart(self, start: float) -> None:
        """Count rates from ``start`` (the loop's start)."""
        self.start = self._last_t = start

    def record(self, latency_s: float) -> None:
        self._lat[self.frames % self._lat.size] = latency_s
        self.frames += 1

    def percentiles_ms(self, last: Optional[int] = None) -> tuple[float, float]:
        """p50 and p95 latency in ms over the ``last`` recorded frames (default: the whole window)."""
        n = min(self.frames, self._lat.size, self.frames if last is None else last)
        if n <= 0:
            return float("nan"), float("nan")
        end = self.frames % self._lat.size
        idx = (np.arange(end - n, end)) % self._lat.size
        p50, p95 = np.percentile(self._lat[idx], [50, 95])
        return float(p50) * 1e3, float(p95) * 1e3

    def maybe_report(self, now: float, captured: int, dropped: int, unreadable: int,
                     reconnects: int) -> Optional[str]:
        """Log and return a stats line when ``every_s`` has passed since the last one."""
        if self.every_s <= 0 or now - self._last_t < self.every_s:
            return None
        dt = max(now - self._last_t, 1e-9)
        p50, p95 = self.percentiles_ms(self.frames - self._last_frames)
        line = (f"capture {(captured - self._last_captured) / dt:.1f} fps | infer "
                f"{(self.frames - self._last_frames) / dt:.1f} fps | dropped {dropped} | unreadable {unreadable} "
                f"| reconnects {reconnects} | latency p50 {p50:.1f} ms p95 {p95:.1f} ms")
        log.info("%s", line)
        self._last_t, self._last_frames, self._last_captured = now, self.frames, captured
        return line
