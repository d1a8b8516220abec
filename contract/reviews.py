"""The reviews file: operators' verdicts on frames, one strict JSON line each (the format, reading it, the
verdicts that stand). The runtime writes it (``aaclip.runtime.reviews``: the line view's review buttons);
``aaclip-calibrate threshold --reviews`` and ``aaclip-data reviews`` read it::

    {"timestamp": "2026-12-07T18:40:01.120+00:00", "camera": "line.avi", "frame": 17, "run": "3f2a9c1b7d0e",
     "class": "plate", "artifact": "plates.onnx", "artifact_sha256": "9c4e...", "frame_time": "...",
     "raw_score": 1.8734, "score": 0.61, "threshold": 1.2, "map_max": 0.53, "cls_score": 0.22,
     "evidence": "reviews-frames/3f2a9c1b7d0e_line.avi_00000017_1.873.jpg", "verdict": "false_alarm", "user": null}

Verdicts: ``confirmed`` (a real defect), ``false_alarm``, ``missed`` (a defect the model let pass), ``undo``
(withdraws the frame's verdict). A frame is identified by (run, camera, frame); its last line wins.
``map_max`` and ``cls_score`` are the graph's raw outputs, from which a refit recomputes the raw score with
the manifest's current constants. ``evidence`` is the frame and its overlay side by side, kept in
``<stem>-frames/`` beside the file. The file is rotated into ``FILE.1`` .. ``FILE.keep``; readers take the
kept files oldest first.
"""
from __future__ import annotations

import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Iterable

from .errors import UserError
from .files import PathLike

log = logging.getLogger(__name__)

CONFIRMED, FALSE_ALARM, MISSED, UNDO = "confirmed", "false_alarm", "missed", "undo"
VERDICTS = (CONFIRMED, FALSE_ALARM, MISSED)
"""What a frame can be judged: a real defect, a false alarm, a defect the model missed."""
VERDICT_LABELS = {CONFIRMED: "real defect", FALSE_ALARM: "false alarm", MISSED: "missed defect"}
REQUIRED = ("timestamp", "camera", "frame", "run", "class", "artifact_sha256", "raw_score", "map_max",
            "cls_score", "verdict")
DEFAULT_MAX_BYTES = 4 * 1024 * 1024  # rotate at this size: about 10,000 reviews
DEFAULT_KEEP = 2                     # rotated files kept
DEFAULT_MAX_FRAMES = 2000            # reviewed frames kept beside the file


class ReviewError(UserError):
    """A reviews file line that is not a review (the message names the file, the line and the fix)."""


def frames_folder(path: PathLike) -> Path:
    """Where the reviewed frames of reviews file ``path`` are kept: ``<stem>-frames/`` beside it."""
    path = Path(path)
    return path.with_name(f"{path.stem}-frames")


def review_key(review: dict) -> tuple[str, str, int]:
    """(run, camera, frame): the frame a review is about."""
    return review["run"], review["camera"], review["frame"]


# ---- the file --------------------------------------------------------------------------------------------
def parse_review(text: str, where: str) -> dict:
    """One line of a reviews file, checked; a ReviewError naming ``where`` otherwise."""
    try:
        review = json.loads(text, parse_constant=_no_constant)
    except (json.JSONDecodeError, ValueError) as e:
        raise ReviewError(f"{where}: not a strict JSON object ({e}); each line must be one review") from None
    if not isinstance(review, dict):
        raise ReviewError(f"{where}: expected a JSON object, got {type(review).__name__}")
    missing = [k for k in REQUIRED if k not in review]
    if missing:
        raise ReviewError(f"{where}: missing field(s) {', '.join(missing)}; this is not a line the runtime wrote")
    if review["verdict"] not in (*VERDICTS, UNDO):
        raise ReviewError(f"{where}: verdict {review['verdict']!r} is none of {', '.join((*VERDICTS, UNDO))}")
    frame = review["frame"]
    if isinstance(frame, bool) or not isinstance(frame, int) or frame < 0:
        raise ReviewError(f"{where}: frame must be a frame index (an integer >= 0), got {frame!r}")
    for k in ("camera", "run", "class", "artifact_sha256"):
        if not isinstance(review[k], str):
            raise ReviewError(f"{where}: {k} must be a string, got {review[k]!r}")
    for k in ("map_max", "cls_score"):
        if review[k] is not None and (isinstance(review[k], bool) or not isinstance(review[k], (int, float))):
            raise ReviewError(f"{where}: {k} must be a number or null, got {review[k]!r}")
    return review


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def review_files(path: PathLike, keep: int = DEFAULT_KEEP) -> list[Path]:
    """The reviews file's rotated files (oldest first) and the file itself, those that exist."""
    path = Path(path)
    files = [path.with_name(f"{path.name}.{i}") for i in range(keep, 0, -1)] + [path]
    return [p for p in files if p.is_file()]


def read_reviews(path: PathLike, keep: int = DEFAULT_KEEP, strict: bool = True) -> list[dict]:
    """Every review of ``path`` and its rotated files, oldest first. ``strict``: a bad line is a ReviewError;
    otherwise it is logged and skipped (the runtime keeps running on a file someone edited)."""
    path = Path(path)
    out: list[dict] = []
    for file in review_files(path, keep):
        with open(file, "rb") as f:
            for n, raw in enumerate(f, start=1):
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError:
                    text = None
                try:
                    if text is None:
                        raise ReviewError(f"{file}:{n}: not UTF-8 text; this is not a line the runtime wrote")
                    out.append(parse_review(text, f"{file}:{n}"))
                except ReviewError as e:
                    if strict:
                        raise
                    log.error("reviews: %s; line skipped", e)
    return out


def current_verdicts(reviews: Iterable[dict]) -> "OrderedDict[tuple, dict]":
    """The standing verdict of each reviewed frame (the last line wins, ``undo`` withdraws), in review order."""
    current: OrderedDict[tuple, dict] = OrderedDict()
    for r in reviews:
        key = review_key(r)
        current.pop(key, None)
        if r["verdict"] != UNDO:
            current[key] = r
    return current


def verdict_counts(current: Iterable[dict]) -> dict[str, dict[str, int]]:
    """Per camera: how many frames stand confirmed, false alarm and missed."""
    counts: dict[str, dict[str, int]] = {}
    for r in current:
        counts.setdefault(r["camera"], dict.fromkeys(VERDICTS, 0))[r["verdict"]] += 1
    return counts
