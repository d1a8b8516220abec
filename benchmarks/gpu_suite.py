"""``aaclip-bench --suite gpu --out DIR``: the one prepared command for the first minutes on a lent NVIDIA GPU.

On a GPU (about 8 minutes from a clean checkout with its venv, on an H100-class card): a random-weight
ViT-L-14-336 at 518 px (``--shape``) is exported to FP32 and FP16 ONNX; an INT8 Q/DQ graph is made with one
accuracy gate on ONNX Runtime CPU (no search: it must fit the time; kept only where the gate passes); TensorRT
engines are built for FP16 (and INT8 where the gate passed) with a batch 1..32 profile; ``run_benchmark`` times
TensorRT at batch 1, 8 and 32 and ONNX Runtime FP32 on the CPU at batch 1 (throughput, p50/p99 latency, GPU
memory, % of the GPU's FP16/INT8 datasheet peak, the camera loop on a video); each engine's outputs are compared
with ONNX Runtime FP32 on the CPU (the export verifier's comparator). Out: ``suite.json`` and ``suite.md``, plus the
benchmark's own files in ``DIR/bench``.

Without a GPU the command checks what it can here (the engine build path through TensorRT-RTX, which builds ahead
of time without a GPU, on the tiny model; the report writer), writes the report with those checks, says so and
exits 2. It never writes a GPU figure it did not measure.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from aaclip.contract.errors import UserError
from aaclip.contract.files import atomic_write_json, atomic_write_text

log = logging.getLogger(__name__)

SUITE_FORMAT = "aaclip-gpu-suite"
SHAPE = "ViT-L-14-336@518"
BATCHES = (1, 8, 32)
NO_GPU_EXIT = 2


@dataclass(frozen=True)
class SuiteOptions:
    out_dir: Path
    shape: str = SHAPE
    reps: int = 20
    warmup: int = 3
    work_dir: Optional[Path] = None   # exported graphs and engines [default: OUT/work]
    seed: int = 0


@dataclass
class Check:
    name: str
    status: str          # ok | failed | skipped
    detail: str = ""
    seconds: float = 0.0


@dataclass
class SuiteResult:
    gpu: dict
    checks: list = field(default_factory=list)
    rows: list = field(default_factory=list)      # the benchmark's rows (GPU only)
    parity: list = field(default_factory=list)    # engines vs ONNX Runtime FP32 on the CPU (GPU only)
    int8: Optional[dict] = None

    def to_dict(self) -> dict:
        return {"format": SUITE_FORMAT, "format_version": 1, "gpu": self.gpu,
                "checks": [dataclasses.asdict(c) for c in self.checks], "rows": self.rows, "parity": self.parity,
                "int8": self.int8}


def _timed(name: str, fn: Callable[[], str]) -> Check:
    t0 = time.perf_counter()
    try:
        detail = fn()
        return Check(name, "ok", detail, round(time.perf_counter() - t0, 2))
    except Exception as exc:  # noqa: BLE001 - a check that fails is reported, the others run
        text = str(exc).strip().splitlines()
        return Check(name, "failed", f"{type(exc).__name__}: {text[0][:300] if text else ''}",
                     round(time.perf_counter() - t0, 2))


def check_engine_build(work: Path) -> str:
    """The engine build path on the tiny model: FP16 export, then a TensorRT-RTX engine with the suite's batch
    profile (built ahead of time: no GPU needed), its manifest checked."""
    from aaclip.contract.manifest import check_artifact, load_manifest
    from aaclip.export.engine import EngineOptions, build_engine_artifact, load_flavour
    from aaclip.export.onnx_export import export_onnx
    from aaclip.train.checkpoint import random_checkpoint

    from .models import BENCH_CLASSES, TINY_BACKBONE, TINY_SIZE

    load_flavour("tensorrt-rtx")
    ckpt = random_checkpoint(work / "ckpt", backbone=TINY_BACKBONE, image_size=TINY_SIZE,
                             classes=dict(BENCH_CLASSES), seed=0, weights_file=None)
    graph = export_onnx(ckpt, work / "tiny-fp16.onnx", precision="fp16", classes=[next(iter(BENCH_CLASSES))]).path
    engine = build_engine_artifact(graph, work / "tiny-fp16.engine", EngineOptions(
        batch=(BATCHES[0], BATCHES[1], BATCHES[-1]), flavour="tensorrt-rtx"), "aaclip-bench --suite gpu (check)")
    m = load_manifest(engine)
    check_artifact(m)
    return (f"{engine.name}: {engine.stat().st_size / 1e6:.1f} MB, TensorRT-RTX {m.tensorrt.get('version')}, "
            f"batch {m.data['input']['batch']}")


def markdown(result: SuiteResult) -> str:
    gpu = result.gpu
    lines = ["# aaclip-bench --suite gpu", "",
             f"- GPU: {gpu.get('name') or 'none'}" + (f" (driver {gpu['driver']})" if gpu.get("driver") else ""), "",
             "| check | status | seconds | detail |", "|---|---|---|---|"]
    lines += [f"| {c.name} | {c.status} | {c.seconds:g} | {c.detail} |" for c in result.checks]
    if result.rows:
        lines += ["", "| backend | device | precision | batch | images/s | p50 (ms) | p99 (ms) | GPU mem (MB) "
                  "| % of peak | loop images/s |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in result.rows:
            if r.get("status") != "ok":
                continue
            frac = r.get("fraction_of_peak")
            lines.append("| " + " | ".join(str(x) for x in (
                r["backend"], r["device"], r["precision"], r["batch"], f"{r['images_per_s']:.3g}",
                f"{r['latency_p50_ms']:.3g}", f"{r['latency_p99_ms']:.3g}", r.get("device_mem_mb") or "-",
                f"{100 * frac:.1f}%" if frac is not None and frac <= 1 else ("n/a (>100%)" if frac else "-"),
                f"{r['loop_images_per_s']:.3g}" if r.get("loop_images_per_s") else "-")) + " |")
    if result.parity:
        lines += ["", "| engine | vs ONNX Runtime FP32 (CPU) | map err / range | cls err |", "|---|---|---|---|"]
        lines += [f"| {p['engine']} | {'PASS' if p['passed'] else 'FAIL'} | {p['map_rel']:.3g} | {p['cls_abs']:.3g} |"
                  for p in result.parity]
    if not gpu.get("available"):
        lines += ["", "No NVIDIA GPU here: no GPU figure was measured. Run `aaclip-bench --suite gpu --out DIR` on the "
                  "GPU machine."]
    return "\n".join(lines) + "\n"


def write_report(result: SuiteResult, out_dir: Path) -> tuple[Path, Path]:
    """``suite.json`` and ``suite.md`` in ``out_dir``, each written atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "suite.json", result.to_dict())
    atomic_write_text(out_dir / "suite.md", markdown(result))
    return out_dir / "suite.json", out_dir / "suite.md"


