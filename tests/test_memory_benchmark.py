"""Bounded memory at real size, tested at tiny size: INT8 ranges streamed batch by batch equal ONNX Runtime's
whole-set ranges, only the quantized nodes' inputs are calibrated, reductions run early; the opt-in memory
benchmark (benchmarks/memory.py) runs every step and measures a child's peak RSS."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from aaclip.benchmarks import memory
from aaclip.calibration import int8
from aaclip.contract.manifest import load_manifest
from aaclip.export.onnx_export import export_onnx
from aaclip.train.checkpoint import random_checkpoint
from aaclip.data.synth import draw_product


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    root = tmp_path_factory.mktemp("mem")
    random_checkpoint(root / "ckpt", backbone="aaclip-tiny", image_size=64)
    path = export_onnx(root / "ckpt", root / "model.onnx").path
    rng = np.random.default_rng(0)
    frames = np.stack([draw_product("disk", rng, 64) for _ in range(6)])
    return root, path, load_manifest(path), frames


def test_streamed_ranges_equal_whole_set_ranges(graph, tmp_path):
    """The lean range collector (two scalars per tensor and batch) gives ONNX Runtime's own MinMax ranges."""
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    root, path, manifest, frames = graph
    plan = int8.plan_quantization(onnx.load(str(path)))
    ids = np.zeros(len(frames), np.int64)
    streamed = int8.collect_ranges(onnx.load(str(path)), plan, frames, ids, manifest, 2, tmp_path)
    assert set(streamed) == set(int8.activation_inputs(onnx.load(str(path)), plan))
    assert not any("MatMul" in t and "attn" in t for t in streamed)  # no attention score/value products
    whole = create_calibrator(path, list(int8.QUANT_OP_TYPES), str(tmp_path / "whole.onnx"),
                              calibrate_method=CalibrationMethod.MinMax)
    whole.collect_data(int8._reader(frames, ids, manifest, len(frames)))
    reference = whole.compute_data()
    for name, (lo, hi) in streamed.items():
        ref_lo, ref_hi = (float(np.asarray(v).reshape(-1)[0]) for v in reference[name].range_value)
        assert (float(lo), float(hi)) == pytest.approx((ref_lo, ref_hi), rel=1e-6, abs=1e-6), name


def test_memory_benchmark_steps_at_tiny_size(tmp_path):
    args = {"name": "aaclip-tiny", "size": 64, "frames": 8, "holdout": 0, "train_batch": 1, "batch": 4}
    for step in ("checkpoint", "train1", "train2", "export"):
        result = memory.run_step(step, tmp_path, args)
        assert result["wall_s"] >= 0 and result["sampled_peak_mb"] > 0
        if step.startswith("train"):
            assert result["batch"] == 1 and result["device"] in ("cpu", "cuda")
    row = memory.measure_step("int8", tmp_path, args)  # a child process: its own peak RSS (peak_rss.run_measured)
    assert row["exit_code"] == 0 and row["calibration_frames"] == 6 and row["gate_frames"] == 4
    assert 50 < row["peak_rss_mb"] < 4000 and row["peak_rss_mb"] >= row["sampled_peak_mb"] * 0.9
    table = memory.markdown([row], "aaclip-tiny@64", {"int8": 8000.0})
    assert f"| INT8 calibration (quantize + gate) | {row['peak_rss_mb']} | <= 8000 MB (met) |" in table
    assert json.loads((tmp_path / "int8.json").read_text())["gate_frames"] == 4


def test_peak_rss_is_the_commands_own_not_the_parents():
    """``os.wait4`` on a child reports max(parent's peak, child's peak) on Linux (exec folds the replaced
    address space's high-water mark in); ``run_measured`` reports the command's own peak."""
    import os
    import subprocess
    import sys

    from aaclip.benchmarks.peak_rss import run_measured

    ballast = np.ones(400 * 2**20 // 8)  # 400 MB resident in this process
    ballast[::512] = 2.0
    naive = subprocess.Popen([sys.executable, "-c", "pass"])
    _, _, usage = os.wait4(naive.pid, 0)
    assert usage.ru_maxrss / 1024 > 400  # the trap this module avoids (holds on Linux)
    small = run_measured([sys.executable, "-c", "pass"])
    assert small.exit_code == 0 and small.peak_rss_mb < 100
    big = run_measured([sys.executable, "-c", "import numpy as np; a = np.ones(300 * 2**20 // 8); a[::512] = 2"],
                       capture=True)
    assert big.exit_code == 0 and 300 < big.peak_rss_mb < 400
    del ballast


def test_peak_rss_of_a_command_stopped_at_its_timeout():
    import sys

    from aaclip.benchmarks.peak_rss import run_measured

    code = "import numpy as np, time; a = np.ones(200 * 2**20 // 8); a[::512] = 2; print('up', flush=True); time.sleep(60)"
    run = run_measured([sys.executable, "-c", code], timeout_s=6, capture=True)
    assert run.timed_out and run.exit_code == -9 and run.seconds >= 6  # killed at its timeout, not before
    assert 200 < run.peak_rss_mb < 300 and run.stdout == "up\n"


def test_peak_rss_command_line(capfd):
    import sys

    from aaclip.benchmarks.peak_rss import main

    assert main(["--", sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert "exit 3" in capfd.readouterr().err and main([]) == 2
