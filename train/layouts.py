"""Records from public dataset folder layouts: MVTec-AD (and MPDD, same layout), BTAD, VisA.

All functions return records with POSIX paths relative to ``root``, sorted by class then image path,
and raise DataError (a UserError) when ``root`` does not look like the layout, saying what was expected.

MVTec-AD / MPDD::

    <root>/<class>/train/good/*.png                          label 0
    <root>/<class>/test/good/*.png                           label 0
    <root>/<class>/test/<defect>/*.png                       label 1
    <root>/<class>/ground_truth/<defect>/<stem>_mask.png     mask of an anomalous test image

BTAD: the same tree with ``ok`` for the normal folder and ``ko`` for defects; masks are
``ground_truth/ko/<stem>.png`` or ``.bmp`` (no ``_mask`` suffix); images may be ``.bmp``.
Mask look-up accepts both namings (``<stem>_mask`` and ``<stem>``) and any image extension in both.

VisA: ``<root>/split_csv/1cls.csv`` with columns ``object,split,label,image,mask``; label is
``normal`` or ``anomaly``; image/mask paths are relative to ``root``.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Union

from aaclip.contract.files import IMAGE_SUFFIXES, is_image_file
from aaclip.train.records import ANOMALOUS, NORMAL, DataError, Record

log = logging.getLogger(__name__)

PathLike = Union[str, Path]

SPLITS = ("train", "test", "all")
VISA_CSV = Path("split_csv") / "1cls.csv"
VISA_COLUMNS = ("object", "split", "label", "image", "mask")
VISA_LABELS = {"normal": NORMAL, "anomaly": ANOMALOUS}


def _check_split(split: str) -> list[str]:
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    return ["train", "test"] if split == "all" else [split]


def _check_root(root: PathLike) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset root not found or not a folder: {root}; pass the dataset's top folder")
    return root


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _find_mask(gt_dir: Path, stem: str) -> Path | None:
    """Mask of image ``stem`` in ``gt_dir``: ``<stem>_mask.<ext>`` (MVTec) or ``<stem>.<ext>`` (BTAD)."""
    for name in (f"{stem}_mask", stem):
        for ext in IMAGE_SUFFIXES:
            for candidate in (gt_dir / f"{name}{ext}", gt_dir / f"{name}{ext.upper()}"):
                if candidate.is_file():
                    return candidate
    return None


def _tree_records(root: PathLike, split: str, good: str, layout: str) -> list[Record]:
    root = _check_root(root)
    splits = _check_split(split)
    expected = (
        f"{layout} layout: <root>/<class>/train/{good}/*.png, <root>/<class>/test/<defect>/*.png, "
        f"<root>/<class>/ground_truth/<defect>/<stem>_mask.png"
    )
    classes = sorted(d for d in root.iterdir() if d.is_dir() and any((d / s).is_dir() for s in ("train", "test")))
    if not classes:
        raise DataError(f"{root} does not look like the {expected}; no <class>/train or <class>/test folder found")
    rel = lambda p: p.relative_to(root).as_posix()  # noqa: E731
    records: list[Record] = []
    for class_dir in classes:
        name = class_dir.name
        for s in splits:
            split_dir = class_dir / s
            if not split_dir.is_dir():
                log.warning("%s: no %s/ folder, skipping that split for class %s", class_dir, s, name)
                continue
            for defect_dir in sorted(d for d in split_dir.iterdir() if d.is_dir()):
                is_good = defect_dir.name == good
                if s == "train" and not is_good:
                    log.debug("skipping %s (training images are the '%s' folder only)", defect_dir, good)
                    continue
                for img in _images(defect_dir):
                    if is_good:
                        records.append(Record(rel(img), NORMAL, name))
                        continue
                    gt_dir = class_dir / "ground_truth" / defect_dir.name
                    mask = _find_mask(gt_dir, img.stem)
                    if mask is None:
                        raise DataError(
                            f"no mask for anomalous image {img}: expected {gt_dir / (img.stem + '_mask.png')} "
                            f"(or {img.stem}.png/.bmp); restore the ground_truth folder of the {layout} dataset"
                        )
                    records.append(Record(rel(img), ANOMALOUS, name, rel(mask)))
    if not records:
        raise DataError(f"{root}: no images found for split {split!r}; expected the {expected}")
    records.sort(key=lambda r: (r.class_name, r.image_path))
    log.info("%s: %d images in %d classes (split %s)", root, len(records), len(classes), split)
    return records


def mvtec_records(root: PathLike, split: str = "test") -> list[Record]:
    """Records of an MVTec-AD (or MPDD) tree; ``split`` is ``train``, ``test`` or ``all``."""
    return _tree_records(root, split, good="good", layout="MVTec-AD")


def btad_records(root: PathLike, split: str = "test") -> list[Record]:
    """Records of a BTAD tree (normal folder ``ok``, defects ``ko``, masks without ``_mask``)."""
    return _tree_records(root, split, good="ok", layout="BTAD")


def visa_records(root: PathLike, split: str = "test") -> list[Record]:
    """Records of a VisA tree from ``<root>/split_csv/1cls.csv``; ``split`` is ``train``, ``test`` or ``all``."""
    root = _check_root(root)
    splits = _check_split(split)
    csv_path = root / VISA_CSV
    if not csv_path.is_file():
        raise DataError(
            f"{root} does not look like the VisA layout: expected {csv_path} "
            f"(columns {','.join(VISA_COLUMNS)}); pass the VisA top folder that holds split_csv/"
        )
    records: list[Record] = []
    with open(csv_path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in VISA_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"{csv_path}: missing column(s) {', '.join(missing)}; expected header {','.join(VISA_COLUMNS)}"
            )
        for line_no, row in enumerate(reader, start=2):
            if row["split"].strip() not in splits:
                continue
            label_text = row["label"].strip()
            if label_text not in VISA_LABELS:
                raise DataError(
                    f"{csv_path}:{line_no}: column 'label' must be 'normal' or 'anomaly', got {label_text!r}"
                )
            label = VISA_LABELS[label_text]
            image = row["image"].strip()
            mask = (row["mask"] or "").strip() or None
            if label == ANOMALOUS and mask is None:
                raise DataError(f"{csv_path}:{line_no}: anomalous image {image} has an empty 'mask' column")
            for what, p in (("image", image), ("mask", mask)):
                if p is not None and not (root / p).is_file():
                    raise DataError(
                        f"{csv_path}:{line_no}: column '{what}': file not found: {root / p}; "
                        "check that the VisA images were extracted under this root"
                    )
            records.append(
                Record(Path(image).as_posix(), label, row["object"].strip(), None if mask is None else Path(mask).as_posix())
            )
    if not records:
        raise DataError(f"{csv_path}: no rows for split {split!r}")
    records.sort(key=lambda r: (r.class_name, r.image_path))
    log.info("%s: %d images (split %s)", root, len(records), split)
    return records
