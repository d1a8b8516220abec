"""Where calibration frames come from: image folders, JSON-lines records, cameras, synthetic held-out sets.

Frames are streamed (a 10,000-frame recording never sits in memory) as ``Item(frame, class_id, payload)``:
``frame`` is the decoded BGR uint8 image as OpenCV delivers it, ``class_id`` its index in the artifact's
``classes`` and ``payload`` the bytes that identify it in the calibration set's sha256: the file's
contents for images on disk, the raw frame (shape header + pixels) for camera frames.

``SetHash`` is that sha256: for each item in order, its class id, the payload length and the payload.
Re-running on the same files (or the same decoded video frames) gives the same hash.
"""
from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.files import image_files
from aaclip.contract.images import ImageError, SkippedImages, read_image
from aaclip.contract.manifest import Manifest
from aaclip.runtime.source_options import OPEN_HINT, FirstFrameWait
from aaclip.runtime.sources import NoFirstFrame, open_source

log = logging.getLogger(__name__)

CAMERA_RETRIES = 20
"""A live camera may drop a few reads; after this many failed reads in a row calibration stops."""
CAMERA_RETRY_S = 0.2


@dataclass(frozen=True)
class Item:
    frame: np.ndarray
    class_id: int
    payload: bytes


@dataclass(frozen=True)
class FrameInput:
    """A re-iterable set of frames: ``items()`` opens it afresh each call. ``count`` is None for cameras."""

    description: str
    items: Callable[[], Iterator[Item]]
    count: Optional[int] = None


