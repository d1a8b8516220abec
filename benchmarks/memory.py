"""Peak host memory of the heavy steps at real model size: a training step per stage, the FP32 ONNX export
and INT8 calibration (docs/benchmarks.md, "Memory at real size").

    python -m aaclip.benchmarks.memory --shape ViT-L-14-336@518 --frames 64 --work-dir /tmp/mem
    python -m aaclip.benchmarks.memory --shape aaclip-tiny@64 --frames 8          # the code path, seconds

Each step runs in its own Python process, so its peak resident memory (``ru_maxrss`` of that child, measured
by ``peak_rss.run_measured`` so this process's own peak cannot leak in) is the step's alone, imports included, as a user running the command would see it: a fresh
random checkpoint of the shape (no download; random weights use exactly the memory trained ones do), then

- ``train1`` / ``train2``: one optimizer step of AA-CLIP's stage 1 / stage 2 at ``--train-batch`` on
  synthetic images (CPU; on CUDA also ``torch.cuda.max_memory_allocated``);
- ``export``: ``export_onnx`` of the FP32 graph (what ``aaclip-export CKPT`` does);
- ``int8``: ``quantize_artifact`` (what ``aaclip-calibrate int8 model.onnx --images DIR --frames N`` does) on
  ``--frames`` synthetic normal frames, with ``--holdout`` synthetic products for the gate.

Writes ``memory.json`` and ``memory.md`` into ``--out`` and prints the table. Opt-in: not part of CI's test
suite, which runs this code at tiny size (tests/test_memory_benchmark.py).
"""
from __future__ import annotations

import json
import logging
import sys
import threading
import time
from pathlib import Path
from typing import Optional

import click
from aaclip.contract.cli import CONTEXT, Command, verbosity
from aaclip.contract.errors import UserError

from .peak_rss import run_measured

log = logging.getLogger(__name__)

STEPS = ("checkpoint", "train1", "train2", "export", "int8")
STEP_TITLES = {"checkpoint": "random checkpoint (build + save)", "train1": "training step, stage 1",
               "train2": "training step, stage 2", "export": "FP32 ONNX export",
               "int8": "INT8 calibration (quantize + gate)"}
CLASS = "disk"


def rss_mb() -> float:
    """Current resident set size of this process in MB (Linux /proc; 0 elsewhere)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return 0.0


class RssSampler(threading.Thread):
    """Samples this process's RSS every ``every_s``; ``timeline`` holds (seconds, MB) at each new maximum."""

    def __init__(self, every_s: float = 0.05):
        super().__init__(daemon=True)
        self.every_s = every_s
        self.peak = 0.0
        self.timeline: list[tuple[float, float]] = []
        self._halt = threading.Event()
        self._t0 = time.perf_counter()

    def run(self) -> None:
        while not self._halt.wait(self.every_s):
            value = rss_mb()
            if value > self.peak + 50 or (value > self.peak and not self.timeline):
                self.timeline.append((round(time.perf_counter() - self._t0, 1), round(value)))
            self.peak = max(self.peak, value)

    def stop(self) -> None:
        self._halt.set()
        self.join(1.0)


# ---- the steps (each runs in a child process) ---------------------------------------------------------
def _write_frames(folder: Path, n: int, size: int, seed: int = 11) -> Path:
    import cv2
    import numpy as np
    from aaclip.data.synth import draw_product

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        path = folder / f"{i:04d}.png"
        if not path.exists():
            cv2.imwrite(str(path), draw_product(CLASS, rng, max(size, 32)))
    return folder


def step_checkpoint(work: Path, name: str, size: int) -> dict:
    from aaclip.train.checkpoint import random_checkpoint

    random_checkpoint(work / "ckpt", backbone=name, image_size=size, classes={CLASS: "metal disk"},
                      weights_file=str((work / "clip.safetensors").resolve()))
    return {}


