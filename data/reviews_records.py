"""``aaclip-data reviews``: the frames operators reviewed on the line view as image-level records.

Each standing review (``aaclip.runtime.reviews``: the last verdict of a frame, undone ones withdrawn)
becomes one record: its frame as an image, label 1 for a confirmed or missed defect and 0 for a false
alarm, the class the camera inspects. A review's evidence image holds the frame and its heat-map overlay
side by side (the runtime's evidence layout); the left half, the frame as the camera saw it,
is written as a PNG into ``<out stem>-images/`` beside the records file. Torch-free.

Nothing is dropped silently: reviews whose evidence file is gone or unreadable, frames whose pixels
duplicate an earlier record's, and verdicts replaced by a later one or undone are reported by
``ReviewRecords.notes``; only the first are errors when no record remains.
"""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
from aaclip.contract.errors import UserError
from aaclip.contract.files import atomic_path
from aaclip.contract.reviews import FALSE_ALARM, UNDO, VERDICT_LABELS, current_verdicts, frames_folder, read_reviews

from .records import ANOMALOUS, NORMAL, Record, write_records

log = logging.getLogger(__name__)


@dataclass
class ReviewRecords:
    records: list[Record]
    images: Path                                         # where the frames were written
    missing: list[str] = field(default_factory=list)     # evidence gone or unreadable
    duplicates: list[str] = field(default_factory=list)  # same pixels as an earlier record
    replaced: int = 0                                    # verdicts replaced by a later one of the same frame
    undone: int = 0                                      # frames whose verdict was withdrawn

    def notes(self) -> list[str]:
        """One line per review not turned into a record, and the counts of replaced/undone verdicts."""
        lines = [f"skipped, evidence missing: {m}" for m in self.missing]
        lines += [f"skipped, duplicate: {d}" for d in self.duplicates]
        if self.replaced:
            lines.append(f"{self.replaced} earlier verdict(s) replaced by a later review of the same frame")
        if self.undone:
            lines.append(f"{self.undone} frame(s) whose verdict was undone on the line view")
        return lines


def _evidence_file(evidence: str, reviews_path: Path) -> Path:
    """A review's image: in the frames folder beside the reviews file (where the runtime keeps them; found
    wherever the two were moved together), else the path as the runtime wrote it."""
    kept = frames_folder(reviews_path) / Path(evidence).name
    return kept if kept.is_file() else Path(evidence)


def review_records(reviews_path: Path, out: Path) -> ReviewRecords:
    """Write the reviewed frames beside ``out`` and return their records (the caller writes ``out``)."""
    reviews_path, out = Path(reviews_path), Path(out)
    reviews = read_reviews(reviews_path)
    standing = current_verdicts(reviews)
    result = ReviewRecords([], out.parent / f"{out.stem}-images")
    state: dict[tuple, dict] = {}
    for r in reviews:
        key = (r["run"], r["camera"], r["frame"])
        if r["verdict"] == UNDO:
            state.pop(key, None)
            continue
        result.replaced += key in state
        state[key] = r
    result.undone = len({(r["run"], r["camera"], r["frame"]) for r in reviews} - set(standing))
    seen: dict[str, str] = {}
    for r in standing.values():
        where = (f"{r['camera']} frame {r['frame']} (run {r['run']}, {VERDICT_LABELS[r['verdict']]}, reviewed "
                 f"{r['timestamp']})")
        if not r.get("evidence"):
            result.missing.append(f"{where}: no evidence image was saved (the runtime ran without --evidence)")
            continue
        path = _evidence_file(r["evidence"], reviews_path)
        image = cv2.imread(str(path), cv2.IMREAD_COLOR) if path.is_file() else None
        if image is None:
            result.missing.append(f"{where}: {path} {'is unreadable' if path.is_file() else 'is gone'}")
            continue
        h, w = image.shape[:2]
        if w % 2:
            result.missing.append(f"{where}: {path} is not an evidence image (frame and overlay side by side)")
            continue
        frame = image[:, : w // 2]
        digest = hashlib.sha256(frame.tobytes()).hexdigest()
        if digest in seen:
            result.duplicates.append(f"{where}: the same pixels as {seen[digest]}")
            continue
        seen[digest] = where
        name = f"{Path(r['evidence']).stem}.png"  # the runtime's name: run, camera, frame (unique per review)
        target = result.images / name
        with atomic_path(target, suffix=".png") as tmp:
            if not cv2.imwrite(str(tmp), frame):
                raise UserError(f"cannot write {target}; check the folder is writable")
        label = NORMAL if r["verdict"] == FALSE_ALARM else ANOMALOUS
        result.records.append(Record(f"{result.images.name}/{name}", label, r["class"]))
    if not result.records:
        raise UserError(f"no reviewed frame of {reviews_path} could be turned into a record: "
                        + ("; ".join(result.notes()) or "no standing verdicts"))
    write_records(out, result.records)
    return result
