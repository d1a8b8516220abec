"""aaclip-train / aaclip-eval end to end on tiny random CLIP weights and synthetic data."""
import json
import os
import re
import subprocess
import sys

import pytest
from aaclip.train.common.backbone import write_random_weights
from aaclip.train.eval_cli import main as eval_main
from aaclip.data.records import read_records
from aaclip.data.synth import generate_dataset
from aaclip.train.train_cli import main as train_main
from click.testing import CliRunner
from metric_reference import assert_report_matches, reference_metrics


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    paths = generate_dataset(root / "data", classes=["disk", "wood"], image_size=64, n_train_normal=4,
                             n_train_anomalous=4, n_test_normal=4, n_test_anomalous=4, seed=3)
    write_random_weights("aaclip-tiny", root / "clip.safetensors", seed=0)
    return root, paths


def _run_module(module, *args):
    env = dict(os.environ)
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env, timeout=300)


def test_train_then_eval(workspace):
    root, paths = workspace
    out = root / "run"
    args = ["--data", str(paths["train"]), "--backbone", "aaclip-tiny", "--clip-weights", str(root / "clip.safetensors"),
            "--image-size", "64", "--out", str(out), "--epochs1", "1", "--epochs2", "1", "--batch1", "8", "--batch2", "4",
            "--object-name", "wood=oak plank", "-q"]
    res = CliRunner().invoke(train_main, args)
    assert res.exit_code == 0, res.output
    config = json.loads((out / "config.json").read_text())
    assert config["classes"] == {"disk": "metal disk", "wood": "oak plank"}
    assert config["backbone"]["weights_sha256"]
    hist = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert [(h["stage"], h["epoch"]) for h in hist] == [(1, 1), (2, 1)]
    # re-running the finished run resumes and adds nothing
    res = CliRunner().invoke(train_main, args)
    assert res.exit_code == 0 and len((out / "history.jsonl").read_text().splitlines()) == 2

    res = CliRunner().invoke(eval_main, ["--checkpoint", str(out), "--data", str(paths["test"]), "--overlays", "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((out / "eval" / "metrics.json").read_text())
    assert set(report) == {"disk", "wood", "mean"}
    # the figures of these very images, scored and measured apart from aaclip-eval (AA-CLIP, industrial: 0.5)
    expected = reference_metrics(out, paths["test"], map_weight=0.5)
    assert_report_matches(report, expected)
    assert {c: (report[c]["n_images"], report[c]["n_anomalous"]) for c in ("disk", "wood")} == {"disk": (8, 4),
                                                                                                 "wood": (8, 4)}
    for key in ("pixel_f1_max", "aupro"):
        assert 0.0 < report["disk"][key] <= 1.0
    for key in ("pixel_auroc", "image_auroc", "image_ap"):
        assert report["mean"][key] == pytest.approx((expected["disk"][key] + expected["wood"][key]) / 2)
    md = (out / "eval" / "metrics.md").read_text()
    assert md.splitlines()[0].startswith("| class") and "| mean |" in md
    overlays = sorted((out / "eval" / "overlays" / "disk").rglob("*.png"))
    # each overlay keeps its image's relative path (MVTec's repeated 000.png never overwrite each other)
    disk = [r.image_path for r in read_records(paths["test"]) if r.class_name == "disk"]
    assert sorted(p.relative_to(out / "eval" / "overlays" / "disk").as_posix() for p in overlays) == sorted(disk)
    import cv2

    assert cv2.imread(str(overlays[0])).shape == (64, 128, 3)  # frame | overlay


def test_eval_single_label_class_reports_missing_image_metrics(workspace, tmp_path):
    root, paths = workspace
    lines = [l for l in paths["test"].read_text().splitlines() if json.loads(l)["label"] == 0]
    only_normal = paths["test"].parent / "normal_only.jsonl"
    only_normal.write_text("\n".join(lines) + "\n")
    res = CliRunner().invoke(eval_main, ["--checkpoint", str(root / "run"), "--data", str(only_normal), "--out", str(tmp_path), "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["disk"]["image_auroc"] is None and report["mean"]["image_auroc"] is None


def test_cli_errors_are_one_line_with_status_2(workspace, tmp_path):
    root, paths = workspace
    res = _run_module("aaclip.train.train_cli", "--data", str(paths["train"]), "--out", str(tmp_path / "x"),
                      "--backbone", "aaclip-tiny")
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1] == "error: give exactly one of --clip-weights FILE, --pretrained TAG, --random-init SEED"
    assert not (tmp_path / "x").exists()  # a refused start leaves no empty checkpoint folder behind
    res = _run_module("aaclip.train.train_cli", "--data", str(paths["train"]), "--out", str(tmp_path / "x"),
                      "--backbone", "no-such-net", "--random-init", "0")
    assert res.returncode == 2 and "unknown OpenCLIP model 'no-such-net'" in res.stderr
    res = _run_module("aaclip.train.eval_cli", "--checkpoint", str(tmp_path / "missing"), "--data", str(paths["test"]))
    assert res.returncode == 2 and "checkpoint directory not found" in res.stderr
    res = _run_module("aaclip.train.train_cli", "--help")
    assert res.returncode == 0 and "import-official" in res.stdout


class SteppedClock:
    """A ``time`` stand-in whose ``perf_counter`` the test advances: progress lines without wall-clock speed."""

    def __init__(self, t: float = 1000.0):
        self.t = t

    def perf_counter(self) -> float:
        return self.t


def test_progress_logs_steps_per_second_and_eta_from_the_first_step(caplog, monkeypatch):
    """Off a terminal (a log file, CI) the first lines come at the start and after the first step, then every
    LOG_EVERY_S seconds: a large backbone shows life within seconds."""
    import logging

    from aaclip.train.common import progress as progress_module
    from aaclip.train.common.progress import Progress, format_seconds

    clock = SteppedClock()
    monkeypatch.setattr(progress_module, "time", clock)
    log = logging.getLogger("aaclip.test.progress")
    with caplog.at_level(logging.INFO, logger="aaclip.test.progress"):
        progress = Progress(range(6), 6, "stage 1 epoch 1/2", log, every_s=5.0, terminal=False)
        for i in progress:
            progress.note(loss=0.5 + i)
            clock.t += 2.0  # each step takes 2 s: lines after step 1 (t=2) and step 4 (t=8, 6 s after step 1)
    lines = [r.getMessage() for r in caplog.records]
    assert lines == ["stage 1 epoch 1/2: 6 steps",
                     "stage 1 epoch 1/2: 1/6 steps, 0.50 steps/s, ETA 10 s, loss 0.5000",
                     "stage 1 epoch 1/2: 4/6 steps, 0.50 steps/s, ETA 4 s, loss 3.5000"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="aaclip.test.progress"):  # slower than 0.1 steps/s: s/step
        progress = Progress(range(100), 100, "eval", log, every_s=5.0, unit="batch", terminal=False)
        for _ in progress:
            clock.t += 40.0
            if progress.done == 1:
                break
    assert [r.getMessage() for r in caplog.records][-1] == "eval: 1/100 batches, 40.0 s/batch, ETA 1 h 06 min"
    assert format_seconds(3725) == "1 h 02 min" and format_seconds(185) == "3 min 05 s"
    with caplog.at_level(logging.WARNING, logger="aaclip.test.progress"):  # -q: silent
        caplog.clear()
        assert list(Progress(range(3), 3, "x", log, terminal=False)) == [0, 1, 2] and not caplog.records


def test_train_help_names_the_tiny_backbone_and_lists_backbones():
    res = CliRunner().invoke(train_main, ["fit", "-h"])
    text = re.sub(r"-\s+", "-", " ".join(res.output.split()))  # undo the help's line wrapping
    assert res.exit_code == 0 and "aaclip-tiny (4 blocks" in text and "(`aaclip-train backbones` lists all" in text
    res = CliRunner().invoke(train_main, ["backbones"])
    rows = dict(line.split("\t") for line in res.output.splitlines())
    assert "openai" in rows["ViT-L-14-336"] and rows["aaclip-tiny"].startswith("random weights only")


def test_tiny_backbone_defaults_to_its_toy_resolution(tmp_path):
    """aaclip-tiny without --image-size runs at 64 px (at AA-CLIP's 518 px the toy costs seconds per step for
    nothing); --image-size still chooses; every other backbone keeps AA-CLIP's 518 px."""
    from aaclip.train.common.config import default_image_size

    for name, extra, size in (("plain", [], 64), ("sized", ["--image-size", "96"], 96)):
        res = CliRunner().invoke(train_main, ["init", "--backbone", "aaclip-tiny", "--random-init", "0", "--classes",
                                              "flange", "--out", str(tmp_path / name), "-q", *extra])
        assert res.exit_code == 0, res.output
        assert json.loads((tmp_path / name / "config.json").read_text())["image_size"] == size
    assert default_image_size("ViT-L-14-336") == 518 and default_image_size("ViT-B-16") == 518
    res = CliRunner().invoke(train_main, ["fit", "-h"])
    assert "[default: 518, AA-CLIP's; 64 for aaclip-tiny]" in " ".join(res.output.split())
