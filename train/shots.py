"""k-shot subsets of a record list: k images per class, deterministic for a seed.

Rule (``label=None``), per class:
  1. take ``min(ceil(k / 2), #anomalous)`` anomalous images,
  2. fill up to k with normal images,
  3. if still short of k (too few normals), fill with the remaining anomalous images.
So a class with enough of both gets ceil(k/2) anomalous + floor(k/2) normal images (k=1 gives one
anomalous image: the segmentation losses need masks). With ``label=0`` or ``1`` only images of that
label are drawn.

Determinism: each class's records are sorted by path and drawn with ``random.Random(f"{seed}:{class}")``,
so the result does not depend on the input order, and adding or removing a class does not change the
images drawn for the others. The result is sorted by class, then image path.
"""
from __future__ import annotations

import logging
import math
import random
from typing import Iterable

from aaclip.train.records import ANOMALOUS, LABELS, NORMAL, DataError, Record, class_names

log = logging.getLogger(__name__)


def _draw(rng: random.Random, pool: list[Record], n: int) -> list[Record]:
    return rng.sample(pool, n) if n > 0 else []


def sample_shots(
    records: Iterable[Record],
    k: int,
    seed: int,
    label: int | None = None,
    allow_fewer: bool = False,
) -> list[Record]:
    """k images per class (see module docstring for the rule).

    Raises DataError when a class has fewer than k eligible images, unless ``allow_fewer``, in which
    case all of that class's eligible images are taken.
    """
    if k < 1:
        raise DataError(f"k must be at least 1, got {k}")
    if label is not None and label not in LABELS:
        raise DataError(f"label must be 0 (normal), 1 (anomalous) or None (both), got {label!r}")
    records = sorted(records, key=lambda r: (r.class_name, r.image_path, r.label, r.mask_path or ""))
    if not records:
        raise DataError("no records to sample shots from")
    chosen: list[Record] = []
    for name in class_names(records):
        pool = [r for r in records if r.class_name == name and (label is None or r.label == label)]
        if len(pool) < k:
            what = "images" if label is None else ("normal images" if label == NORMAL else "anomalous images")
            msg = f"class '{name}' has {len(pool)} {what}, fewer than k={k}"
            if not allow_fewer:
                raise DataError(f"{msg}; lower k, add images, or allow fewer (--allow-fewer)")
            log.warning("%s; taking all %d", msg, len(pool))
        rng = random.Random(f"{seed}:{name}")
        if label is not None or len(pool) <= k:
            picked = _draw(rng, pool, min(k, len(pool)))
        else:
            anomalous = [r for r in pool if r.label == ANOMALOUS]
            normal = [r for r in pool if r.label == NORMAL]
            n_anom = min(math.ceil(k / 2), len(anomalous))
            n_norm = min(k - n_anom, len(normal))
            n_anom = k - n_norm  # fill with anomalous when normals run short (pool has >= k images)
            picked = _draw(rng, anomalous, n_anom) + _draw(rng, normal, n_norm)
        chosen.extend(picked)
        log.debug("class %s: %d shots (%d anomalous)", name, len(picked), sum(r.label for r in picked))
    chosen.sort(key=lambda r: (r.class_name, r.image_path))
    return chosen
