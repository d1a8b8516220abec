"""Operator reviews on the line view: the reviews log of a running station, and the review requests.

An operator says on the line view that an alarm was a **real defect** (``confirmed``) or a **false alarm**
(``false_alarm``), flags the frame on screen as a **missed defect** (``missed``), or takes a verdict back
(``undo``). Each review is one strict JSON line (the format: ``aaclip.contract.reviews``) appended to the
reviews file (``--reviews FILE``, beside the events) in one ``write`` call like the events
(``aaclip.contract.files.append_line``). ``raw_score``/``score`` are the decision's raw image score and the
operator score shown on the page.

Reviewed frames are kept with the reviews, in ``<reviews stem>-frames/`` beside the file: an alarm's
evidence image is hard-linked (or copied) there under its run id, a missed defect's frame and overlay are
saved there as PNG, so evidence rotation never takes a reviewed frame away. Bounds, like the events: the
file is rotated at ``max_bytes`` (``reviews.jsonl.1`` ... ``.keep``, the oldest deleted), the frames folder
holds at most ``max_frames`` images (the oldest deleted): ``[outputs.reviews]`` of the station file
(``station.outputs.ReviewsOutput``). At the defaults (4 MiB, 2 kept, 2000 frames) that is about 30,000
review lines and the last 2000 reviewed frames: months of a line's shifts. On start the runtime reads the
kept files, so the verdicts and counters survive a restart.

Who may review: with authentication on the line view (``http_auth``: a token or users), the page's
credentials (the web server checks them first) and the user's name goes into ``user`` (``"token"`` for the
bearer token); without it, only clients on this machine (loopback). Review requests must be JSON
(``Content-Type: application/json``): a browser will not send that to another site's server without asking
it first (CORS preflight, which this server never grants), so a web page elsewhere cannot post reviews.
"""
from __future__ import annotations

import ipaddress
import json
import logging
import math
import os
import shutil
import threading
import time
from collections import deque
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Protocol

import cv2
from aaclip.contract.errors import UserError
from aaclip.contract.files import append_line, atomic_path, remove_stale_temps
from aaclip.contract.reviews import (
    CONFIRMED,
    FALSE_ALARM,
    MISSED,
    UNDO,
    VERDICT_LABELS,
    VERDICTS,
    current_verdicts,
    frames_folder,
    read_reviews,
    review_key,
    verdict_counts,
)

from .overlay import evidence_image
from .station.outputs import ReviewsOutput

if TYPE_CHECKING:
    from .decide import Decision
    from .overlay import View
    from .sinks import LoopContext


class Reviewable(Protocol):
    """What review requests need of the line monitor (``monitor.LineMonitor``; a protocol, so that this
    module does not import the monitor, which holds a ``ReviewLog``)."""

    reviews: Optional["ReviewLog"]
    context: Optional["LoopContext"]

    def alarm(self, cam: Any, seq: Any) -> Any: ...

    def on_screen(self, cam: Any) -> Optional[tuple["Decision", "View"]]: ...

log = logging.getLogger(__name__)

RECENT_REVIEWS = 20   # reviews listed per camera on the page
MAX_BODY = 4096       # bytes of a review request


