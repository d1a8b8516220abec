"""Records from dataset folder layouts: MVTec-AD (and MPDD, same layout), BTAD, VisA, and plain folders of
good and defective photos (``folder_records``).

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

Plain folders (a factory's own photos, ``aaclip-data folder``)::

    <root>/good/**/*.jpg                      label 0 (the normal folder may also be named ok or normal)
    <root>/<defect>/**/*.jpg                  label 1, one folder per defect kind (any names)
    <root>/ground_truth/<defect>/<stem>_mask.png   optional masks (or <root>/masks/...; also <stem>.png)

or any folders given one by one (``--good DIR``, ``--bad DIR`` repeated, ``--masks DIR``). Masks are
optional: an anomalous image without one carries its image-level label only.
"""
from __future__ import annotations

import csv
import logging
import os
from pathlib import Path
from typing import Optional, Sequence, Union

from aaclip.contract.errors import UserError
from aaclip.contract.files import IMAGE_SUFFIXES, image_files, is_image_file
from aaclip.data.records import ANOMALOUS, NORMAL, DataError, Record

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


GOOD_FOLDER_NAMES = ("good", "ok", "normal")
MASK_FOLDER_NAMES = ("ground_truth", "masks")


def _folder_images(folder: Path) -> list[Path]:
    try:
        return image_files(folder, recursive=True)
    except UserError as exc:
        raise DataError(str(exc)) from None


def _mask_for(image: Path, defect_dir: Path, masks: Optional[Path]) -> Optional[Path]:
    """The mask of ``image`` under ``masks``: in the defect's own sub-folder (``masks/<defect>/``, keeping the
    image's sub-path) or directly in ``masks``; named ``<stem>_mask.<ext>`` or ``<stem>.<ext>``."""
    if masks is None:
        return None
    sub = image.parent.relative_to(defect_dir)
    for folder in (masks / defect_dir.name / sub, masks / sub, masks):
        found = _find_mask(folder, image.stem)
        if found is not None and found.resolve() != image.resolve():
            return found
    return None


def _rel(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()


def folder_records(good: Sequence[PathLike], bad: Sequence[PathLike], class_name: str, root: PathLike,
                   masks: Optional[PathLike] = None) -> list[Record]:
    """Records of folders of good images (label 0) and defective ones (label 1, a mask when ``masks`` has one).

    Images are found recursively; paths are relative to ``root`` (``..`` where a folder lies outside it).
    An image given as both good and defective is an error. Logs how many anomalies have masks.
    """
    root = Path(root)
    masks = Path(masks) if masks is not None else None
    if masks is not None and not masks.is_dir():
        raise DataError(f"mask folder not found: {masks}; pass the folder that holds the defect masks")
    if not good and not bad:
        raise DataError("no image folder given; pass --good DIR and --bad DIR (repeatable), or a ROOT folder")
    records: list[Record] = []
    seen: dict[Path, str] = {}

    def add(path: Path, what: str) -> None:
        key = path.resolve()
        if key in seen:
            raise DataError(f"{path} is listed twice ({seen[key]} and {what}); each image belongs to one folder")
        seen[key] = what

    for folder in map(Path, good):
        for img in _folder_images(folder):
            add(img, f"good folder {folder}")
            records.append(Record(_rel(img, root), NORMAL, class_name))
    n_masked = 0
    for folder in map(Path, bad):
        for img in _folder_images(folder):
            add(img, f"defect folder {folder}")
            mask = _mask_for(img, folder, masks)
            n_masked += mask is not None
            records.append(Record(_rel(img, root), ANOMALOUS, class_name,
                                  _rel(mask, root) if mask is not None else None))
    n_bad = sum(r.label for r in records)
    if masks is not None and n_bad and not n_masked:
        log.warning("no mask found in %s for any of the %d defective images (expected <defect>/<stem>_mask.png "
                    "or <stem>.png); they keep image-level labels only", masks, n_bad)
    log.info("class %s: %d good and %d defective images (%d with masks)", class_name, len(records) - n_bad, n_bad,
             n_masked)
    records.sort(key=lambda r: (r.class_name, r.image_path))
    return records


def folder_layout(root: PathLike) -> tuple[list[Path], list[Path], Optional[Path]]:
    """(good folders, defect folders, mask folder or None) of ``root/good``, ``root/<defect>/``,
    ``root/ground_truth`` (or ``root/masks``)."""
    root = _check_root(root)
    subdirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    good = [d for d in subdirs if d.name.lower() in GOOD_FOLDER_NAMES]
    mask_dirs = [d for d in subdirs if d.name.lower() in MASK_FOLDER_NAMES]
    bad = [d for d in subdirs if d not in good and d not in mask_dirs]
    if len(good) != 1:
        found = ", ".join(d.name for d in subdirs) or "no sub-folders"
        raise DataError(f"{root} does not look like a photo folder: expected one folder of good images named "
                        f"{' or '.join(GOOD_FOLDER_NAMES)} and one folder per defect kind (found {found}); "
                        "or name the folders with --good DIR --bad DIR")
    if len(mask_dirs) > 1:
        raise DataError(f"{root} holds both {' and '.join(d.name for d in mask_dirs)}; keep one mask folder")
    if not bad:
        log.warning("%s has no defect folder next to %s/: only normal images", root, good[0].name)
    return good, bad, (mask_dirs[0] if mask_dirs else None)