def check_report_writer(out_dir: Path, result: SuiteResult) -> str:
    """Write the report and read it back (the same JSON, the Markdown's check table)."""
    js, md = write_report(result, out_dir)
    if json.loads(js.read_text(encoding="utf-8")) != json.loads(json.dumps(result.to_dict())):
        raise RuntimeError("suite.json does not read back as written")
    if "| check | status |" not in md.read_text(encoding="utf-8"):
        raise RuntimeError("suite.md has no check table")
    return f"{js.name} and {md.name} written and read back"


def _engine_parity(work: Path, frames) -> list[dict]:
    """Every engine in ``work/artifacts`` against ONNX Runtime FP32 on the CPU (the export verifier's comparator)."""
    from aaclip.contract.manifest import open_artifact
    from aaclip.contract.tensors import OUTPUT_NAMES
    from aaclip.export.verify import TOLERANCES, compare_outputs
    from aaclip.runtime.backends import RunnerOptions, open_runner
    from aaclip.runtime.backends.base import infer_frames

    fp32 = open_artifact(work / "artifacts" / "aaclip-fp32.onnx")
    with open_runner(fp32, "onnxruntime", RunnerOptions(device="cpu")) as ort:
        ref = infer_frames(ort, fp32, frames, None, 1, OUTPUT_NAMES)
    out = []
    for engine in sorted((work / "artifacts").glob("*.engine")):
        m = open_artifact(engine)
        with open_runner(m, "tensorrt", RunnerOptions(device="cuda")) as trt:
            got = infer_frames(trt, m, frames, None, 1, OUTPUT_NAMES)
        report = compare_outputs(ref, got, TOLERANCES.get(m.precision, TOLERANCES["fp16"]))
        out.append({"engine": engine.name, "precision": m.precision, "passed": report.passed,
                    "map_rel": report.map_rel, "cls_abs": report.cls_max_abs})
    return out