class SetHash:
    """sha256 of a calibration set: per item, class id (8 bytes), payload length (8 bytes), payload."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.count = 0

    def update(self, item: Item) -> None:
        self._h.update(int(item.class_id).to_bytes(8, "little", signed=True))
        self._h.update(len(item.payload).to_bytes(8, "little"))
        self._h.update(item.payload)
        self.count += 1

    def hexdigest(self) -> str:
        return self._h.hexdigest()


def frame_payload(frame: np.ndarray) -> bytes:
    """Identity of a raw frame: ``HxWxC|`` then its bytes (C-contiguous)."""
    shape = "x".join(str(d) for d in frame.shape)
    return shape.encode() + b"|" + np.ascontiguousarray(frame).tobytes()


# ---- classes ---------------------------------------------------------------------------------------
def class_id_for(manifest: Manifest, class_name: Optional[str]) -> int:
    """The class index frames without their own class get: ``--class``, or 0 for single-class artifacts."""
    if class_name is not None:
        return manifest.class_index(class_name)
    if len(manifest.classes) > 1 and manifest.class_input is not None:
        raise UserError(f"{manifest.artifact_path.name} holds several classes; choose the one these frames show "
                        f"with --class NAME (available: {', '.join(manifest.classes)})")
    return 0


# ---- files -----------------------------------------------------------------------------------------
def _file_items(paths: Sequence[Path], class_ids: Sequence[int], description: str) -> Iterator[Item]:
    """Decoded images; empty, truncated, oversized, non-image files, folders and broken links are skipped,
    counted and reported in one warning line at the end."""
    skipped = SkippedImages(description)
    try:
        for path, cid in zip(paths, class_ids):
            try:
                frame, data = read_image(path)
            except ImageError as exc:
                skipped.skip(exc)
                continue
            yield Item(frame, int(cid), data)
    finally:
        skipped.report()


def file_input(paths: Sequence[Path], class_ids: Sequence[int], description: str) -> FrameInput:
    paths, class_ids = list(paths), list(class_ids)
    if len(paths) != len(class_ids):
        raise ValueError("one class id per file")
    return FrameInput(description, lambda: _file_items(paths, class_ids, description), len(paths))


def folder_input(folder: Path, class_id: int) -> FrameInput:
    files = image_files(folder)
    return file_input(files, [class_id] * len(files), f"images {folder}")


def data_inputs(data_file: Path, manifest: Manifest, class_name: Optional[str]
                ) -> tuple[FrameInput, Optional[FrameInput]]:
    """(normals, anomalies or None) from a JSON-lines file (SPEC section 6): label 0 and label 1 records.

    Records are matched to the artifact's classes by ``class_name``; ``--class`` keeps one class only. A
    single-class artifact whose class name appears in no record takes all records (with a warning).
    """
    from aaclip.data.records import read_records

    records = read_records(data_file)
    if class_name is not None:
        cid = manifest.class_index(class_name)
        chosen = [(r, cid) for r in records if r.class_name == class_name]
        if not chosen:
            raise UserError(f"{data_file} has no records of class {class_name!r}; classes there: "
                            f"{', '.join(sorted({r.class_name for r in records}))}")
    else:
        known = {name: i for i, name in enumerate(manifest.classes)}
        chosen = [(r, known[r.class_name]) for r in records if r.class_name in known]
        if not chosen:
            if len(manifest.classes) > 1:
                raise UserError(f"no record of {data_file} belongs to the artifact's classes "
                                f"({', '.join(manifest.classes)}); choose one with --class NAME")
            log.warning("no record of %s has class %r; using all %d records as that class", data_file,
                        manifest.classes[0], len(records))
            chosen = [(r, 0) for r in records]
        elif len(chosen) < len(records):
            log.info("%d of %d records belong to other classes and are skipped", len(records) - len(chosen),
                     len(records))
    root = Path(data_file).parent
    from aaclip.data.records import resolve

    def part(label: int, what: str) -> Optional[FrameInput]:
        sel = [(resolve(root, r.image_path), cid) for r, cid in chosen if r.label == label]
        if not sel:
            return None
        return file_input([p for p, _ in sel], [c for _, c in sel], f"{what} of {data_file}")

    normals = part(0, "label-0 records")
    if normals is None:
        raise UserError(f"{data_file} has no normal (label 0) records to calibrate on; thresholds are fitted on "
                        "good parts only")
    return normals, part(1, "label-1 records")


# ---- cameras ---------------------------------------------------------------------------------------
def open_camera(spec: str, wait: FirstFrameWait):
    """``spec`` opened with its first frame; exit 2 (``NoFirstFrame``) when none came within the open timeout,
    unless ``--wait-for-source``: then it is tried again until it delivers (Ctrl-C stops)."""
    tries = 0
    while True:
        try:
            return open_source(spec, open_timeout_ms=wait.open_timeout_ms, read_timeout_ms=wait.read_timeout_ms)
        except NoFirstFrame as exc:
            if not wait.wait_for_source:
                raise NoFirstFrame(f"{exc}; {OPEN_HINT}") from None
            tries += 1
            log.warning("%s; still waiting for it (--wait-for-source, wait %d)", exc, tries)


def _camera_items(spec: str, n_frames: int, class_id: int, wait: FirstFrameWait) -> Iterator[Item]:
    source = open_camera(spec, wait)
    try:
        got, failures = 0, 0
        while got < n_frames:
            ok, frame = source.read()
            if ok and frame is not None:
                failures = 0
                got += 1
                yield Item(frame, class_id, frame_payload(frame))
                continue
            if ok:  # an unreadable frame: skip it
                continue
            if not source.is_live:
                log.warning("%s ended after %d of %d frames; calibrating on those", source.name, got, n_frames)
                return
            failures += 1
            if failures > CAMERA_RETRIES:
                raise UserError(f"camera {source.name} stopped delivering frames after {got} of {n_frames}; "
                                "check the connection and run again")
            time.sleep(CAMERA_RETRY_S)
            source.open()
    finally:
        source.release()


def camera_input(spec: str, n_frames: int, class_id: int, wait: FirstFrameWait = FirstFrameWait()) -> FrameInput:
    if n_frames < 2:
        raise UserError(f"--frames must be >= 2 to calibrate from a camera, got {n_frames}")
    return FrameInput(f"camera {spec} ({n_frames} frames)", lambda: _camera_items(spec, n_frames, class_id, wait),
                      None)


# ---- synthetic held-out set ------------------------------------------------------------------------
def synthetic_pairs(manifest: Manifest, n: int, seed: int = 0,
                    class_ids: Optional[Sequence[int]] = None) -> tuple[list[Item], list[Item]]:
    """``n`` normal products (``synth.draw_product``) and the same products with a defect (``add_defect``).

    Drawn at the artifact's input size (square at the smaller side, then fitted by the runtime's resize).
    The synthetic class is the artifact's class when it is one of ``synth.CLASSES``, else they cycle.
    """
    from aaclip.data import synth

    rng = np.random.default_rng(seed)
    size = max(synth.MIN_IMAGE_SIZE, min(manifest.height, manifest.width))
    ids = list(class_ids) if class_ids else [0]
    normals, anomalies = [], []
    for i in range(n):
        cid = int(ids[i % len(ids)])
        name = manifest.classes[cid]
        synth_class = name if name in synth.CLASSES else synth.CLASSES[i % len(synth.CLASSES)]
        good = synth.draw_product(synth_class, rng, size)
        bad, _mask = synth.add_defect(good, rng, class_name=synth_class)
        normals.append(Item(good, cid, frame_payload(good)))
        anomalies.append(Item(bad, cid, frame_payload(bad)))
    return normals, anomalies
