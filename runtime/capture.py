"""Getting frames out of sources: skip unreadable frames, reconnect live sources, keep only the newest.

``SourceReader`` wraps one source (counting, skipping, reconnecting with backoff). ``CaptureHub`` feeds
the loop from several readers, in one of two modes:

- live (``drop=True``): one capture thread per source keeps only its newest frame; a frame replaced
  before the loop took it is dropped and counted, so latency stays bounded whatever the model speed;
- offline (``drop=False``): frames are read in the loop's thread, one after the other, none dropped.

``aaclip-runtime`` chooses live mode when a source is live (a camera, a stream) and offline mode for video
files and image folders, unless ``--drop``/``--no-drop`` says otherwise (``default_drop``).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np

from .sources import Source

log = logging.getLogger(__name__)

MAX_UNREADABLE_IN_A_ROW = 100  # a source delivering only broken frames: live -> reconnect, file -> ended
MIN_DELAY_S = 0.05  # the shortest reconnect delay, whatever --reconnect-delay says: a dead source never spins


@dataclass(frozen=True)
class Backoff:
    """Reconnect delays: ``initial``, then times ``factor`` each failed try, at most ``maximum`` seconds
    (never below ``MIN_DELAY_S``)."""

    initial: float = 0.5
    maximum: float = 10.0
    factor: float = 2.0

    def delays(self) -> Iterator[float]:
        delay = max(self.initial, MIN_DELAY_S)
        top = max(self.maximum, delay)
        while True:
            yield delay
            delay = min(delay * max(self.factor, 1.0), top)


@dataclass(frozen=True)
class SourceCounts:
    """One camera's capture counters so far."""

    captured: int
    dropped: int
    unreadable: int
    reconnects: int


@dataclass
class CapturedFrame:
    """One frame as read from a source, with where and when it came from."""

    source_index: int
    source_name: str
    index: int          # frames delivered by this source so far (dropped ones included)
    image: np.ndarray
    t_capture: float    # time.perf_counter() when read
    wall_time: float    # time.time() when read
    file: Optional[str] = None  # the image file it came from (image folders)


class SourceReader:
    """Reads one source: counts frames, skips unreadable ones, reconnects a live source that fails."""

    def __init__(self, source: Source, source_index: int, backoff: Backoff, stop: threading.Event):
        self.source = source
        self.source_index = source_index
        self.backoff = backoff
        self.stop = stop
        self.captured = 0
        self.unreadable = 0
        self.reconnects = 0          # times the source came back after it had delivered frames
        self.failed_reconnects = 0   # tries that did not bring it back (also while waiting for a first frame)
        self.ended = False
        self.down = False            # a source that had delivered frames is gone (reconnecting, or given up)

    def next(self) -> Optional[CapturedFrame]:
        """The next frame, or None when the source ended (file) or a stop was requested."""
        broken_in_a_row = 0
        while not self.stop.is_set() and not self.ended:
            ok, image = self.source.read()
            if ok and image is not None:
                frame = CapturedFrame(self.source_index, self.source.name, self.captured, image, time.perf_counter(),
                                      time.time(), self.source.frame_file)
                self.captured += 1
                return frame
            if ok:
                self.unreadable += 1
                broken_in_a_row += 1
                log.debug("%s: unreadable frame skipped (%d so far)", self.source.name, self.unreadable)
                if broken_in_a_row < MAX_UNREADABLE_IN_A_ROW:
                    continue
                if not self.source.is_live:  # e.g. a looping folder of broken files: nothing will ever come
                    log.error("%s: %d unreadable frames in a row and none readable; giving up on this source",
                              self.source.name, broken_in_a_row)
                    self.ended = self.down = True
                    return None
            if self.stop.is_set():
                return None
            if not self.source.is_live:
                self.ended = True
                log.info("%s: end of stream after %d frames", self.source.name, self.captured)
                return None
            broken_in_a_row = 0
            self._reconnect()
        return None

    def _reconnect(self) -> None:
        """Reopen a live source with backoff. Before its first frame (``--wait-for-source``) this is waiting,
        not reconnecting: coming up then is no reconnect, and the source is not counted as lost meanwhile."""
        name = self.source.name
        first = self.captured == 0 and self.reconnects == 0
        what = "connect" if first else "reconnect"
        if first:
            log.info("%s: waiting for its first frame", name)
        else:
            self.down = True
            log.warning("%s: no frame (unplugged or stalled); reconnecting", name)
        self.source.release()
        last_logged = None
        for attempt, delay in enumerate(self.backoff.delays(), start=1):
            if self.stop.wait(delay):
                return
            if self.source.open():
                if first:
                    log.info("%s: connected (try %d)", name, attempt)
                else:
                    self.reconnects += 1
                    self.down = False
                    log.warning("%s: reconnected (try %d)", name, attempt)
                return
            self.failed_reconnects += 1
            if delay != last_logged or attempt % 10 == 0:  # once per backoff step, then every 10th try
                log.warning("%s: %s try %d failed; retrying every %.2g s or slower", name, what, attempt, delay)
                last_logged = delay


