"""docs/own-data.md stays true: every `$` line of its ``console`` blocks runs here, in order, in a fresh folder
(the page's own `make_photos.py` draws the photos), and the facts the page shows in each command's output
(counts, "not computed", calibrated ...) must be in the real output too. The page's other commands (the
camera, the real ViT-L weights) cannot run here: their options must at least exist."""
from __future__ import annotations

import json
import re
import runpy
import shlex
from pathlib import Path

import click
import pytest
from aaclip.calibration.cli import cli as calibrate_main
from aaclip.contract.manifest import load_manifest
from aaclip.export.cli import cli as export_main
from aaclip.runtime.cli import main as runtime_main
from aaclip.data.cli import main as data_main
from aaclip.train.eval_cli import main as eval_main
from aaclip.data.records import read_records
from aaclip.train.train_cli import main as train_main
from click.testing import CliRunner
from metric_reference import assert_report_matches, reference_metrics

DOC = Path(__file__).resolve().parents[1] / "docs" / "own-data.md"
COMMANDS = {"aaclip-data": data_main, "aaclip-train": train_main, "aaclip-eval": eval_main,
            "aaclip-export": export_main, "aaclip-calibrate": calibrate_main, "aaclip-runtime": runtime_main}
TRAIN = ("aaclip-train --data flange/train.jsonl --backbone aaclip-tiny --random-init 0 --epochs1 2 --epochs2 5 "
         "--batch2 4 --lr1 1e-3 --lr2 2e-3 --out runs/flange")
RUNTIME = "aaclip-runtime runs/flange/aaclip-fp32.onnx"
# Every command of the page, in its order, with the facts its shown output states (each must also be in the
# real output). Times, timestamps, run ids and the toy model's scores vary and are not facts.
FACTS = {
    "python make_photos.py": [],
    "aaclip-data folder flange/": [
        "class name 'flange' (the folder's name; --class NAME chooses another)",
        "class flange: 40 good and 24 defective images (0 with masks)",
        "wrote flange/records.jsonl: 64 images (40 normal, 24 anomalous, none with a mask) in 1 class"],
    "aaclip-data check flange/records.jsonl": [
        "flange      40         24       0     64",
        "24 anomalous images have no mask: image-level labels (pixel losses and pixel metrics skip them)"],
    "aaclip-data split flange/records.jsonl": [
        "wrote flange/train.jsonl: 45 images (28 normal, 17 anomalous, none with a mask) in 1 class",
        "wrote flange/test.jsonl: 19 images (12 normal, 7 anomalous, none with a mask) in 1 class"],
    TRAIN: [
        "building aaclip-tiny at 64 px (random weights, seed 0)",
        "training on 45 images: pixel losses on the 28 with known pixels",
        "17 anomalies without masks train the image losses only",
        "stage 1 epoch 1/2: 3 steps", "stage 2 epoch 5/5: 12 steps", "checkpoint: runs/flange"],
    "aaclip-eval --checkpoint runs/flange --data flange/test.jsonl --overlays": [
        "wrote 19 overlays to runs/flange/eval/overlays", "| flange | – | – | – | – |",
        "flange: pixel metrics not computed: no anomalous image of this class has a mask (image-level labels only)",
        "metrics: runs/flange/eval/metrics.json"],
    "aaclip-export runs/flange": [
        "exporting aaclip-fp32.onnx (fp32, 1 class, input 64x64, opset 17)",
        "wrote runs/flange/aaclip-fp32.onnx", "next: aaclip-export --verify runs/flange/aaclip-fp32.onnx"],
    "aaclip-export --verify runs/flange/aaclip-fp32.onnx": [
        "--backend auto -> onnxruntime for this onnx artifact on this machine: AMD CPU (AuthenticAMD",
        "runs/flange/aaclip-fp32.onnx (fp32, onnxruntime backend) vs PyTorch:", "aaclip-fp32.onnx on onnxruntime: PASS"],
    f"{RUNTIME} --camera line/ --max-frames 4": [
        "aaclip-fp32.onnx is not calibrated", "(events say calibrated: false)", "threshold 0.5 (uncalibrated)",
        "summary: 4 frames", "stopped by max-frames"],
    "aaclip-calibrate threshold runs/flange/aaclip-fp32.onnx --data flange/test.jsonl": [
        "only 12 normal scores: threshold from a Gaussian fit",
        "calibrated on 12 normal frames (label-0 records of flange/test.jsonl)",
        "by gaussian-fit at far 0.001 (0 of 12 calibration frames at or above it)",
        "labelled check (information only, threshold unchanged): 7 anomalies vs the 12 calibration frames",
        "wrote runs/flange/aaclip-fp32.onnx.manifest.json", "plot runs/flange/aaclip-fp32.onnx.calibration.png"],
    f"{RUNTIME} --camera line/ --events events.jsonl --evidence alarms/": [
        "offline mode (every frame) for files", "line: end of stream after 20 frames", "summary: 20 frames",
        "stopped by end"],
    "head -n 2 events.jsonl": ['"source":"line","frame":0,"class":"flange"', '"file":"part_000.jpg","calibrated":true',
                               '"file":"part_001.jpg","calibrated":true'],
    f"{RUNTIME} --camera line.avi --threshold 0.7 --events video-events.jsonl --evidence alarms/": [
        "--threshold 0.7 replaces the calibrated threshold", "(events say calibrated: false)",
        "on line.avi; threshold 0.7 (set by hand), debounce 1, offline mode (every frame) for files",
        "W aaclip.runtime.loop: ALARM line.avi frame", "line.avi: end of stream after 20 frames", "summary: 20 frames",
        "stopped by end"],
    "tail -n 1 video-events.jsonl": ['"source":"line.avi","frame":19,"class":"flange"', '"threshold":0.7',
                                     '"file":null,"calibrated":false'],
    "ls alarms/": ["line.avi_000000"],
}