def step_train(work: Path, stage: int, batch: int) -> dict:
    import torch
    from aaclip.train.checkpoint import load_checkpoint
    from aaclip.data.records import Record
    from aaclip.train.families.aa_clip.trainer import Trainer, TrainOptions

    model = load_checkpoint(work / "ckpt")
    size = model.config.image_size
    images = _write_frames(work / "train_images", 2 * batch, size, seed=3)
    files = sorted(images.iterdir())
    records = [Record(f.name, i % 2, CLASS, None) for i, f in enumerate(files)]  # half image-level anomalies
    options = TrainOptions(stages=(stage,), stage1_batch=batch, stage2_batch=batch, max_steps_per_epoch=1,
                           stage1_epochs=1, stage2_epochs=1)
    trainer = Trainer(model, records, images, work / f"train{stage}", options)
    if trainer.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    trainer.run()
    out = {"batch": batch, "step_s": round(time.perf_counter() - t0, 1), "device": trainer.device.type}
    if trainer.device.type == "cuda":
        out["cuda_max_allocated_mb"] = round(torch.cuda.max_memory_allocated() / 2**20)
    return out


def step_export(work: Path) -> dict:
    from aaclip.export.onnx_export import export_onnx

    res = export_onnx(work / "ckpt", work / "model.onnx")
    size = sum((work / f).stat().st_size for f in (res.path.name, *res.external_data))
    return {"artifact_mb": round(size / 1e6)}


def step_int8(work: Path, frames: int, holdout: int, batch: int) -> dict:
    from aaclip.calibration.inputs import folder_input
    from aaclip.calibration.int8 import Int8Options, quantize_artifact
    from aaclip.contract.manifest import load_manifest

    manifest = load_manifest(work / "model.onnx")
    folder = _write_frames(work / "normal_frames", frames, manifest.height)
    result = quantize_artifact(work / "model.onnx", folder_input(folder, 0), options=Int8Options(
        out=work / "model.int8.onnx", max_frames=frames, holdout=holdout, batch=batch, force=True,
        search=False))  # one quantization and one gate: the search repeats the same two steps, one at a time
    return {"calibration_frames": result.calibration["frames"], "gate_frames": result.gate.frames,
            "gate_passed": result.gate.passed, "artifact_mb": round(result.out.stat().st_size / 1e6)}


def run_step(step: str, work: Path, args: dict) -> dict:
    """Run ``step`` in this process with an RSS sampler; its result and the sampled timeline."""
    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    try:
        if step == "checkpoint":
            out = step_checkpoint(work, args["name"], args["size"])
        elif step in ("train1", "train2"):
            out = step_train(work, int(step[-1]), args["train_batch"])
        elif step == "export":
            out = step_export(work)
        elif step == "int8":
            out = step_int8(work, args["frames"], args["holdout"], args["batch"])
        else:
            raise UserError(f"unknown step {step!r}; steps: {', '.join(STEPS)}")
    finally:
        sampler.stop()
    out.update(wall_s=round(time.perf_counter() - t0, 1), sampled_peak_mb=round(sampler.peak),
               timeline=sampler.timeline)
    return out


# ---- the parent -----------------------------------------------------------------------------------------
def measure_step(step: str, work: Path, args: dict, timeout_s: Optional[float] = None) -> dict:
    """Run ``step`` in a child process; its own peak RSS (``peak_rss.run_measured``) and its report."""
    report = work / f"{step}.json"
    report.unlink(missing_ok=True)
    level = logging.getLogger().level
    verbosity_flag = ["-q"] if level > logging.INFO else ["-v"] if level <= logging.DEBUG else []
    cmd = [sys.executable, "-m", "aaclip.benchmarks.memory", "--step", step, "--work-dir", str(work),
           "--args", json.dumps(args), *verbosity_flag]
    log.info("%s: running in a child process", step)
    measured = run_measured(cmd, timeout_s)
    result = json.loads(report.read_text()) if report.exists() else {}
    peak = measured.peak_rss_mb if measured.peak_rss_mb is not None else result.get("sampled_peak_mb", 0)
    result.update(step=step, peak_rss_mb=round(peak), exit_code=measured.exit_code)
    if measured.exit_code != 0:
        result["error"] = ("timed out (--timeout)" if measured.timed_out else "killed (out of memory?)"
                           if measured.exit_code < 0 else "failed (see log)")
    return result