class _LatestFrameWorker(threading.Thread):
    """Capture thread: always holds only the newest frame of its reader."""

    def __init__(self, reader: SourceReader, cond: threading.Condition):
        super().__init__(name=f"capture-{reader.source.name}", daemon=True)
        self.reader = reader
        self.cond = cond
        self.latest: Optional[CapturedFrame] = None
        self.dropped = 0
        self.done = False

    def run(self) -> None:
        try:
            while True:
                frame = self.reader.next()
                if frame is None:
                    break
                with self.cond:
                    if self.latest is not None:
                        self.dropped += 1
                    self.latest = frame
                    self.cond.notify_all()
        except Exception:  # a broken source must not hang the loop
            log.exception("%s: capture thread failed", self.reader.source.name)
        finally:
            with self.cond:
                self.done = True
                self.cond.notify_all()

    def take(self) -> Optional[CapturedFrame]:
        frame, self.latest = self.latest, None
        return frame


def default_drop(sources: Sequence[Source]) -> bool:
    """Live mode (newest frame only) when any source is live; every frame of files and folders otherwise."""
    return any(s.is_live for s in sources)


class CaptureHub:
    """Frames from several sources for the loop; ``gather(n)`` returns up to ``n`` frames."""

    def __init__(self, sources: Sequence[Source], drop: bool, backoff: Optional[Backoff] = None,
                 stop: Optional[threading.Event] = None, join_timeout: float = 2.0):
        self.stop = stop or threading.Event()
        self.readers = [SourceReader(s, i, backoff or Backoff(), self.stop) for i, s in enumerate(sources)]
        self.drop = drop
        self.join_timeout = join_timeout
        self._cond = threading.Condition()
        self._workers = [_LatestFrameWorker(r, self._cond) for r in self.readers] if drop else []
        self._next = 0  # round-robin start

    def start(self) -> None:
        for w in self._workers:
            w.start()

    @property
    def all_ended(self) -> bool:
        if self.drop:
            return all(w.done and w.latest is None for w in self._workers)
        return all(r.ended for r in self.readers)

    def gather(self, n: int, timeout: float = 0.1) -> list[CapturedFrame]:
        """Up to ``n`` frames, round robin over sources; may be empty (timeout, stop, or all ended)."""
        return self._gather_latest(n, timeout) if self.drop else self._gather_in_order(n)

    def _gather_latest(self, n: int, timeout: float) -> list[CapturedFrame]:
        with self._cond:
            if not any(w.latest is not None for w in self._workers):
                if self.stop.is_set() or all(w.done for w in self._workers):
                    return []
                self._cond.wait(timeout)
            frames = []
            k = len(self._workers)
            for _ in range(k):
                if len(frames) >= n:
                    break
                frame = self._workers[self._next].take()
                self._next = (self._next + 1) % k
                if frame is not None:
                    frames.append(frame)
            return frames

    def _gather_in_order(self, n: int) -> list[CapturedFrame]:
        frames: list[CapturedFrame] = []
        k = len(self.readers)
        while len(frames) < n and not self.stop.is_set() and not all(r.ended for r in self.readers):
            reader = self.readers[self._next]
            self._next = (self._next + 1) % k
            if not reader.ended:
                frame = reader.next()
                if frame is not None:
                    frames.append(frame)
        return frames

    # --- counters ---------------------------------------------------------------------------------
    def source_counts(self, i: int) -> SourceCounts:
        """Counters of source ``i`` (read from any thread: plain integers)."""
        r = self.readers[i]
        return SourceCounts(r.captured, self._workers[i].dropped if self._workers else 0, r.unreadable,
                            r.reconnects)

    @property
    def captured(self) -> int:
        return sum(r.captured for r in self.readers)

    @property
    def dropped(self) -> int:
        return sum(w.dropped for w in self._workers)

    @property
    def unreadable(self) -> int:
        return sum(r.unreadable for r in self.readers)

    @property
    def reconnects(self) -> int:
        return sum(r.reconnects for r in self.readers)

    @property
    def failed_reconnects(self) -> int:
        return sum(r.failed_reconnects for r in self.readers)

    @property
    def down(self) -> list[str]:
        """Names of the sources that delivered frames and are gone now (being reconnected, or given up)."""
        return [r.source.name for r in self.readers if r.down]

    def close(self) -> None:
        """Stop capture threads (each finishes its current read) and release every source."""
        self.stop.set()
        with self._cond:
            self._cond.notify_all()
        deadline = time.monotonic() + self.join_timeout
        for w in self._workers:
            w.join(max(0.0, deadline - time.monotonic()))
            if w.is_alive():
                log.warning("%s: capture thread still blocked in read(); leaving it", w.reader.source.name)
        for w in self._workers or []:
            if not w.is_alive():
                w.reader.source.release()
        if not self._workers:
            for r in self.readers:
                r.source.release()
