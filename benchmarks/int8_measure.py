"""INT8 vs FP32: gate metrics and ONNX Runtime CPU latency of a randomly initialized AA-CLIP (docs/calibration.md).

    python -m aaclip.benchmarks.int8_measure --backbone aaclip-tiny --size 64
    python -m aaclip.benchmarks.int8_measure --backbone ViT-B-16 --size 224 --frames 64 --repeats 10

Builds a checkpoint with random CLIP weights (no download), exports FP32 ONNX, quantizes it with the same
code as ``aaclip-calibrate int8`` (synthetic normal products, synthetic defects for the gate), then times
both graphs on CPU at batch 1 (median of ``--repeats`` runs after two warm-ups). Random weights say
nothing about detection quality; they do measure how faithfully INT8 reproduces FP32 and how fast it is.
Needs the training extras (torch, open_clip) to build the model.
"""
from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import click
import cv2
import numpy as np
from aaclip.contract.cli import CONTEXT, Command, verbosity

log = logging.getLogger(__name__)


def cpu_latency_ms(path: Path, frame: np.ndarray, threads: int, repeats: int) -> float:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {"image": frame[None]}
    for _ in range(2):
        session.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - t0) * 1e3)
    return float(np.median(times))


@click.command(cls=Command, context_settings=CONTEXT)
@click.option("--backbone", default="aaclip-tiny", show_default=True, help="OpenCLIP config name (random weights).")
@click.option("--size", type=int, default=64, show_default=True, help="Model resolution.")
@click.option("--frames", type=int, default=64, show_default=True, help="Synthetic normal frames for calibration.")
@click.option("--holdout", type=int, default=32, show_default=True, help="Synthetic held-out products (+ defects).")
@click.option("--method", type=click.Choice(["minmax", "percentile"]), default="minmax", show_default=True)
@click.option("--repeats", type=int, default=20, show_default=True)
@click.option("--threads", type=int, default=2, show_default=True, help="ONNX Runtime intra-op threads.")
@verbosity
def main(backbone: str, size: int, frames: int, holdout: int, method: str, repeats: int, threads: int) -> None:
    from aaclip.calibration.inputs import folder_input
    from aaclip.calibration.int8 import Int8Options, quantize_artifact
    from aaclip.export.onnx_export import export_onnx
    from aaclip.train.checkpoint import random_checkpoint
    from aaclip.data.synth import draw_product

    with tempfile.TemporaryDirectory(prefix="aaclip-measure-") as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        random_checkpoint(root / "ckpt", backbone=backbone, image_size=size)
        fp32 = export_onnx(root / "ckpt", root / "model.onnx", classes=["disk"]).path
        rng = np.random.default_rng(11)
        (root / "good").mkdir()
        for i in range(frames):
            cv2.imwrite(str(root / "good" / f"{i:04d}.png"), draw_product("disk", rng, size))
        result = quantize_artifact(fp32, folder_input(root / "good", 0),
                                   options=Int8Options(holdout=holdout, method=method, max_frames=frames, force=True))
        g = result.gate
        frame = draw_product("disk", np.random.default_rng(99), size)
        ms32 = cpu_latency_ms(fp32, frame, threads, repeats)
        ms8 = cpu_latency_ms(result.out, frame, threads, repeats)
        mb32, mb8 = fp32.stat().st_size / 1e6, result.out.stat().st_size / 1e6
        click.echo("| model | size | calib frames | map corr (mean/min) | Spearman | AUROC fp32 -> int8 | gate | "
                   "FP32 ms | INT8 ms | speed-up | FP32 MB | INT8 MB |")
        click.echo("|---|---|---|---|---|---|---|---|---|---|---|---|")
        click.echo(f"| {backbone} | {size} | {result.calibration['frames']} | {g.map_corr:.4f} / {g.map_corr_min:.4f} "
                   f"| {g.rank_corr:.4f} | {g.auroc_fp32:.3f} -> {g.auroc_int8:.3f} | "
                   f"{'pass' if g.passed else 'FAIL'} | {ms32:.1f} | {ms8:.1f} | {ms32 / ms8:.2f}x | {mb32:.1f} | "
                   f"{mb8:.1f} |")
        click.echo(f"(ONNX Runtime CPU, {threads} threads, batch 1, median of {repeats}; {method} ranges; "
                   f"total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
