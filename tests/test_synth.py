"""Tests for the synthetic data generator (aaclip.data.synth)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from aaclip.contract.errors import UserError
from aaclip.data import synth


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_constants_are_consistent():
    assert len(synth.CLASSES) >= 5 and len(set(synth.CLASSES)) == len(synth.CLASSES)
    assert set(synth.OBJECT_NAMES) == set(synth.CLASSES)
    assert all(isinstance(v, str) and v for v in synth.OBJECT_NAMES.values())
    assert set(synth.DEFECTS) >= {"scratch", "crack", "hole", "stain", "missing"}
    assert synth.OBJECT_CLASSES <= set(synth.CLASSES)


@pytest.mark.parametrize("class_name", synth.CLASSES)
def test_draw_product_shape_and_natural_variation(class_name):
    a = synth.draw_product(class_name, np.random.default_rng(1), 96)
    b = synth.draw_product(class_name, np.random.default_rng(1), 96)
    c = synth.draw_product(class_name, np.random.default_rng(2), 96)
    assert a.shape == (96, 96, 3) and a.dtype == np.uint8
    np.testing.assert_array_equal(a, b)
    # Different draws differ clearly, not only by sensor noise.
    assert np.abs(a.astype(int) - c).mean() > 8
    assert 20 < a.mean() < 235 and a.std() > 10


@pytest.mark.parametrize("class_name", synth.CLASSES)
def test_every_defect_has_an_exact_visible_mask(class_name):
    size = 128
    for kind in synth.DEFECTS:
        for seed in range(3):
            image = synth.draw_product(class_name, np.random.default_rng(seed), size)
            before = image.copy()
            out, mask = synth.add_defect(image, np.random.default_rng(100 + seed), kind, class_name)
            np.testing.assert_array_equal(image, before)  # input untouched
            assert out.shape == image.shape and out.dtype == np.uint8
            assert mask.shape == (size, size) and mask.dtype == np.uint8
            assert set(np.unique(mask)) == {0, 255}
            inside = mask > 0
            np.testing.assert_array_equal(out[~inside], image[~inside])
            changed = (out != image).any(axis=2)
            assert changed[inside].mean() >= 0.9, (class_name, kind)
            assert synth.MIN_DEFECT_AREA <= inside.mean() <= synth.MAX_DEFECT_AREA, (class_name, kind)
            change = np.abs(out.astype(int) - image.astype(int))[inside].mean()
            assert change > 30, (class_name, kind, change)


@pytest.mark.parametrize("kind", synth.DEFECTS)
def test_defects_on_grey_camera_frames_keep_the_mask_exact(kind):
    """A monochrome camera's frame (B = G = R) at 518 px: a drawn pixel that happens to equal the frame's is
    pushed away so the mask stays exact (a hole used to fail here with a shape mismatch)."""
    for seed in range(3):
        grey = np.random.default_rng(seed).integers(0, 80, (518, 518), dtype=np.uint8)
        image = np.repeat(grey[..., None], 3, axis=2)
        out, mask = synth.add_defect(image, np.random.default_rng(seed), kind)
        inside = mask > 0
        assert synth.MIN_DEFECT_AREA <= inside.mean() <= synth.MAX_DEFECT_AREA
        np.testing.assert_array_equal(out[~inside], image[~inside])
        assert (out != image).any(axis=2)[inside].all(), (kind, seed)  # every masked pixel changed


@pytest.mark.parametrize("class_name", sorted(synth.OBJECT_CLASSES))
def test_object_defects_land_on_the_object(class_name):
    for i, kind in enumerate(synth.DEFECTS * 2):
        image = synth.draw_product(class_name, np.random.default_rng(i), 128)
        _, mask = synth.add_defect(image, np.random.default_rng(50 + i), kind, class_name)
        border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(int)
        background = np.median(border, axis=0)
        on_object = np.abs(image.astype(int) - background).max(axis=2) > 25
        assert on_object[mask > 0].mean() > 0.9, (class_name, kind)


def test_random_kind_and_no_class_work_anywhere():
    image = synth.draw_product("wood", np.random.default_rng(0), 64)
    out, mask = synth.add_defect(image, np.random.default_rng(0))
    assert mask.any()
    np.testing.assert_array_equal(out[mask == 0], image[mask == 0])


def test_bad_inputs_name_the_problem_and_the_choices():
    with pytest.raises(UserError, match=r"unknown synthetic class 'bottle'; available: disk, capsule"):
        synth.draw_product("bottle", np.random.default_rng(0), 64)
    image = synth.draw_product("disk", np.random.default_rng(0), 64)
    with pytest.raises(UserError, match=r"unknown defect kind 'dent'; available: scratch, crack"):
        synth.add_defect(image, np.random.default_rng(0), "dent")
    with pytest.raises(UserError, match=r"uint8 H x W x 3"):
        synth.add_defect(image.astype(np.float32), np.random.default_rng(0))
    with pytest.raises(UserError, match=r">= 32"):
        synth.draw_product("disk", np.random.default_rng(0), 16)


def test_generate_dataset_unknown_class(tmp_path):
    with pytest.raises(UserError) as err:
        synth.generate_dataset(tmp_path, classes=["disk", "bottle"])
    message = str(err.value)
    assert "'bottle'" in message and "available: " + ", ".join(synth.CLASSES) in message
    assert not (tmp_path / "train.jsonl").exists()


def test_generate_dataset_layout_and_records(tmp_path):
    paths = synth.generate_dataset(tmp_path, classes=["disk", "mesh"], image_size=64, n_train_normal=2,
                                   n_train_anomalous=3, n_test_normal=1, n_test_anomalous=6, seed=3)
    assert paths == {"train": tmp_path / "train.jsonl", "test": tmp_path / "test.jsonl"}
    expected = {"train": (2, 3), "test": (1, 6)}
    for split, (n_normal, n_anomalous) in expected.items():
        records = _read_jsonl(paths[split])
        assert len(records) == 2 * (n_normal + n_anomalous)
        for class_name in ("disk", "mesh"):
            labels = [r["label"] for r in records if r["class_name"] == class_name]
            assert labels.count(0) == n_normal and labels.count(1) == n_anomalous
        for r in records:
            assert set(r) == {"image_path", "label", "class_name", "mask_path"}
            assert r["image_path"].startswith(f"images/{split}/{r['class_name']}/")
            image = cv2.imread(str(tmp_path / r["image_path"]), cv2.IMREAD_COLOR)
            assert image.shape == (64, 64, 3)
            if r["label"] == 0:
                assert r["mask_path"] is None
                assert Path(r["image_path"]).name.startswith("good_")
            else:
                assert r["label"] == 1
                assert r["mask_path"] == r["image_path"].replace("images/", "masks/", 1).replace(".png", "_mask.png")
                mask = cv2.imread(str(tmp_path / r["mask_path"]), cv2.IMREAD_UNCHANGED)
                assert mask.shape == (64, 64) and set(np.unique(mask)) == {0, 255}
                assert synth.MIN_DEFECT_AREA <= (mask > 0).mean() <= synth.MAX_DEFECT_AREA
    # Anomaly i carries defect DEFECTS[i % len(DEFECTS)]: all kinds appear in the test split.
    names = sorted(Path(r["image_path"]).stem for r in _read_jsonl(paths["test"])
                   if r["label"] == 1 and r["class_name"] == "disk")
    assert names == sorted(f"bad_{i:03d}_{synth.DEFECTS[i % len(synth.DEFECTS)]}" for i in range(6))
    # Nothing besides the listed files (no temporary leftovers).
    listed = {"train.jsonl", "test.jsonl"}
    for split in ("train", "test"):
        for r in _read_jsonl(paths[split]):
            listed.add(r["image_path"])
            if r["mask_path"]:
                listed.add(r["mask_path"])
    assert set(_files(tmp_path)) == listed


def test_paired_anomalies_are_normal_images_with_a_defect(tmp_path):
    """``paired``: anomaly i is normal image i % n_normal of its split and class, changed only under its mask."""
    paths = synth.generate_dataset(tmp_path, classes=["plate", "disk"], image_size=64, n_train_normal=2,
                                   n_train_anomalous=3, n_test_normal=1, n_test_anomalous=2, seed=4, paired=True)
    pairs = 0
    for split in ("train", "test"):
        rows = _read_jsonl(paths[split])
        for cls in ("plate", "disk"):
            good = [r for r in rows if r["class_name"] == cls and r["label"] == 0]
            bad = [r for r in rows if r["class_name"] == cls and r["label"] == 1]
            for i, r in enumerate(bad):
                normal = cv2.imread(str(tmp_path / good[i % len(good)]["image_path"]), cv2.IMREAD_COLOR)
                image = cv2.imread(str(tmp_path / r["image_path"]), cv2.IMREAD_COLOR)
                inside = cv2.imread(str(tmp_path / r["mask_path"]), cv2.IMREAD_UNCHANGED) > 0
                np.testing.assert_array_equal(image[~inside], normal[~inside])
                assert (image != normal).any(axis=2)[inside].all()
                pairs += 1
    assert pairs == 2 * (3 + 2)
    # unpaired anomalies are other products
    other = synth.generate_dataset(tmp_path / "unpaired", classes=["plate"], image_size=64, n_train_normal=1,
                                   n_train_anomalous=1, n_test_normal=0, n_test_anomalous=0, seed=4)
    rows = _read_jsonl(other["train"])
    a, b = (cv2.imread(str(tmp_path / "unpaired" / r["image_path"]), cv2.IMREAD_COLOR) for r in rows)
    assert np.abs(a.astype(int) - b).mean() > 8
    with pytest.raises(UserError, match="at least one normal image per split"):
        synth.generate_dataset(tmp_path / "x", classes=["plate"], n_test_normal=0, n_test_anomalous=2, paired=True)


def test_generate_dataset_is_deterministic(tmp_path):
    kwargs = dict(classes=["capsule", "wood"], image_size=64, n_train_normal=1, n_train_anomalous=2,
                  n_test_normal=1, n_test_anomalous=2)
    synth.generate_dataset(tmp_path / "a", seed=7, **kwargs)
    synth.generate_dataset(tmp_path / "b", seed=7, **kwargs)
    synth.generate_dataset(tmp_path / "c", seed=8, **kwargs)
    a, b, c = (_files(tmp_path / name) for name in "abc")
    assert a == b
    assert set(a) == set(c)
    pngs = [k for k in a if k.startswith("images/")]
    assert all(a[k] != c[k] for k in pngs)

    # More images per split leave the earlier ones unchanged.
    more = dict(kwargs, n_train_anomalous=4, n_test_normal=3)
    synth.generate_dataset(tmp_path / "d", seed=7, **more)
    d = _files(tmp_path / "d")
    assert all(d[k] == a[k] for k in a if k.endswith(".png"))
    assert len([k for k in d if k.endswith(".png")]) > len([k for k in a if k.endswith(".png")])


def test_generate_dataset_rejects_bad_counts(tmp_path):
    with pytest.raises(UserError, match="n_test_normal must be a non-negative integer"):
        synth.generate_dataset(tmp_path, n_test_normal=-1)
    with pytest.raises(UserError, match="seed must be a non-negative integer"):
        synth.generate_dataset(tmp_path, seed=-5)


@pytest.mark.parametrize("class_name", ["disk", "plate"])
def test_video_frames_and_masks(class_name):
    n, defect_frames = 12, {2, 7, 11}
    frames, masks = synth.synthetic_video_frames(class_name, n, defect_frames, 96, seed=4)
    clean, clean_masks = synth.synthetic_video_frames(class_name, n, set(), 96, seed=4)
    assert len(frames) == len(masks) == n
    assert all(m is None for m in clean_masks)
    assert {i for i, m in enumerate(masks) if m is not None} == defect_frames
    for i, (frame, mask) in enumerate(zip(frames, masks)):
        assert frame.shape == (96, 96, 3) and frame.dtype == np.uint8
        if mask is None:
            np.testing.assert_array_equal(frame, clean[i])
        else:
            inside = mask > 0
            assert inside.any()
            np.testing.assert_array_equal(frame[~inside], clean[i][~inside])
            assert (frame != clean[i]).any(axis=2)[inside].all()
    # The product moves: consecutive clean frames differ by more than sensor noise.
    assert np.abs(clean[0].astype(int) - clean[1]).mean() > 5
    with pytest.raises(UserError, match=r"outside 0..11"):
        synth.synthetic_video_frames(class_name, n, {12}, 96)


def test_module_does_not_import_torch():
    code = "import sys, aaclip.data.synth; assert 'torch' not in sys.modules, 'torch imported'"
    env_path = ":".join(p for p in sys.path if p)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
