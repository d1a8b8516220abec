"""Dataset layouts -> records, on tiny fake trees (MVTec-AD, BTAD, VisA)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from aaclip.data.layouts import btad_records, mvtec_records, visa_records
from aaclip.data.records import DataError, Record


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((4, 4), np.uint8))


def make_mvtec(root: Path) -> Path:
    """bottle: 2 train good, 1 test good, 2 test broken; cable: 1 train good, 1 test cut."""
    for name in ("000.png", "001.png"):
        _img(root / "bottle/train/good" / name)
    _img(root / "bottle/test/good/000.png")
    for stem in ("000", "001"):
        _img(root / f"bottle/test/broken/{stem}.png")
        _img(root / f"bottle/ground_truth/broken/{stem}_mask.png")
    _img(root / "cable/train/good/000.png")
    _img(root / "cable/test/cut/005.png")
    _img(root / "cable/ground_truth/cut/005_mask.png")
    (root / "license.txt").write_text("not a class")
    (root / "bottle/test/good/readme.txt").write_text("not an image")
    return root


def test_mvtec_test_split(tmp_path):
    recs = mvtec_records(make_mvtec(tmp_path))
    assert recs == [
        Record("bottle/test/broken/000.png", 1, "bottle", "bottle/ground_truth/broken/000_mask.png"),
        Record("bottle/test/broken/001.png", 1, "bottle", "bottle/ground_truth/broken/001_mask.png"),
        Record("bottle/test/good/000.png", 0, "bottle"),
        Record("cable/test/cut/005.png", 1, "cable", "cable/ground_truth/cut/005_mask.png"),
    ]


def test_mvtec_train_and_all(tmp_path):
    root = make_mvtec(tmp_path)
    train = mvtec_records(root, split="train")
    assert train == [
        Record("bottle/train/good/000.png", 0, "bottle"),
        Record("bottle/train/good/001.png", 0, "bottle"),
        Record("cable/train/good/000.png", 0, "cable"),
    ]
    everything = mvtec_records(root, split="all")
    assert len(everything) == 7
    assert sum(r.label for r in everything) == 3
    assert set(train) < set(everything)


def test_mvtec_missing_mask(tmp_path):
    root = make_mvtec(tmp_path)
    (root / "bottle/ground_truth/broken/001_mask.png").unlink()
    with pytest.raises(DataError, match=r"no mask for anomalous image .*001\.png.*001_mask\.png"):
        mvtec_records(root)


def test_mvtec_wrong_root(tmp_path):
    (tmp_path / "something").mkdir()
    with pytest.raises(DataError, match=r"does not look like the MVTec-AD layout.*train/good"):
        mvtec_records(tmp_path)
    with pytest.raises(DataError, match="not a folder"):
        mvtec_records(tmp_path / "missing")
    with pytest.raises(DataError, match="unknown split 'val'"):
        mvtec_records(make_mvtec(tmp_path), split="val")


def test_btad(tmp_path):
    _img(tmp_path / "01/train/ok/0000.bmp")
    _img(tmp_path / "01/test/ok/0001.bmp")
    _img(tmp_path / "01/test/ko/0002.bmp")
    _img(tmp_path / "01/ground_truth/ko/0002.png")
    _img(tmp_path / "03/test/ko/0007.bmp")
    _img(tmp_path / "03/ground_truth/ko/0007.bmp")
    assert btad_records(tmp_path) == [
        Record("01/test/ko/0002.bmp", 1, "01", "01/ground_truth/ko/0002.png"),
        Record("01/test/ok/0001.bmp", 0, "01"),
        Record("03/test/ko/0007.bmp", 1, "03", "03/ground_truth/ko/0007.bmp"),
    ]
    assert btad_records(tmp_path, split="train") == [Record("01/train/ok/0000.bmp", 0, "01")]


VISA_ROWS = [
    ("candle", "train", "normal", "candle/Data/Images/Normal/0000.JPG", ""),
    ("candle", "test", "normal", "candle/Data/Images/Normal/0001.JPG", ""),
    ("candle", "test", "anomaly", "candle/Data/Images/Anomaly/0002.JPG", "candle/Data/Masks/Anomaly/0002.png"),
    ("pcb1", "test", "anomaly", "pcb1/Data/Images/Anomaly/0100.JPG", "pcb1/Data/Masks/Anomaly/0100.png"),
    ("pcb1", "train", "normal", "pcb1/Data/Images/Normal/0101.JPG", ""),
]


def make_visa(root: Path, rows=VISA_ROWS) -> Path:
    for row in rows:
        for p in row[3:]:
            if p:
                _img(root / p)
    csv = root / "split_csv" / "1cls.csv"
    csv.parent.mkdir(parents=True, exist_ok=True)
    csv.write_text("object,split,label,image,mask\n" + "".join(",".join(r) + "\n" for r in rows))
    return root


def test_visa_splits(tmp_path):
    root = make_visa(tmp_path)
    assert visa_records(root) == [
        Record("candle/Data/Images/Anomaly/0002.JPG", 1, "candle", "candle/Data/Masks/Anomaly/0002.png"),
        Record("candle/Data/Images/Normal/0001.JPG", 0, "candle"),
        Record("pcb1/Data/Images/Anomaly/0100.JPG", 1, "pcb1", "pcb1/Data/Masks/Anomaly/0100.png"),
    ]
    assert visa_records(root, split="train") == [
        Record("candle/Data/Images/Normal/0000.JPG", 0, "candle"),
        Record("pcb1/Data/Images/Normal/0101.JPG", 0, "pcb1"),
    ]
    assert len(visa_records(root, split="all")) == 5


def test_visa_errors(tmp_path):
    with pytest.raises(DataError, match=r"does not look like the VisA layout.*split_csv/1cls\.csv"):
        visa_records(tmp_path)
    bad_label = [*VISA_ROWS[:2], ("candle", "test", "defect", "candle/x.JPG", "")]
    root = make_visa(tmp_path / "a", bad_label)
    with pytest.raises(DataError, match=r"1cls\.csv:4: column 'label' must be 'normal' or 'anomaly', got 'defect'"):
        visa_records(root)
    root = make_visa(tmp_path / "b")
    (root / "pcb1/Data/Masks/Anomaly/0100.png").unlink()
    with pytest.raises(DataError, match=r"1cls\.csv:5: column 'mask': file not found: .*0100\.png"):
        visa_records(root)
    root = tmp_path / "c"
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv/1cls.csv").write_text("object,split,image\n")
    with pytest.raises(DataError, match="missing column.*label, mask"):
        visa_records(root)
