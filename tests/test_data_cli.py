"""aaclip-data CLI via click's CliRunner: exit codes, messages, output file contents."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
from aaclip.data.cli import main
from aaclip.data.records import Record, read_records
from click.testing import CliRunner


def _img(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.zeros((4, 4), np.uint8))


def _mvtec(root: Path) -> Path:
    """Two classes, each: 2 train good, 3 test good, 3 test anomalous (with masks)."""
    for cls in ("bottle", "screw"):
        for i in range(2):
            _img(root / f"{cls}/train/good/{i:03d}.png")
        for i in range(3):
            _img(root / f"{cls}/test/good/{i:03d}.png")
            _img(root / f"{cls}/test/crack/{i:03d}.png")
            _img(root / f"{cls}/ground_truth/crack/{i:03d}_mask.png")
    return root


def _run(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_mvtec_default_out(tmp_path):
    root = _mvtec(tmp_path / "mvtec")
    res = _run("mvtec", str(root))
    assert res.exit_code == 0, res.output
    out = root / "test.jsonl"
    assert f"wrote {out}: 12 images (6 normal, 6 anomalous) in 2 classes" in res.output
    rows = _lines(out)
    assert len(rows) == 12
    assert rows[0] == {"image_path": "bottle/test/crack/000.png", "label": 1, "class_name": "bottle",
                       "mask_path": "bottle/ground_truth/crack/000_mask.png"}
    assert len(read_records(out)) == 12  # default root (the file's folder) finds every file


def test_mvtec_out_elsewhere_is_rebased(tmp_path):
    root = _mvtec(tmp_path / "mvtec")
    out = tmp_path / "lists" / "train.jsonl"
    res = _run("mvtec", str(root), "--split", "train", "--out", str(out))
    assert res.exit_code == 0, res.output
    rows = _lines(out)
    assert [r["image_path"] for r in rows][:2] == ["../mvtec/bottle/train/good/000.png",
                                                   "../mvtec/bottle/train/good/001.png"]
    assert read_records(out) == [
        Record(f"../mvtec/{c}/train/good/{i:03d}.png", 0, c) for c in ("bottle", "screw") for i in range(2)
    ]


def test_visa(tmp_path):
    root = tmp_path / "visa"
    _img(root / "candle/Data/Images/Normal/0.JPG")
    _img(root / "candle/Data/Images/Anomaly/1.JPG")
    _img(root / "candle/Data/Masks/Anomaly/1.png")
    (root / "split_csv").mkdir()
    (root / "split_csv/1cls.csv").write_text(
        "object,split,label,image,mask\n"
        "candle,test,normal,candle/Data/Images/Normal/0.JPG,\n"
        "candle,test,anomaly,candle/Data/Images/Anomaly/1.JPG,candle/Data/Masks/Anomaly/1.png\n"
    )
    res = _run("visa", str(root))
    assert res.exit_code == 0, res.output
    assert read_records(root / "test.jsonl") == [
        Record("candle/Data/Images/Anomaly/1.JPG", 1, "candle", "candle/Data/Masks/Anomaly/1.png"),
        Record("candle/Data/Images/Normal/0.JPG", 0, "candle"),
    ]


def test_bad_root_exits_2_with_one_line(tmp_path):
    res = _run("mvtec", str(tmp_path / "missing"))
    assert res.exit_code == 2
    assert res.output.startswith("error: dataset root not found")
    assert res.output.count("\n") == 1
    res = _run("visa", str(tmp_path))
    assert res.exit_code == 2
    assert "does not look like the VisA layout" in res.output


def test_shots(tmp_path):
    root = _mvtec(tmp_path / "mvtec")
    assert _run("mvtec", str(root)).exit_code == 0
    src = root / "test.jsonl"
    res = _run("shots", str(src), "--k", "4", "--seed", "3")
    assert res.exit_code == 0, res.output
    out = root / "test_4shot_seed3.jsonl"
    shots = read_records(out)
    assert len(shots) == 8
    for cls in ("bottle", "screw"):
        assert sorted(r.label for r in shots if r.class_name == cls) == [0, 0, 1, 1]
    # Same seed, same file; explicit --out elsewhere re-bases the paths.
    other = tmp_path / "k4.jsonl"
    assert _run("shots", str(src), "--k", "4", "--seed", "3", "--out", str(other)).exit_code == 0
    assert [r.image_path for r in read_records(other)] == [f"mvtec/{r.image_path}" for r in shots]
    # Normal-only shots.
    assert _run("shots", str(src), "--k", "2", "--label", "normal", "--out", str(other)).exit_code == 0
    assert [r.label for r in read_records(other)] == [0, 0, 0, 0]
    # Too few images: one-line error naming the class and count.
    res = _run("shots", str(src), "--k", "7")
    assert res.exit_code == 2
    assert "error: class 'bottle' has 6 images, fewer than k=7" in res.output
    res = _run("shots", str(src), "--k", "7", "--allow-fewer", "--out", str(other))
    assert res.exit_code == 0 and len(read_records(other)) == 12


def test_check(tmp_path):
    root = _mvtec(tmp_path / "mvtec")
    assert _run("mvtec", str(root), "--split", "all").exit_code == 0
    res = _run("check", str(root / "all.jsonl"))
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split() == ["class", "normal", "anomalous", "masked", "total"]
    assert lines[1].split() == ["bottle", "5", "3", "3", "8"]
    assert lines[2].split() == ["screw", "5", "3", "3", "8"]
    assert lines[3].split() == ["total", "10", "6", "6", "16"]
    assert len(lines) == 4  # every anomaly has its mask: no note
    # Moved file: default root is wrong, --root fixes it, --no-files skips the file checks.
    moved = tmp_path / "all.jsonl"
    moved.write_text((root / "all.jsonl").read_text())
    res = _run("check", str(moved))
    assert res.exit_code == 2
    assert f"error: {moved}:1: field 'image_path': file not found" in res.output
    assert _run("check", str(moved), "--root", str(root)).exit_code == 0
    assert _run("check", str(moved), "--no-files").exit_code == 0
    moved.write_text('{"image_path": "x.png", "label": 1, "class_name": "a", "mask_path": 3}\n')
    res = _run("check", str(moved), "--no-files")
    assert res.exit_code == 2
    assert f"{moved}:1: field 'mask_path' must be a non-empty string or null" in res.output


def test_synth_wiring_with_stub(tmp_path, monkeypatch):
    calls = []

    def generate_dataset(out_dir, **kw):
        calls.append((Path(out_dir), kw))
        return {"train": Path(out_dir) / "train.jsonl", "test": Path(out_dir) / "test.jsonl"}

    stub = types.ModuleType("aaclip.data.synth")
    stub.generate_dataset = generate_dataset
    monkeypatch.setitem(sys.modules, "aaclip.data.synth", stub)
    out = tmp_path / "syn"
    res = _run("synth", str(out), "--seed", "5", "--size", "32", "--classes", "a, b",
               "--train-normal", "1", "--test-normal", "2", "--test-anomalous", "3")
    assert res.exit_code == 0, res.output
    assert calls == [(out, dict(classes=["a", "b"], image_size=32, n_train_normal=1, n_train_anomalous=4,
                                n_test_normal=2, n_test_anomalous=3, seed=5, paired=False))]
    assert res.output.splitlines() == [f"train: {out / 'train.jsonl'}", f"test: {out / 'test.jsonl'}"]
    assert _run("synth", str(out), "--paired").exit_code == 0 and calls[-1][1]["paired"] is True
    res = _run("synth", str(out), "--classes", " , ")
    assert res.exit_code == 2 and "names no class" in res.output


@pytest.mark.skipif(importlib.util.find_spec("aaclip.data.synth") is None,
                    reason="aaclip.data.synth not written yet")
def test_synth_real(tmp_path):
    out = tmp_path / "syn"
    res = _run("synth", str(out), "--size", "32", "--classes", "disk,wood", "--train-normal", "1",
               "--train-anomalous", "1", "--test-normal", "2", "--test-anomalous", "2")
    assert res.exit_code == 0, res.output
    test = read_records(out / "test.jsonl")
    assert sorted((r.class_name, r.label) for r in test) == [("disk", 0), ("disk", 0), ("disk", 1), ("disk", 1),
                                                             ("wood", 0), ("wood", 0), ("wood", 1), ("wood", 1)]
    assert len(read_records(out / "train.jsonl")) == 4


def test_help_and_module_entry():
    res = _run("--help")
    assert res.exit_code == 0
    for cmd in ("mvtec", "visa", "btad", "shots", "check", "synth"):
        assert cmd in res.output
    assert "ROOT/<split>.jsonl" in _run("mvtec", "--help").output
    proc = subprocess.run([sys.executable, "-m", "aaclip.data.cli", "check", "/nonexistent.jsonl"],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "error: records file not found: /nonexistent.jsonl; pass an existing .jsonl file"