class ReviewLog:
    """The reviews file of a running station: appends (one line, one ``write``), rotation, the frames folder,
    and the standing verdicts (loaded from the kept files at start). Thread-safe: web requests call it."""

    def __init__(self, options: ReviewsOutput):
        if options.path is None or options.max_bytes < 1024 or options.keep < 0 or options.max_frames < 1:
            raise ValueError(f"reviews need a path, max_bytes >= 1024, keep >= 0, max_frames >= 1: {options}")
        self.options = options
        self.path = Path(options.path)
        self.frames = frames_folder(self.path)
        self.lock = threading.Lock()
        self.failures = 0
        try:
            self.frames.mkdir(parents=True, exist_ok=True)
            self._fd: Optional[int] = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as e:
            raise UserError(f"cannot write the reviews file {self.path}: {e.strerror or e}") from None
        remove_stale_temps(self.frames)
        self.current = current_verdicts(read_reviews(self.path, options.keep, strict=False))
        self._kept = deque(sorted((p for p in self.frames.iterdir() if p.is_file() and not p.name.startswith(".")),
                                  key=lambda p: p.stat().st_mtime))
        log.info("reviews in %s: %d reviewed frame(s) so far", self.path, len(self.current))

    # ---- writing ----------------------------------------------------------------------------------------
    def record(self, review: dict) -> dict:
        """Append ``review`` (a dict of the file's fields) and let it stand; OSError when the disk refuses."""
        data = (json.dumps(review, separators=(",", ":"), allow_nan=False) + "\n").encode("utf-8")
        with self.lock:
            if self._fd is None:
                raise OSError("the reviews file is closed (the runtime is stopping)")
            if os.fstat(self._fd).st_size + len(data) > self.options.max_bytes:
                self._rotate()
            try:
                append_line(self._fd, data)
            except OSError:
                self.failures += 1
                raise
            key = review_key(review)
            self.current.pop(key, None)
            if review["verdict"] != UNDO:
                self.current[key] = review
        return review

    def _rotate(self) -> None:
        """FILE -> FILE.1 -> ... -> FILE.keep (the oldest deleted), then a fresh FILE (caller holds the lock)."""
        os.close(self._fd)
        self._fd = None
        for i in range(self.options.keep, 0, -1):
            src = self.path if i == 1 else self.path.with_name(f"{self.path.name}.{i - 1}")
            if src.exists():
                os.replace(src, self.path.with_name(f"{self.path.name}.{i}"))
        if self.options.keep == 0:
            self.path.unlink(missing_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        log.info("reviews: %s rotated (at %d bytes; %d older file(s) kept)", self.path, self.options.max_bytes,
                 self.options.keep)

    def keep_evidence(self, evidence: Optional[str], run: str) -> Optional[str]:
        """The alarm's evidence image, hard-linked (or copied) into the frames folder as ``RUN_NAME`` (frame
        numbers start again in every run); None when it is gone."""
        if not evidence or not Path(evidence).is_file():
            return None
        src = Path(evidence)
        dst = self.frames / f"{run}_{src.name}"
        if not dst.exists():
            with atomic_path(dst, suffix=src.suffix) as tmp:
                tmp.unlink()
                try:
                    os.link(src, tmp)
                except OSError:
                    shutil.copyfile(src, tmp)
            self._kept_add(dst)
        return str(dst)

    def save_frame(self, frame, overlay, decision: "Decision") -> str:
        """A missed defect's frame and overlay side by side (the evidence layout), as a lossless PNG."""
        from .sinks import slug

        dst = self.frames / f"{decision.run_id}_{slug(decision.source)}_{decision.frame:08d}_missed.png"
        with atomic_path(dst, suffix=".png") as tmp:
            if not cv2.imwrite(str(tmp), evidence_image(frame, overlay)):
                raise OSError(f"cv2.imwrite could not write {tmp}")
        self._kept_add(dst)
        return str(dst)

    def _kept_add(self, path: Path) -> None:
        with self.lock:
            self._kept.append(path)
            while len(self._kept) > self.options.max_frames:
                old = self._kept.popleft()
                try:
                    old.unlink()
                except OSError:
                    pass

    # ---- reading ----------------------------------------------------------------------------------------
    def counts(self) -> dict[str, dict[str, int]]:
        with self.lock:
            return verdict_counts(list(self.current.values()))

    def camera_state(self, camera: str) -> dict[str, Any]:
        """What the page shows of a camera's reviews: its counters and its latest reviews (newest first)."""
        with self.lock:
            mine = [r for r in self.current.values() if r["camera"] == camera]
        counts = verdict_counts(mine).get(camera, dict.fromkeys(VERDICTS, 0))
        judged = counts[CONFIRMED] + counts[FALSE_ALARM]
        return {"counts": counts, "precision": counts[CONFIRMED] / judged if judged else None,
                "recent": [_public(r) for r in reversed(mine[-RECENT_REVIEWS:])]}

    def verdict_of(self, run: str, camera: str, frame: int) -> Optional[str]:
        with self.lock:
            r = self.current.get((run, camera, frame))
        return None if r is None else r["verdict"]

    def close(self) -> None:
        with self.lock:
            if self._fd is not None:
                try:
                    os.fsync(self._fd)
                except OSError:
                    pass
                os.close(self._fd)
                self._fd = None


def _public(r: dict) -> dict:
    return {k: r.get(k) for k in ("timestamp", "frame", "run", "class", "score", "raw_score", "evidence",
                                  "verdict", "user")}


# ---- requests from the page --------------------------------------------------------------------------------
def allowed(client_host: str, authenticated: bool) -> Optional[str]:
    """None when a review request may be taken, else why not: with authentication on the server, the
    request passed it; without, only clients on this machine (loopback) may review."""
    if authenticated:
        return None
    try:
        if ipaddress.ip_address(client_host.split("%", 1)[0]).is_loopback:
            return None
        mapped = ipaddress.ip_address(client_host).ipv4_mapped if ":" in client_host else None
        if mapped is not None and mapped.is_loopback:
            return None
    except ValueError:
        pass
    return ("reviews are accepted only from this machine while the line view has no authentication; "
            "turn on the web server's authentication to review from other machines")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def _number(x: float) -> Optional[float]:
    return float(x) if math.isfinite(x) else None


def decision_review(monitor: Reviewable, decision: "Decision", verdict: str, evidence: Optional[str],
                    user: Optional[str]) -> dict:
    """The reviews-file line of ``verdict`` on ``decision``."""
    m = monitor.context.manifest
    return {"timestamp": _iso(time.time()), "camera": decision.source, "frame": decision.frame,
            "run": decision.run_id, "class": decision.class_name, "artifact": m.artifact_path.name,
            "artifact_sha256": m.sha256, "frame_time": _iso(decision.wall_time),
            "raw_score": _number(decision.raw_score), "score": _number(decision.score),
            "threshold": _number(decision.threshold),
            "map_max": _number(decision.map_max), "cls_score": _number(decision.cls_score),
            "evidence": evidence, "verdict": verdict, "user": user}


def handle_review(monitor: Reviewable, cam: Any, body: bytes,
                  user: Optional[str]) -> tuple[int, dict]:
    """A review request from the page of ``cam`` -> (HTTP status, JSON answer).

    ``{"verdict": "confirmed"|"false_alarm", "seq": N}``: an alarm card (``seq`` as in state.json);
    ``{"verdict": "missed"}``: the frame on screen now; ``{"verdict": "undo", "run": R, "frame": F}``.
    """
    book = monitor.reviews
    if book is None:
        return 404, {"error": "reviews are off: start aaclip-runtime with --reviews FILE"}
    try:
        request = json.loads(body or b"{}")
    except (json.JSONDecodeError, UnicodeDecodeError):
        return 400, {"error": "the request body must be a JSON object"}
    verdict = request.get("verdict") if isinstance(request, dict) else None
    if verdict not in (*VERDICTS, UNDO):
        return 400, {"error": f"verdict must be one of {', '.join((*VERDICTS, UNDO))}"}
    try:
        if verdict in (CONFIRMED, FALSE_ALARM):
            alarm = monitor.alarm(cam, request.get("seq"))
            if alarm is None:
                return 404, {"error": f"no alarm {request.get('seq')!r} on this camera's page (only the last ones "
                                      "are kept)"}
            evidence = book.keep_evidence(alarm.evidence, alarm.decision.run_id)
            review = decision_review(monitor, alarm.decision, verdict, evidence, user)
        elif verdict == MISSED:
            shown = monitor.on_screen(cam)
            if shown is None:
                return 409, {"error": "no frame is on screen yet: open the live view first"}
            decision, view = shown
            path = book.save_frame(view.frame, view.overlay, decision)
            review = decision_review(monitor, decision, MISSED, path, user)
        else:
            key = (request.get("run"), cam.name, request.get("frame"))
            with book.lock:
                standing = book.current.get(key)
            if standing is None:
                return 404, {"error": "that frame has no verdict to undo"}
            review = dict(standing, timestamp=_iso(time.time()), verdict=UNDO, user=user)
        book.record(review)
    except (OSError, cv2.error) as e:
        log.error("review of %s not written to %s: %s", cam.name, book.path, e)
        return 500, {"error": f"the review could not be written to {book.path}: {e}"}
    log.info("review: %s frame %d of %s (run %s) by %s", VERDICT_LABELS.get(verdict, verdict), review["frame"],
             cam.name, review["run"], user or "an operator on this machine")
    return 200, {"review": _public(review), "reviews": book.camera_state(cam.name)}
