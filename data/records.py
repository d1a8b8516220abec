"""Image records in the JSON-lines data format (SPEC section 6): reading, validating, writing.

One JSON object per line, one line per image::

    {"image_path": "bottle/test/broken/000.png", "label": 1, "class_name": "bottle",
     "mask_path": "bottle/ground_truth/broken/000_mask.png"}

``label`` is 0 (normal) or 1 (anomalous). ``mask_path`` is the ground-truth mask of an anomalous image
when one exists; it may be null or absent: an anomalous record without a mask carries an image-level
label only (a folder of defective photos), which training uses for its image losses and evaluation for
its image metrics; pixel losses and pixel metrics use only images whose pixels are known (normal images
and anomalies with masks). Paths are relative to a data root, which defaults to the folder of the
JSON-lines file. Unknown extra fields are allowed (ignored, logged once at debug level).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Union

from aaclip.contract.errors import UserError
from aaclip.contract.files import atomic_write_text

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

NORMAL = 0
ANOMALOUS = 1
LABELS = (NORMAL, ANOMALOUS)
KNOWN_FIELDS = ("image_path", "label", "class_name", "mask_path")


class DataError(UserError):
    """A data file (JSON-lines records or a dataset folder) is malformed or incomplete."""


@dataclass(frozen=True)
class Record:
    """One image: path (relative to the data root), label (0/1), class name, mask path (anomalies, optional)."""

    image_path: str
    label: int
    class_name: str
    mask_path: str | None = None

    @property
    def pixels_known(self) -> bool:
        """True when every pixel's label is known: a normal image (all normal) or an anomaly with its mask."""
        return self.label == NORMAL or self.mask_path is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "image_path": self.image_path,
            "label": self.label,
            "class_name": self.class_name,
            "mask_path": self.mask_path,
        }


def resolve(root: PathLike, rel: str) -> Path:
    """Absolute-or-root-relative path of a record's file (an absolute ``rel`` is kept as is)."""
    p = Path(rel)
    return p if p.is_absolute() else Path(root) / p


def _where(line_no: int, source: str | None) -> str:
    return f"{source}:{line_no}" if source else f"line {line_no}"


def validate_record(obj: Any, line_no: int, source: str | None = None) -> Record:
    """Check one parsed JSON value and turn it into a Record.

    Raises DataError naming the line (and ``source`` file when given), the field and the fix.
    """
    at = _where(line_no, source)
    if not isinstance(obj, dict):
        raise DataError(
            f"{at}: expected a JSON object like "
            f'{{"image_path": ..., "label": 0, "class_name": ..., "mask_path": null}}, '
            f"got {type(obj).__name__}"
        )
    for field in ("image_path", "label", "class_name"):
        if field not in obj:
            raise DataError(f"{at}: missing field '{field}'; add it to the object on this line")
    for field in ("image_path", "class_name"):
        value = obj[field]
        if not isinstance(value, str) or not value:
            raise DataError(
                f"{at}: field '{field}' must be a non-empty string, got {value!r}; fix the value on this line"
            )
    label = obj["label"]
    # bool is a subclass of int: reject true/false explicitly so a typo does not pass as 0/1.
    if isinstance(label, bool) or not isinstance(label, int):
        raise DataError(f"{at}: field 'label' must be the integer 0 (normal) or 1 (anomalous), got {label!r}")
    if label not in LABELS:
        raise DataError(f"{at}: field 'label' must be 0 (normal) or 1 (anomalous), got {label}")
    mask = obj.get("mask_path")
    if mask is not None and (not isinstance(mask, str) or not mask):
        raise DataError(
            f"{at}: field 'mask_path' must be a non-empty string or null, got {mask!r}; fix the value on this line"
        )
    return Record(image_path=obj["image_path"], label=label, class_name=obj["class_name"], mask_path=mask)


def read_records(path: PathLike, root: PathLike | None = None, check_files: bool = True) -> list[Record]:
    """Read and validate a JSON-lines file of records.

    ``root`` is the data root the paths are relative to (default: the file's folder). With
    ``check_files`` every image and mask must exist under the root. Blank lines are skipped; a file
    with no records is an error.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"records file not found: {path}; pass an existing .jsonl file")
    root = Path(root) if root is not None else path.parent
    records: list[Record] = []
    extra_seen: set[str] = set()
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DataError(f"{path}:{line_no}: not UTF-8 text (byte {e.start + 1}); save the file as UTF-8") \
                    from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{path}:{line_no}: invalid JSON ({e.msg} at column {e.colno}); "
                    "each line must be one JSON object"
                ) from None
            rec = validate_record(obj, line_no, source=str(path))
            extra = set(obj) - set(KNOWN_FIELDS) - extra_seen
            if extra:
                log.debug("%s:%d: ignoring unknown field(s) %s", path, line_no, ", ".join(sorted(extra)))
                extra_seen |= extra
            if check_files:
                for field in ("image_path", "mask_path"):
                    rel = getattr(rec, field)
                    if rel is not None and not resolve(root, rel).is_file():
                        raise DataError(
                            f"{path}:{line_no}: field '{field}': file not found: {resolve(root, rel)}; "
                            "fix the path or pass the right data root (--root)"
                        )
            records.append(rec)
    if not records:
        raise DataError(f"{path}: no records (file is empty); write one JSON object per image")
    log.debug("read %d records from %s", len(records), path)
    return records


def rebase(records: Iterable[Record], old_root: PathLike, new_root: PathLike) -> list[Record]:
    """Same records with relative paths re-expressed relative to ``new_root`` (absolute paths kept).

    Used when a records file is written to a folder other than its data root, so that the default
    root (the file's folder) still finds the images.
    """
    old, new = Path(old_root).resolve(), Path(new_root).resolve()
    if old == new:
        return list(records)

    def move(rel: str | None) -> str | None:
        if rel is None or Path(rel).is_absolute():
            return rel
        return Path(os.path.relpath(old / rel, new)).as_posix()

    return [Record(move(r.image_path), r.label, r.class_name, move(r.mask_path)) for r in records]


def write_records(path: PathLike, records: Iterable[Record]) -> None:
    """Write records as JSON lines, atomically (nothing half-written on failure)."""
    text = "".join(json.dumps(r.to_dict()) + "\n" for r in records)
    atomic_write_text(path, text)


def class_names(records: Iterable[Record]) -> list[str]:
    """Sorted unique class names of the records."""
    return sorted({r.class_name for r in records})


def masked_counts(records: Iterable[Record]) -> dict[str, int]:
    """Per class (sorted by name): the number of anomalous images that have a mask."""
    counts: dict[str, int] = {}
    for r in records:
        counts.setdefault(r.class_name, 0)
        counts[r.class_name] += r.label == ANOMALOUS and r.mask_path is not None
    return dict(sorted(counts.items()))


def class_counts(records: Iterable[Record]) -> dict[str, tuple[int, int]]:
    """Per class (sorted by name): (number of normal images, number of anomalous images)."""
    counts: dict[str, list[int]] = {}
    for r in records:
        counts.setdefault(r.class_name, [0, 0])[r.label] += 1
    return {name: (c[0], c[1]) for name, c in sorted(counts.items())}
