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
import math
import os
import re
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import cv2
import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.files import PathLike, atomic_path, remove_stale_temps
from aaclip.contract.manifest import Manifest
from aaclip.contract.score import ScoreParams

from .capture import CaptureHub
from .decide import ALARM, NORMAL, Decision, encode_event
from .overlay import View, evidence_image
from .station.outputs import EVENT_MODES, EVIDENCE_FORMATS, EventsOutput, EvidenceOutput, VideoOutput

_EVENTS, _EVIDENCE, _VIDEO = EventsOutput(), EvidenceOutput(), VideoOutput()  # the station file's defaults

log = logging.getLogger(__name__)

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
    source_params: tuple = ()     # per camera: its ScoreParams (its artifact's constants, its threshold)
    source_manifests: tuple = ()  # per camera: the manifest of the artifact it runs (several in one station)
    source_backends: tuple = ()   # per camera: the runner's name

    def params_of(self, source: int) -> ScoreParams:
        return self.source_params[source] if self.source_params else self.params

    def manifest_of(self, source: int) -> Manifest:
        return self.source_manifests[source] if self.source_manifests else self.manifest

    def backend_of(self, source: int) -> str:
        return self.source_backends[source] if self.source_backends else self.backend


class Sink:
    """Consumes decisions. ``order``: sinks with pixels run first (evidence paths reach the event log).
    ``name`` labels the sink in metrics.

    A sink never stops the loop by failing to write: it counts the failure (``failures``, in the summary and
    in /metrics), logs the first one and every 100th, and goes on; the loop keeps deciding and alarming.
    """

    name = "sink"
    needs_maps = False
    order = 0
    failures = 0
    stop_reason: Optional[str] = None  # set when the sink asks the loop to stop (the window's q key)

    def failed(self, what: str, exc: BaseException) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 100 == 0:
            log.error("%s (%s); %d write failure(s) so far, inspection goes on", what, _reason(exc), self.failures)

    def start(self, context: LoopContext) -> None:
        """Called once by the loop before the first frame."""

    def tick(self, now: float) -> None:
        """Called by the loop on every turn (about every ``poll_s`` when no frame comes), when overridden."""

    def wants_view(self, decision: Decision) -> bool:
        return False

    def emit(self, decision: Decision, view: Optional[View]) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def open_output(path: Path, flags: int) -> int:
    """``os.open`` of an output file; a UserError naming the file and why when it cannot be opened."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, flags, 0o644)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {_reason(exc)}") from None


class EventLog(Sink):
    """Events as strict JSON lines, appended one whole line per ``write`` system call, on a bounded disk.

    ``mode``: ``decisions`` writes every decision; ``alarms`` writes the frames of alarms and, per camera,
    one summary line (``"type": "summary"``) every ``summary_every`` seconds of capture time. The file is
    rotated before a line would take it past ``max_bytes``: ``events.jsonl`` -> ``events.jsonl.1`` -> ... ->
    ``events.jsonl.{keep}``, the oldest deleted (``keep`` 0: the file starts again empty), so the log never
    holds more than ``(keep + 1) * max_bytes``.

    A write the disk refuses (full, read-only, I/O error) is counted and its partial bytes are cut off
    again, so the file never holds a half line.
    """

    name = "events"
    order = 10

    def __init__(self, path: PathLike, mode: str = _EVENTS.mode, max_bytes: Optional[int] = _EVENTS.max_bytes,
                 keep: int = _EVENTS.keep, summary_every: float = _EVENTS.summary_every):
        if mode not in EVENT_MODES:
            raise UserError(f"unknown events mode {mode!r}; choose {' or '.join(EVENT_MODES)}")
        self.path = Path(path)
        self.mode, self.max_bytes, self.keep, self.summary_every = mode, max_bytes, max(0, keep), summary_every
        self._fd: Optional[int] = open_output(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        self._size = os.fstat(self._fd).st_size
        self.count = 0
        self.rotations = 0
        self.bytes_written = 0  # over the sink's life, rotated-away files included
        self.summaries = 0
        self._summaries: dict[int, "_Summary"] = {}

    def write(self, event: dict[str, Any]) -> None:
        data = (encode_event(event) + "\n").encode("utf-8")
        if self.max_bytes is not None and self._size > 0 and self._size + len(data) > self.max_bytes:
            self._rotate()
        if self._fd is None:
            return
        start = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            written = os.write(self._fd, data)
            if written != len(data):
                raise OSError(28, f"short write ({written} of {len(data)} bytes)")
        except OSError as exc:
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                pass
            self.failed(f"event not written to {self.path}", exc)
            return
        self._size = start + written
        self.bytes_written += written
        self.count += 1

    def _rotate(self) -> None:
        """events.jsonl.{k} -> .{k+1} (the last one replaced), events.jsonl -> .1, a new events.jsonl."""
        os.close(self._fd)
        self._fd = None
        try:
            if self.keep == 0:
                self.path.unlink()
            else:
                for k in range(self.keep - 1, 0, -1):
                    older = self.path.with_name(f"{self.path.name}.{k}")
                    if older.exists():
                        os.replace(older, self.path.with_name(f"{self.path.name}.{k + 1}"))
                os.replace(self.path, self.path.with_name(f"{self.path.name}.1"))
            self.rotations += 1
        except OSError as exc:
            self.failed(f"{self.path} not rotated", exc)
        try:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            self._size = os.fstat(self._fd).st_size
        except OSError as exc:
            self.failed(f"{self.path} not reopened after rotation", exc)

    def files(self) -> list[Path]:
        """The event file and its rotated copies that exist, newest first."""
        names = [self.path] + [self.path.with_name(f"{self.path.name}.{k}") for k in range(1, self.keep + 1)]
        return [p for p in names if p.exists()]

    def emit(self, decision: Decision, view: Optional[View]) -> None:
        if self.mode == "decisions":
            self.write(decision.event())
            return
        summary = self._summaries.get(decision.source_index)
        if summary is None:
            summary = self._summaries[decision.source_index] = _Summary(decision.source, decision.wall_time)
            summary.run_id = decision.run_id
        elif decision.wall_time >= summary.start + self.summary_every:
            self.write(summary.event(summary.run_id))
            self.summaries += 1
            summary.__init__(decision.source, decision.wall_time)
            summary.run_id = decision.run_id
        summary.add(decision)
        if decision.state == ALARM:
            self.write(decision.event())

    def close(self) -> None:
        for summary in self._summaries.values():
            if summary.frames:
                self.write(summary.event(summary.run_id))
                self.summaries += 1
        self._summaries.clear()
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as exc:
                self.failed(f"events of {self.path} not synced to disk", exc)
            os.close(self._fd)
            self._fd = None


class _Summary:
    """One camera's decisions over a summary period (events ``mode = "alarms"``); ``add`` is the per-frame cost
    of that mode, so it does little."""

    __slots__ = ("source", "start", "end", "frames", "anomalous", "alarm_frames", "alarms", "score_max",
                 "score_sum", "scored", "threshold", "run_id")

    def __init__(self, source: str, start: float):
        self.source, self.start, self.end = source, start, start
        self.frames = self.anomalous = self.alarm_frames = self.alarms = self.scored = 0
        self.score_max, self.score_sum, self.threshold, self.run_id = float("-inf"), 0.0, float("nan"), ""

    def add(self, d: Decision) -> None:
        self.frames += 1
        if d.state != NORMAL:
            self.anomalous += 1
            self.alarm_frames += d.state == ALARM
            self.alarms += d.onset
        score = d.score
        if score == score:  # NaN (a broken output) is left out of max and mean
            self.scored += 1
            self.score_sum += score
            if score > self.score_max:
                self.score_max = score
        self.end, self.threshold = d.wall_time, d.threshold

    def event(self, run_id: str) -> dict[str, Any]:
        def iso(t: float) -> str:
            return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")

        return {"type": "summary", "timestamp": iso(self.end), "source": self.source, "from": iso(self.start),
                "frames": self.frames, "anomalous": self.anomalous, "alarm_frames": self.alarm_frames,
                "alarms": self.alarms, "score_max": round(self.score_max, 6) if self.scored else None,
                "score_mean": round(self.score_sum / self.scored, 6) if self.scored else None,
                "threshold": self.threshold if math.isfinite(self.threshold) else None, "run": run_id}


class EvidenceWriter(Sink):
    """Saves the frame and its overlay of every alarm frame atomically (temp file + rename: never a half
    file) as PNG or JPG; the path goes into the decision (and so into its event).

    The folder stays bounded: the oldest images (an earlier run's included) are deleted past ``max_files``,
    ``max_bytes`` or ``max_age_days`` (checked at each save and once a minute; ``clock`` gives the time)."""

    name = "evidence"
    needs_maps = True

    def __init__(self, directory: PathLike, fmt: str = _EVIDENCE.format, jpeg_quality: int = 92,
                 max_files: Optional[int] = _EVIDENCE.max_files, max_bytes: Optional[int] = _EVIDENCE.max_bytes,
                 max_age_days: Optional[float] = _EVIDENCE.max_age_days, clock: Callable[[], float] = time.time):
        if fmt not in EVIDENCE_FORMATS:
            raise UserError(f"unknown evidence format {fmt!r}; choose {' or '.join(EVIDENCE_FORMATS)}")
        if max_files is not None and max_files < 1:
            raise UserError(f"--evidence-max must be >= 1, got {max_files}")
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UserError(f"cannot write evidence into {self.directory}: {_reason(exc)}") from None
        remove_stale_temps(self.directory)
        self.fmt = fmt
        self.params = [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality] if fmt == "jpg" else []
        self.count = 0
        self.failures = 0
        self.rotated = 0
        self.max_files, self.max_bytes = max_files, max_bytes
        self.max_age_s = None if max_age_days is None else max_age_days * 86400.0
        self.clock = clock
        self.bytes = 0
        self._next_prune = 0.0
        # oldest first: what is already there (an earlier run's evidence counts against the caps too)
        self._kept: OrderedDict[Path, tuple[int, float]] = OrderedDict()
        existing = []
        for p in self.directory.glob(f"*.{fmt}"):
            try:
                st = p.stat()
            except OSError:
                continue
            existing.append((st.st_mtime, p, st.st_size))
        for mtime, p, size in sorted(existing):
            self._keep(p, size, mtime)
        self.prune()

    def _keep(self, path: Path, size: int, when: float) -> None:
        old = self._kept.pop(path, None)
        if old is not None:  # the same name written again (a later run): counted once
            self.bytes -= old[0]
        self._kept[path] = (size, when)
        self.bytes += size

    def prune(self) -> None:
        """Delete the oldest images while a cap is passed."""
        now = self.clock()
        self._next_prune = now + 60.0
        while self._kept and ((self.max_files is not None and len(self._kept) > self.max_files)
                              or (self.max_bytes is not None and self.bytes > self.max_bytes)
                              or (self.max_age_s is not None and now - next(iter(self._kept.values()))[1] > self.max_age_s)):
            old, (size, _) = self._kept.popitem(last=False)
            self.bytes -= size
            try:
                old.unlink()
                self.rotated += 1
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.failed(f"old evidence {old} not removed", exc)

    def tick(self, now: float) -> None:
        if self.max_age_s is not None and self.clock() >= self._next_prune:
            self.prune()

    def save(self, image: np.ndarray, source_name: str, frame_index: int, score: float) -> Optional[Path]:
        """Write one evidence image; returns its path, or None (logged) when the disk refuses it."""
        path = self.directory / f"{slug(source_name)}_{frame_index:08d}_{score:.3f}.{self.fmt}"
        try:
            with atomic_path(path, suffix=f".{self.fmt}") as tmp:
                if not cv2.imwrite(str(tmp), image, self.params):
                    raise OSError(f"cv2.imwrite could not write {tmp}")
                size = tmp.stat().st_size
        except (OSError, cv2.error) as e:
            self.failed(f"evidence {path} not written", e)
            return None
        self.count += 1
        self._keep(path, size, self.clock())
        self.prune()
        return path if path in self._kept else None

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
        self._tmp: Optional[Path] = None
        self.size: Optional[tuple[int, int]] = None
        self.count = 0

    def write(self, image: np.ndarray) -> None:
        h, w = image.shape[:2]
        if self._writer is None:
            self._atomic = atomic_path(self.path, suffix=self.path.suffix or ".avi")
            tmp = self._tmp = self._atomic.__enter__()
            self._writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*self.fourcc), self.fps, (w, h))
            if not self._writer.isOpened():
                self._abort()
                raise UserError(f"cannot write video {self.path} with codec {self.fourcc}; use a .avi file (MJPG)")
            self.size = (w, h)
        if (w, h) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
        self._writer.write(image)
        self.count += 1

    def bytes(self) -> int:
        """Bytes written so far (the temporary file's size)."""
        try:
            return os.stat(self._tmp).st_size if self._tmp is not None else 0
        except OSError:
            return 0

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
    """Every decision's overlay written to a video, one file per source (``video_paths``). A video that
    reaches ``max_bytes`` is finished (renamed into place) and that camera's later frames are not written."""

    name = "video"
    needs_maps = True
    CHECK_EVERY = 30  # frames between size checks

    def __init__(self, path: PathLike, fps_per_source: Sequence[Optional[float]],
                 max_bytes: Optional[int] = _VIDEO.max_bytes):
        self.max_bytes = max_bytes
        paths = video_paths(path, len(fps_per_source))
        for p in paths:
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise UserError(f"cannot write video {p}: {_reason(exc)}") from None
            if not os.access(p.parent, os.W_OK):
                raise UserError(f"cannot write video {p}: its folder is not writable")
            remove_stale_temps(p.parent)
        self.videos: list[Optional[VideoSink]] = [VideoSink(p, fps) for p, fps in zip(paths, fps_per_source)]

    def wants_view(self, decision: Decision) -> bool:
        return True

    def emit(self, decision: Decision, view: Optional[View]) -> None:
        video = self.videos[decision.source_index]
        if view is None or video is None:
            return
        try:
            video.write(view.overlay)
            if self.max_bytes is not None and video.count % self.CHECK_EVERY == 0 and video.bytes() >= self.max_bytes:
                log.warning("video %s reached %d bytes (max_bytes): finished; later frames of %s are not written",
                            video.path, self.max_bytes, decision.source)
                self.videos[decision.source_index] = None
                video.close()
        except (OSError, UserError, cv2.error) as exc:
            self.failed(f"video {video.path} stopped", exc)
            self.videos[decision.source_index] = None  # the other sinks and the decisions go on

    def close(self) -> None:
        for video in self.videos:
            if video is None:
                continue
            try:
                video.close()
            except OSError as exc:
                self.failed(f"video {video.path} not completed", exc)


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


class LatencyHistogram:
    """A streaming latency histogram: log-spaced bins (100 per decade, 10 us .. 1000 s), so percentiles
    cover a whole run of any length in constant memory, to within 1.2 % of the value."""

    LOW_S, DECADES, PER_DECADE = 1e-5, 8, 100

    def __init__(self) -> None:
        self.counts = np.zeros(self.DECADES * self.PER_DECADE + 2, dtype=np.int64)  # + underflow, overflow
        self.total = 0

    def add(self, seconds: float) -> None:
        if not seconds > 0:  # 0, negative clocks and NaN fall into the lowest bin
            i = 0
        else:
            i = int(np.floor(np.log10(seconds / self.LOW_S) * self.PER_DECADE)) + 1
            i = min(max(i, 0), self.counts.size - 1)
        self.counts[i] += 1
        self.total += 1

    def merge(self, other: "LatencyHistogram") -> None:
        self.counts += other.counts
        self.total += other.total

    def percentile_s(self, q: float) -> float:
        """The nearest-rank ``q`` percentile (0..100): the bin holding the ceil(q/100 * n)-th value, at its
        geometric centre; NaN when empty."""
        if self.total == 0:
            return float("nan")
        rank = max(1, int(np.ceil(q / 100.0 * self.total)))
        i = int(np.searchsorted(np.cumsum(self.counts), rank))
        if i == 0:
            return self.LOW_S
        return self.LOW_S * 10 ** ((i - 0.5) / self.PER_DECADE)


class StatsReporter:
    """Periodic stats line (capture FPS, inference FPS, dropped, p50/p95 latency) and run totals.

    Latencies (capture to decision) go into two streaming histograms: the whole run's and the current
    interval's (reset at every stats line).
    """

    def __init__(self, every_s: float = 10.0, start: float = 0.0):
        self.every_s = every_s
        self.run = LatencyHistogram()
        self.interval = LatencyHistogram()
        self.frames = 0
        self._last_t = start
        self._last_frames = 0
        self._last_captured = 0
        self.start = start

    def restart(self, start: float) -> None:
        """Count rates from ``start`` (the loop's start)."""
        self.start = self._last_t = start

    def record(self, latency_s: float) -> None:
        self.interval.add(latency_s)
        self.frames += 1

    def percentiles_ms(self) -> tuple[float, float]:
        """p50 and p95 latency in ms over the whole run."""
        run = LatencyHistogram()
        run.merge(self.run)
        run.merge(self.interval)
        return run.percentile_s(50) * 1e3, run.percentile_s(95) * 1e3

    def maybe_report(self, now: float, captured: int, dropped: int, unreadable: int,
                     reconnects: int) -> Optional[str]:
        """Log and return a stats line when ``every_s`` has passed since the last one (also while no frame
        comes: a stalled camera shows as 0 fps)."""
        if self.every_s <= 0 or now - self._last_t < self.every_s:
            return None
        dt = max(now - self._last_t, 1e-9)
        p50, p95 = self.interval.percentile_s(50) * 1e3, self.interval.percentile_s(95) * 1e3
        line = (f"capture {(captured - self._last_captured) / dt:.1f} fps | infer "
                f"{(self.frames - self._last_frames) / dt:.1f} fps | dropped {dropped} | unreadable {unreadable} "
                f"| reconnects {reconnects} | latency p50 {p50:.1f} ms p95 {p95:.1f} ms")
        log.info("%s", line)
        self.run.merge(self.interval)
        self.interval = LatencyHistogram()
        self._last_t, self._last_frames, self._last_captured = now, self.frames, captured
        return line