def fenced(text: str, lang: str) -> list[str]:
    """The contents of the page's ```lang blocks (also those indented in a list item)."""
    return re.findall(rf"^ *```{lang}\n(.*?)^ *```", text, flags=re.S | re.M)


def console_steps(text: str) -> list[tuple[str, str]]:
    """(command, the output the page shows for it) of every `$` line of the page's console blocks."""
    steps: list[tuple[str, list[str]]] = []
    for block in fenced(text, "console"):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:].strip(), []))
            else:
                assert steps, f"output before any command in a console block: {line!r}"
                steps[-1][1].append(line)
    return [(command, "\n".join(shown)) for command, shown in steps]


def run_step(command: str, script: str) -> str:
    """Run one of the page's commands in the current folder; returns what it printed (stdout and log)."""
    argv = shlex.split(command)
    if argv == ["python", "make_photos.py"]:
        Path("make_photos.py").write_text(script)
        runpy.run_path("make_photos.py", run_name="__main__")
        return ""
    if argv[0] in ("head", "tail"):
        assert argv[1] == "-n", command
        lines = Path(argv[3]).read_text().splitlines()
        n = int(argv[2])
        return "\n".join(lines[:n] if argv[0] == "head" else lines[-n:])
    if argv[0] == "ls":
        return "\n".join(sorted(p.name for p in Path(argv[1]).iterdir()))
    res = CliRunner().invoke(COMMANDS[argv[0]], argv[1:], catch_exceptions=False)
    assert res.exit_code == 0, f"{command}\n{res.output}"
    return res.output


