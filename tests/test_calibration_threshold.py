"""``aaclip-calibrate threshold``: manifest written atomically and used by the runtime with no extra flag."""
import json
from pathlib import Path

import aaclip.contract.files as fileio
import cv2
import numpy as np
import pytest
from aaclip.calibration import thresholds
from aaclip.calibration.cli import cli, main
from aaclip.calibration.inputs import Item, SetHash, folder_input, frame_payload
from aaclip.calibration.plot import save_score_histogram
from aaclip.calibration.score_calibration import ThresholdOptions, calibrate_artifact
from aaclip.contract.feeds import fit_frame
from aaclip.contract.files import sha256_file
from aaclip.contract.manifest import load_manifest
from aaclip.runtime.backends.onnxruntime import OnnxRuntimeRunner
from aaclip.runtime.cli import main as runtime_main
from aaclip.data.synth import draw_product
from click.testing import CliRunner
from plot_checks import bar_pixels_mask, dashed_columns, read_png
from runtime_fixtures import SIZE, frame_image, make_onnx_artifact, read_events

FAINT = 150  # a grey disc: darkness (255-150)/255 = 0.41, below the default threshold, far above normal frames


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def faint_frame(seed: int, defect: bool, size=(96, 128)) -> np.ndarray:
    img = frame_image(False, size, seed=seed)
    if defect:
        cv2.circle(img, (size[1] // 2, size[0] // 2), 10, (FAINT, FAINT, FAINT), -1)
    return img


def write_normals(folder: Path, n: int) -> list[Path]:
    folder.mkdir()
    paths = []
    for i in range(n):
        p = folder / f"{i:03d}.png"
        cv2.imwrite(str(p), faint_frame(100 + i, False))
        paths.append(p)
    return paths


def raw_outputs(art: Path, frames: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    runner = OnnxRuntimeRunner(art, providers=["CPUExecutionProvider"])
    with runner:
        batch = np.stack([fit_frame(f, SIZE, SIZE) for f in frames])
        out = runner.infer({"image": batch})
    return out["map_max"], out["cls_score"], out["anomaly_map"]


def write_mjpg(path: Path, frames: list) -> Path:
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    for f in frames:
        writer.write(f)
    writer.release()
    return path


def test_threshold_from_images_writes_manifest_atomically(tmp_path):
    art = make_onnx_artifact(tmp_path)
    sha_before = sha256_file(art)
    paths = write_normals(tmp_path / "good", 50)
    # the known answer below comes from ONNX Runtime: name it (auto picks OpenVINO on an Intel CPU)
    r = invoke("threshold", art, "--images", tmp_path / "good", "--backend", "onnxruntime", "-q")
    assert r.exit_code == 0, r.output
    assert "calibrated on 50 normal frames" in r.stdout
    assert "by tail-fit at far 0.001 (0 of 50 calibration frames at or above it)" in r.stdout  # 50 >= 40 frames
    assert "by quantile at pixel far 0.0001" in r.stdout  # 50 x 4096 pixels: 20 exceedances

    # the artifact is untouched, the manifest was replaced atomically (no temp files left)
    assert sha256_file(art) == sha_before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "model.onnx", "model.onnx.calibration.png",
                                                          "model.onnx.manifest.json"]
    data = json.loads((tmp_path / "model.onnx.manifest.json").read_text())
    score = data["score"]
    assert data["artifact"]["sha256"] == sha_before
    assert score["source"] == "calibration"
    c = score["calibration"]
    assert (c["frames"], c["far"], c["method"], c["pixel_far"], c["pixel_method"]) == (50, 0.001, "tail-fit", 1e-4,
                                                                                        "quantile")
    expected_hash = SetHash()  # file contents in name order
    for p in paths:
        expected_hash.update(Item(np.zeros(1), 0, p.read_bytes()))
    assert c["sha256"] == expected_hash.hexdigest()
    # known answer: the same numbers from outputs computed here directly
    mm, cs, _ = raw_outputs(art, [cv2.imread(str(p)) for p in paths])
    ref = thresholds.calibrate(mm, cs, 0.5, 0.001)
    for key in ("map_lo", "map_hi", "cls_lo", "cls_hi", "threshold"):
        assert score[key] == pytest.approx(ref[key], rel=1e-6), key
    # the plot: 700x400, the normal scores' bars, all left of the dashed threshold line (0 of 50 at or above it)
    plot = read_png(tmp_path / "model.onnx.calibration.png")
    line = dashed_columns(plot)
    assert plot.shape == (400, 700, 3) and line and max(line) - min(line) <= 2, line
    blue = np.flatnonzero(bar_pixels_mask(plot)[0].any(axis=0))
    assert blue.size > 20 and blue.max() < min(line)


def test_runtime_decisions_follow_calibration_without_flags(tmp_path):
    art = make_onnx_artifact(tmp_path)
    good = write_mjpg(tmp_path / "good.avi", [faint_frame(100 + i, False) for i in range(60)])
    defects = {2, 5}
    line = write_mjpg(tmp_path / "line.avi", [faint_frame(i, i in defects) for i in range(8)])

    def run_line():
        events = tmp_path / f"ev{len(list(tmp_path.glob('ev*')))}.jsonl"
        r = CliRunner().invoke(runtime_main, [str(art), "--camera", str(line), "--no-drop", "--events", str(events),
                                              "-q"])
        assert r.exit_code == 0, r.output
        ev = read_events(events)
        return {e["frame"] for e in ev if e["anomalous"]}, ev[0]["threshold"]

    assert run_line() == (set(), 0.5)  # the default constants miss the faint defects
    r = invoke("threshold", art, "--camera", good, "--frames", 60, "--no-plot", "-q")
    assert r.exit_code == 0, r.output
    calibrated = load_manifest(art).score.threshold
    assert calibrated != 0.5
    flagged, used = run_line()  # no --threshold: the manifest's calibrated constants decide
    assert flagged == defects
    assert used == pytest.approx(calibrated)


def test_failed_write_leaves_old_manifest_and_no_temp_files(tmp_path, monkeypatch):
    art = make_onnx_artifact(tmp_path)
    write_normals(tmp_path / "good", 12)
    mpath = tmp_path / "model.onnx.manifest.json"
    before = mpath.read_bytes()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(fileio.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        calibrate_artifact(art, folder_input(tmp_path / "good", 0), options=ThresholdOptions(pixel_samples=0))
    monkeypatch.undo()
    assert mpath.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good", "model.onnx", "model.onnx.manifest.json"]


def test_calibrate_from_synthetic_video_camera(tmp_path):
    art = make_onnx_artifact(tmp_path)
    video = tmp_path / "cam.avi"
    rng = np.random.default_rng(3)
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 96))
    for _ in range(36):
        writer.write(draw_product("disk", rng, 96))
    writer.release()

    r = invoke("threshold", art, "--camera", video, "--frames", 30, "--batch", 4, "--no-plot", "-q")
    assert r.exit_code == 0, r.output
    assert "calibrated on 30 normal frames" in r.stdout and "by gaussian-fit" in r.stdout
    c = load_manifest(art).data["score"]["calibration"]
    cap = cv2.VideoCapture(str(video))
    decoded = [cap.read()[1] for _ in range(30)]
    cap.release()
    expected = SetHash()
    for f in decoded:
        expected.update(Item(f, 0, frame_payload(f)))
    assert (c["frames"], c["method"], c["batch"], c["sha256"]) == (30, "gaussian-fit", 4, expected.hexdigest())
    mm, cs, _ = raw_outputs(art, decoded)
    assert load_manifest(art).score.threshold == pytest.approx(thresholds.calibrate(mm, cs, 0.5)["threshold"], rel=1e-6)
    assert not (tmp_path / "model.onnx.calibration.png").exists()


def test_dry_run_and_labelled_report(tmp_path):
    art = make_onnx_artifact(tmp_path)
    before = (tmp_path / "model.onnx.manifest.json").read_bytes()
    (tmp_path / "imgs").mkdir()
    lines = []
    for i in range(30):
        defect = i >= 24
        cv2.imwrite(str(tmp_path / "imgs" / f"{i}.png"), faint_frame(i, defect))
        lines.append(json.dumps({"image_path": f"imgs/{i}.png", "label": int(defect), "class_name": "bottle",
                                 "mask_path": f"imgs/{i}.png" if defect else None}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n")
    r = invoke("threshold", art, "--data", tmp_path / "data.jsonl", "--dry-run", "-q")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "model.onnx.manifest.json").read_bytes() == before
    assert not (tmp_path / "model.onnx.calibration.png").exists()
    assert "calibrated on 24 normal frames" in r.stdout and "dry run: manifest not written" in r.stdout
    assert "6 anomalies vs the 24 calibration frames" in r.stdout
    assert "AUROC 1.0000, detection rate 1.000 at the threshold" in r.stdout
    block = json.loads(r.stdout[r.stdout.index("{"):r.stdout.rindex("}") + 1])["score"]
    assert block["source"] == "calibration" and block["calibration"]["frames"] == 24


def test_bad_inputs_exit_2_with_one_line(tmp_path, capsys):
    art = make_onnx_artifact(tmp_path, classes=("bottle", "cable"), class_offsets=(0.0, 1.0))
    write_normals(tmp_path / "good", 3)
    cases = [
        (["threshold", art, "--images", tmp_path / "good"],
         "model.onnx holds several classes; choose the one these frames show with --class NAME"),
        (["threshold", art], "give exactly one source of normal frames"),
        (["threshold", art, "--camera", tmp_path / "x.avi", "--class", "bottle"], "--camera needs --frames N"),
        (["threshold", art, "--images", tmp_path / "good", "--class", "bottle", "--far", "0.7"],
         "far must be a rate in (0, 0.5), got 0.7"),
        (["threshold", art, "--images", tmp_path / "nothing", "--class", "bottle"],
         f"image folder {tmp_path / 'nothing'} not found"),
    ]
    manifest_before = (tmp_path / "model.onnx.manifest.json").read_bytes()
    capsys.readouterr()
    for args, message in cases:
        with pytest.raises(SystemExit) as exc:
            main([str(a) for a in args])
        out, err = capsys.readouterr()
        assert exc.value.code == 2, args
        assert out == "" and err.startswith(f"error: {message}") and err.count("\n") == 1, (args, err)
    assert not (tmp_path / "model.onnx.calibration.png").exists()  # nothing written by a refused run
    assert (tmp_path / "model.onnx.manifest.json").read_bytes() == manifest_before


def test_bad_input_message(tmp_path, capsys):
    art = make_onnx_artifact(tmp_path, classes=("bottle", "cable"), class_offsets=(0.0, 1.0))
    write_normals(tmp_path / "good", 3)
    with pytest.raises(SystemExit):
        main(["threshold", str(art), "--images", str(tmp_path / "good")])
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: model.onnx holds several classes")


def test_plot_shows_the_scores_and_the_threshold(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    figures = []
    real_close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig) or real_close(fig))
    rng = np.random.default_rng(0)
    normal, anomalies = rng.normal(0.3, 0.05, 200), rng.normal(0.7, 0.05, 10)
    assert save_score_histogram(tmp_path / "h.png", normal, 0.5, anomalies, title="bottle") is True
    ax = figures[0].axes[0]
    bars = {c.patches[0].get_label(): sum(p.get_height() for p in c.patches) for c in ax.containers}
    assert bars == {"normal (n=200)": 200, "anomalous (n=10)": 10}  # every score is in a bar
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["normal (n=200)", "anomalous (n=10)",
                                                                   "threshold 0.5"]
    assert ax.get_title() == "bottle" and ax.get_yscale() == "log"
    # the PNG: 7 x 4 in at 100 dpi; the dashed line at the threshold's pixel column; blue bars left of it,
    # red ones right of it (no normal score reaches 0.5 here, every anomaly does)
    plot = read_png(tmp_path / "h.png")
    x = ax.transData.transform((0.5, 1.0))[0]
    line = dashed_columns(plot)
    assert plot.shape == (400, 700, 3) and line and all(abs(c - x) <= 2 for c in line), (line, x)
    blue, red = (np.flatnonzero(m.any(axis=0)) for m in bar_pixels_mask(plot))
    assert blue.size > 20 and red.size > 5 and blue.max() < min(line) < max(line) < red.min()


def test_plot_skipped_without_matplotlib(tmp_path, monkeypatch, caplog):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert save_score_histogram(tmp_path / "h.png", np.arange(10.0), 5.0) is False
    assert not (tmp_path / "h.png").exists()
    assert "matplotlib is not installed" in caplog.text


def test_threshold_and_runtime_run_without_torch(tmp_path):
    """On a bare Jetson: calibrate on site and run the camera loop with torch/open_clip unimportable."""
    import subprocess
    import sys

    art = make_onnx_artifact(tmp_path)
    write_normals(tmp_path / "good", 12)
    video = write_mjpg(tmp_path / "cam.avi", [faint_frame(200 + i, i == 3) for i in range(6)])
    prelude = ("import sys\nfor m in ('torch', 'open_clip', 'torchvision'): sys.modules[m] = None\n"
               "sys.argv = sys.argv[1:]\n")
    calibrate = prelude + "from aaclip.calibration.cli import main; main()"
    res = subprocess.run([sys.executable, "-c", calibrate, "x", "threshold", str(art), "--images", str(tmp_path / "good"),
                          "-q"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert load_manifest(art).data["score"]["source"] == "calibration"
    run = prelude + "from aaclip.runtime.cli import main; main()"
    res = subprocess.run([sys.executable, "-c", run, "x", str(art), "--camera", str(video), "--no-drop",
                          "--events", str(tmp_path / "ev.jsonl"), "-q"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert len(read_events(tmp_path / "ev.jsonl")) == 6