def _gpu_run(o: SuiteOptions, result: SuiteResult, work: Path) -> None:
    """The GPU path (module docstring). Not run in this project's CI: no GPU there."""
    from aaclip.calibration.int8 import Int8Options, quantize_artifact
    from aaclip.contract.manifest import load_manifest

    from .inputs import bench_frames
    from .models import export_graph, prepare_checkpoint
    from .reduced import synthetic_normals
    from .suite import BenchConfig, run_benchmark

    ckpt, _ = prepare_checkpoint(None, False, o.shape, work, o.seed)
    from aaclip.train.checkpoint import load_checkpoint

    model = load_checkpoint(ckpt)
    cls = next(iter(model.config.classes))
    fp32 = export_graph(ckpt, model, "fp32", work / "artifacts", cls)
    del model
    int8_path = work / "artifacts" / "aaclip-int8.onnx"
    q = quantize_artifact(fp32.path, synthetic_normals(load_manifest(fp32.path), 12, o.seed), None, Int8Options(
        out=int8_path, max_frames=12, holdout=4, batch=1, search=False, discard_calibration=True))
    result.int8 = {"passed": q.gate.passed, "gate": q.gate.to_dict(), "written": q.written}
    cfg = BenchConfig(out_dir=o.out_dir / "bench", ckpt=ckpt, backends=("onnxruntime", "tensorrt"),
                      precisions=("fp32", "fp16") + (("int8",) if q.written else ()), batches=BATCHES,
                      cpu_batches=(1,), reps=o.reps, warmup=o.warmup, loop=True, frames=8, parity_frames=2,
                      int8=int8_path if q.written else None, work_dir=work, seed=o.seed, plot=False,
                      command="aaclip-bench --suite gpu")
    bench, _ = run_benchmark(cfg)
    result.rows = [r for r in bench["rows"] if r["status"] == "ok"]
    result.parity = _engine_parity(work, bench_frames(load_manifest(fp32.path).height, 2, o.seed))


def run_suite(o: SuiteOptions, gpu: Optional[dict] = None) -> tuple[SuiteResult, int]:
    """Run the suite; (result, exit status: 0 measured, 2 no GPU here)."""
    from .environment import gpu_environment

    gpu = gpu if gpu is not None else gpu_environment()
    result = SuiteResult(gpu=gpu)
    if not gpu.get("available"):
        if o.work_dir is None:  # the checks' tiny graph and engine are not kept
            with tempfile.TemporaryDirectory(prefix="aaclip-suite-") as tmp:
                return _cpu_checks(o, result, Path(tmp))
        return _cpu_checks(o, result, Path(o.work_dir))
    work = Path(o.work_dir) if o.work_dir is not None else Path(o.out_dir) / "work"
    work.mkdir(parents=True, exist_ok=True)
    result.checks.append(Check("NVIDIA GPU", "ok", f"{gpu.get('name')} ({gpu.get('memory_gb')} GB)"))
    result.checks.append(_timed(f"{o.shape}: export, INT8 gate, engines, rows, parity",
                                lambda: _gpu_run(o, result, work) or "done"))
    write_report(result, Path(o.out_dir))
    return result, 0 if all(c.status == "ok" for c in result.checks) else 1


def _cpu_checks(o: SuiteOptions, result: SuiteResult, work: Path) -> tuple[SuiteResult, int]:
    """No GPU: the engine build path and the report writer, then exit status 2."""
    work.mkdir(parents=True, exist_ok=True)
    result.checks.append(Check("NVIDIA GPU", "failed", "none visible (torch.cuda.is_available() is False)"))
    result.checks.append(_timed("engine build path (TensorRT-RTX, tiny model, FP16, batch 1..32)",
                                lambda: check_engine_build(work)))
    writer = _timed("report writer (suite.json, suite.md)", lambda: check_report_writer(Path(o.out_dir), result))
    result.checks.append(writer)
    write_report(result, Path(o.out_dir))
    return result, NO_GPU_EXIT


def check_options(o: SuiteOptions) -> None:
    if o.reps < 1 or o.warmup < 0:
        raise UserError("--reps must be >= 1 and --warmup >= 0")


__all__ = ["SuiteOptions", "SuiteResult", "Check", "run_suite", "write_report", "markdown", "check_engine_build",
           "NO_GPU_EXIT", "SHAPE", "BATCHES"]