@pytest.fixture
def one_torch_thread():
    """Training's many small steps spin in OpenMP barriers when other jobs share the 2 cores (43 s instead of
    11 s measured under load); one thread keeps this test near its quiet-machine time. Nothing checked here
    depends on it (the facts hold no scores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_tutorial_runs_as_written(tmp_path, monkeypatch, one_torch_thread):
    text = DOC.read_text()
    steps = console_steps(text)
    assert [c for c, _ in steps] == list(FACTS), "the page's commands changed: update FACTS"
    scripts = [s for s in fenced(text, "python") if s.startswith("# make_photos.py")]
    assert len(scripts) == 1
    monkeypatch.chdir(tmp_path)
    # the page shows a run on an AMD CPU (auto: onnxruntime) and says what an Intel CPU prints instead
    monkeypatch.setenv("AACLIP_CPU_VENDOR", "AuthenticAMD")
    printed = {}
    for command, shown in steps:
        printed[command] = out = run_step(command, scripts[0])
        for fact in FACTS[command]:
            assert fact in shown, f"the page no longer shows {fact!r} for `{command}`"
            assert fact in out, f"`{command}` no longer prints {fact!r}:\n{out}"

    # the overlay the page names is one the eval wrote (a test-split photo)
    named = re.search(r"the photo's own relative path \(`([^`]+)`", text).group(1)
    assert Path("runs/flange/eval/overlays/flange", named).is_file(), named
    # the photos are the case: 250x250 grayscale JPEGs, no masks
    import cv2

    assert cv2.imread("flange/crack/000.jpg", cv2.IMREAD_UNCHANGED).shape == (250, 250)
    records = read_records(Path("flange/records.jsonl"))
    assert len(records) == 64 and sum(r.label for r in records) == 24
    assert all(r.mask_path is None for r in records)

    metrics = json.loads(Path("runs/flange/eval/metrics.json").read_text())
    assert metrics["flange"]["pixel_auroc"] is None and metrics["flange"]["aupro"] is None  # not computed
    expected = reference_metrics(Path("runs/flange"), Path("flange/test.jsonl"), map_weight=0.5)  # apart from eval
    assert expected["flange"]["n_images"] == metrics["flange"]["n_images"] > 0
    assert_report_matches(metrics, expected)

    manifest = load_manifest(Path("runs/flange/aaclip-fp32.onnx"))
    assert manifest.calibrated and manifest.data["score"]["calibration"]["frames"] == 12
    threshold = manifest.data["score"]["threshold"]

    rows = [json.loads(line) for line in Path("events.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == [f"part_{i:03d}.jpg" for i in range(20)]  # events name the image file
    assert all(r["calibrated"] is True and r["threshold"] == pytest.approx(threshold) for r in rows)
    assert [r["anomalous"] for r in rows] == [r["raw_score"] >= threshold for r in rows]
    assert [r["anomalous"] for r in rows] == [r["score"] >= 0.5 for r in rows]  # the operator's [0, 1] score

    video = [json.loads(line) for line in Path("video-events.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in video] == list(range(20)) and all(r["file"] is None for r in video)
    flagged = [r for r in video if r["anomalous"]]
    assert flagged and [r["anomalous"] for r in video] == [r["raw_score"] >= 0.7 for r in video]
    assert sorted(Path(r["evidence"]).name for r in flagged) == printed["ls alarms/"].splitlines()
    summary = printed[f"{RUNTIME} --camera line.avi --threshold 0.7 --events video-events.jsonl --evidence alarms/"]
    # with --debounce 1 every anomalous frame is in the alarm state; consecutive ones are one alarm
    states = [r["alarm"] for r in video]
    onsets = sum(a and (i == 0 or not states[i - 1]) for i, a in enumerate(states))
    assert states == [r["anomalous"] for r in video]
    assert f"{len(flagged)} anomalous, {onsets} alarms ({len(flagged)} alarm frames)" in summary


def _command(prog: str, args: list[str]) -> click.Command:
    command = COMMANDS[prog]
    if isinstance(command, click.Group):
        name = args[0] if args and args[0] in command.commands else getattr(command, "default", None)
        assert name, f"{prog} {' '.join(args)}: no subcommand"
        command = command.commands[name]
    return command


def test_the_page_starts_from_the_readme_install():
    """The README installs into .venv without activating it: the page activates it before its first command
    (else `python make_photos.py` finds no cv2 and the aaclip commands are not on PATH)."""
    text = DOC.read_text()
    readme = (DOC.parents[1] / "README.md").read_text()
    assert "python3 -m venv .venv && .venv/bin/pip install" in readme  # what the page builds on
    first_command = text.index("```console")
    assert -1 < text.find("source .venv/bin/activate") < first_command
    assert text.find("No module named 'cv2'") < first_command


def test_the_commands_it_cannot_run_use_real_options():
    """The camera and real-weights commands (``sh`` blocks and inline code) name options that exist."""
    text = DOC.read_text()
    lines = [line.strip() for block in fenced(text, "sh") for line in block.splitlines() if line.strip()]
    lines += re.findall(r"`(aaclip-[a-z]+ [^`]*)`", text)
    checked = 0
    for line in lines:
        argv = shlex.split(line.replace("\n", " "))
        if argv[0] not in COMMANDS:
            continue
        known = {"--help"} | {opt for p in _command(argv[0], argv[1:]).params for opt in (*p.opts, *p.secondary_opts)}
        for token in argv[1:]:
            if token.startswith("--"):
                assert token.split("=")[0] in known, f"{line}: {token} is not an option of this command"
        checked += 1
    assert checked >= 8
