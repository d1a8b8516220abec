"""Subsets of a record list, deterministic for a seed: k-shot sets (``sample_shots``) and train/test
splits (``split_records``).

``split_records``: per class and label, ``round(n * fraction)`` images go to the test set, at least one
when the group has two or more images and never all of them, so both sets keep every class and label
that has enough images; drawn like the shots below.

k-shot sets: k images per class.

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

from aaclip.data.records import ANOMALOUS, LABELS, NORMAL, DataError, Record, class_names

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


def split_records(records: Iterable[Record], test_fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, test): ``test_fraction`` of each class's normal and of its anomalous images go to test."""
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"the test fraction must be between 0 and 1 (exclusive), got {test_fraction}")
    records = sorted(records, key=lambda r: (r.class_name, r.image_path, r.label, r.mask_path or ""))
    if not records:
        raise DataError("no records to split")
    train: list[Record] = []
    test: list[Record] = []
    for name in class_names(records):
        for label in LABELS:
            group = [r for r in records if r.class_name == name and r.label == label]
            if not group:
                continue
            n_test = min(max(round(len(group) * test_fraction), 1), len(group) - 1) if len(group) > 1 else 0
            picked = set(map(id, random.Random(f"{seed}:{name}:{label}").sample(group, n_test)))
            test += [r for r in group if id(r) in picked]
            train += [r for r in group if id(r) not in picked]
            if len(group) < 2:
                log.warning("class %s has a single %s image: it goes to the training set only", name,
                            "normal" if label == NORMAL else "anomalous")
    key = lambda r: (r.class_name, r.image_path)  # noqa: E731
    return sorted(train, key=key), sorted(test, key=key)
