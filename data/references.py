"""Reference images of normal parts per class, for families that keep them (``Family.references``: Res2CLIP).

``reference_paths`` picks ``shots`` normal images per class, from a folder with one sub-folder per class
(``DIR/<class>/*.png``) or from JSON-lines records with label 0, with ``shots.sample_shots`` (deterministic
for a seed, independent of the other classes). Only the files: building their banks into a model is
``aaclip.train.families.res2clip.bank``.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

from aaclip.contract.errors import UserError

from aaclip.data.records import NORMAL, Record, read_records, resolve

log = logging.getLogger(__name__)

REFERENCE_SEED = 0  # default seed of the choice of references (--reference-seed; fit uses it too)


def reference_paths(classes: Optional[Sequence[str]], shots: int, seed: int = 0, images: Optional[Path] = None,
                    data: Optional[Path] = None) -> dict[str, list[Path]]:
    """{class: ``shots`` image paths} from ``images`` (DIR/<class>/...) or ``data`` (records, label 0);
    ``classes`` None: every class found there."""
    from aaclip.contract.files import image_files

    from aaclip.data.shots import sample_shots

    if (images is None) == (data is None):
        raise UserError("give the normal reference images with exactly one of --reference-images DIR "
                        "(one sub-folder per class) or --reference-data FILE (JSON-lines records, label 0)")
    if images is not None:
        folder = Path(images)
        if not folder.is_dir():
            raise UserError(f"--reference-images {folder} is not a folder")
        found = sorted(p.name for p in folder.iterdir() if p.is_dir())
        wanted = list(classes) if classes else found
        missing = [c for c in wanted if c not in found]
        if missing:
            raise UserError(f"--reference-images {folder} has no sub-folder {missing[0]!r} (one folder of normal "
                            f"images per class; found: {', '.join(found) or 'none'})")
        # paths relative to the folder (its root): image_files' paths already start with the folder, and a
        # relative folder would otherwise be joined twice (refs/refs/<class>/...)
        records = [Record(p.relative_to(folder).as_posix(), NORMAL, c) for c in wanted for p in image_files(folder / c)]
        root = folder
    else:
        records = [r for r in read_records(data) if r.label == NORMAL]
        root = Path(data).parent
        have = sorted({r.class_name for r in records})
        wanted = list(classes) if classes else have
        missing = [c for c in wanted if c not in have]
        if missing:
            raise UserError(f"--reference-data {data} has no normal (label 0) image of class {missing[0]!r}")
        records = [r for r in records if r.class_name in wanted]
    chosen = sample_shots(records, shots, seed, label=NORMAL)
    return {c: [resolve(root, r.image_path) for r in chosen if r.class_name == c] for c in wanted}


__all__ = ["reference_paths", "REFERENCE_SEED"]