def markdown(rows: list[dict], shape: str, limits: dict[str, float]) -> str:
    lines = [f"Peak host memory per step, {shape} (random weights), each step in a fresh process:", "",
             "| step | peak RSS (MB) | target | wall (s) | details |", "|---|---:|---|---:|---|"]
    for r in rows:
        target = f"<= {limits[r['step']]:.0f} MB" if r["step"] in limits else "-"
        if r["step"] in limits and r.get("exit_code") == 0:
            target += " (met)" if r["peak_rss_mb"] <= limits[r["step"]] else " (MISSED)"
        keep = {k: v for k, v in r.items()
                if k not in ("step", "peak_rss_mb", "wall_s", "timeline", "sampled_peak_mb", "exit_code")}
        details = ", ".join(f"{k} {v}" for k, v in keep.items())
        lines.append(f"| {STEP_TITLES[r['step']]} | {r['peak_rss_mb']} | {target} | {r.get('wall_s', '-')} | "
                     f"{details} |")
    return "\n".join(lines) + "\n"


@click.command(cls=Command, context_settings=CONTEXT)
@click.option("--shape", default="ViT-L-14-336@518", show_default=True, metavar="NAME@SIZE",
              help="OpenCLIP model and image size (random weights, no download).")
@click.option("--steps", default=",".join(STEPS), show_default=True, help="Comma-separated steps to measure.")
@click.option("--frames", type=click.IntRange(min=2), default=64, show_default=True,
              help="INT8: normal frames read (every 4th held out for the gate).")
@click.option("--holdout", type=click.IntRange(min=0), default=0, show_default=True,
              help="INT8: synthetic products (and as many defective) added to the gate's held-out set.")
@click.option("--batch", type=click.IntRange(min=1), default=None,
              help="INT8: frames per inference call [default: aaclip-calibrate int8's].")
@click.option("--train-batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Images per training step (memory grows about linearly with it).")
@click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False), default=Path("memory-work"),
              show_default=True, help="Checkpoint, graphs and frames (kept: rerun steps reuse them).")
@click.option("--out", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Folder for memory.json/memory.md [default: --work-dir].")
@click.option("--timeout", "timeout_s", type=float, default=None, help="Seconds a step may take before it is killed.")
@click.option("--step", "child_step", hidden=True, default=None)
@click.option("--args", "child_args", hidden=True, default="{}")
@verbosity
def main(shape: str, steps: str, frames: int, holdout: int, batch: Optional[int], train_batch: int, work_dir: Path,
         out: Optional[Path], timeout_s: Optional[float], child_step: Optional[str], child_args: str) -> None:
    """Measure peak host memory of training steps, the FP32 export and INT8 calibration at real size."""
    from aaclip.benchmarks.models import parse_shape
    from aaclip.calibration.int8 import CALIBRATION_BATCH

    work_dir.mkdir(parents=True, exist_ok=True)
    if child_step is not None:  # inside the child process
        result = run_step(child_step, work_dir, json.loads(child_args))
        (work_dir / f"{child_step}.json").write_text(json.dumps(result))
        return
    name, size = parse_shape(shape)
    wanted = [s.strip() for s in steps.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(STEPS))
    if unknown:
        raise UserError(f"unknown step {unknown[0]!r}; steps: {', '.join(STEPS)}")
    args = {"name": name, "size": size, "frames": frames, "holdout": holdout, "train_batch": train_batch,
            "batch": batch or CALIBRATION_BATCH}
    rows = []
    for step in [s for s in STEPS if s in wanted]:
        row = measure_step(step, work_dir, args, timeout_s)
        log.info("%s: peak RSS %d MB (%s s)%s", step, row["peak_rss_mb"], row.get("wall_s", "-"),
                 f"; {row['error']}" if "error" in row else "")
        rows.append(row)
        if row["exit_code"] != 0 and step in ("checkpoint", "export"):
            break  # the next steps need its output
    limits = {"export": 6000.0, "int8": 8000.0}
    table = markdown(rows, f"{shape}, INT8 on {frames} frames", limits)
    out = out or work_dir
    out.mkdir(parents=True, exist_ok=True)
    (out / "memory.json").write_text(json.dumps({"shape": shape, "args": args, "rows": rows}, indent=2))
    (out / "memory.md").write_text(table)
    click.echo(table)
    if any(r["exit_code"] != 0 for r in rows):
        raise UserError("a step failed; see the log above and " + str(out / "memory.json"))


if __name__ == "__main__":
    main()
