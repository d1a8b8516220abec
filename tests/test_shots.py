"""k-shot sampling: counts per class and label, determinism, errors."""
from __future__ import annotations

import random

import pytest
from aaclip.data.records import DataError, Record
from aaclip.data.shots import sample_shots


def _records(name: str, n_normal: int, n_anomalous: int) -> list[Record]:
    normal = [Record(f"{name}/n{i:02d}.png", 0, name) for i in range(n_normal)]
    anomalous = [Record(f"{name}/a{i:02d}.png", 1, name, f"{name}/a{i:02d}_mask.png") for i in range(n_anomalous)]
    return normal + anomalous


def _per_class(shots: list[Record]) -> dict[str, tuple[int, int]]:
    out: dict[str, list[int]] = {}
    for r in shots:
        out.setdefault(r.class_name, [0, 0])[r.label] += 1
    return {k: tuple(v) for k, v in out.items()}


RECORDS = _records("a", 10, 10) + _records("b", 2, 10) + _records("c", 10, 1)


def test_balanced_counts():
    shots = sample_shots(RECORDS, k=5, seed=0)
    # a: ceil(5/2)=3 anomalous + 2 normal; b: only 2 normal -> 3 anom + 2 normal;
    # c: 1 anomalous available -> 1 anomalous + 4 normal.
    assert _per_class(shots) == {"a": (2, 3), "b": (2, 3), "c": (4, 1)}
    shots = sample_shots(RECORDS, k=6, seed=0)
    assert _per_class(shots) == {"a": (3, 3), "b": (2, 4), "c": (5, 1)}
    assert _per_class(sample_shots(RECORDS, k=1, seed=3)) == {"a": (0, 1), "b": (0, 1), "c": (0, 1)}
    assert len(set(shots)) == len(shots)  # no duplicates
    assert all(r in RECORDS for r in shots)
    assert shots == sorted(shots, key=lambda r: (r.class_name, r.image_path))


def test_deterministic_and_order_independent():
    shuffled = list(RECORDS)
    random.Random(1).shuffle(shuffled)
    first = sample_shots(RECORDS, k=4, seed=7)
    assert sample_shots(shuffled, k=4, seed=7) == first
    assert sample_shots(RECORDS, k=4, seed=7) == first
    # Different seeds give different subsets (class a has C(10,2)^2 choices).
    assert any(sample_shots(RECORDS, k=4, seed=s) != first for s in range(8))
    # Removing a class does not change what the others get.
    without_b = [r for r in RECORDS if r.class_name != "b"]
    assert sample_shots(without_b, k=4, seed=7) == [r for r in first if r.class_name != "b"]


def test_single_label():
    normal = sample_shots(RECORDS, k=2, seed=0, label=0)
    assert _per_class(normal) == {"a": (2, 0), "b": (2, 0), "c": (2, 0)}
    with pytest.raises(DataError, match=r"class 'c' has 1 anomalous images, fewer than k=2"):
        sample_shots(RECORDS, k=2, seed=0, label=1)
    fewer = sample_shots(RECORDS, k=2, seed=0, label=1, allow_fewer=True)
    assert _per_class(fewer) == {"a": (0, 2), "b": (0, 2), "c": (0, 1)}


def test_too_few_images():
    with pytest.raises(DataError, match=r"class 'b' has 12 images, fewer than k=13"):
        sample_shots(RECORDS, k=13, seed=0)
    shots = sample_shots(RECORDS, k=13, seed=0, allow_fewer=True)
    assert _per_class(shots) == {"a": (6, 7), "b": (2, 10), "c": (10, 1)}


def test_bad_arguments():
    with pytest.raises(DataError, match="k must be at least 1"):
        sample_shots(RECORDS, k=0, seed=0)
    with pytest.raises(DataError, match="label must be"):
        sample_shots(RECORDS, k=1, seed=0, label=2)
    with pytest.raises(DataError, match="no records"):
        sample_shots([], k=1, seed=0)
