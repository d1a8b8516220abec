"""Running a benchmark: the model, its artifacts, every row (timed, parity-checked, looped), the result.

Rows of one backend/device/precision share one runner (one ONNX Runtime session, one engine), activated
once. Every runner is active at once and the rows are timed **interleaved**: ``warmup`` untimed rounds,
then ``reps`` timed rounds, each round one call per row (round-robin, the starting row rotating), so
load from other processes on a shared machine hits every row alike; rows report min and median with
the mean-based throughput. A CPU's matmul peak is measured once per run (``peaks.measure_cpu_peaks``)
and CPU rows report their fraction of it.
Every runner comes from the backend registry; PyTorch rows and the parity reference are the ``pytorch``
backend (``aaclip.export.reference``: training pre-processing + the checkpoint's ``predict``). Parity against
FP32 uses the export verifier's comparator (``compare_outputs`` with the precision's tolerances), once per
runner. The end-to-end loop runs per artifact row with the same runner and batch.
"""
from __future__ import annotations

import logging
import shlex
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.feeds import FeedBuilder
from aaclip.contract.tensors import OUTPUT_NAMES
from aaclip.export.reference import REFERENCE_BACKEND
from aaclip.runtime.backends import RunnerOptions, open_runner
from aaclip.runtime.backends.base import infer_frames

from . import rows as R
from .environment import collect_environment, device_label
from .flops import flops_report
from .inputs import batch_of, bench_frames, write_video
from .loop_timing import STAGES, run_timed_loop
from .measure import DeviceMemory, HostMemory, latency_stats
from .models import Artifact, build_engine_for, export_graph, external_artifact, prepare_checkpoint
from .bounds import apply_bounds
from .peaks import PeakProbe, device_peak
from .reduced import SearchSettings
from .report import empty_row, write_outputs

log = logging.getLogger(__name__)

RESULT_FORMAT = "aaclip-benchmark"
RESULT_VERSION = 1
ARTIFACT_BACKENDS = ("onnxruntime", "openvino", "tensorrt")


@dataclass
class BenchConfig:
    out_dir: Path
    ckpt: Optional[Path] = None
    tiny: bool = False
    shape: Optional[str] = None
    backends: Sequence[str] = R.DEFAULT_BACKENDS
    precisions: Sequence[str] = ("fp32", "fp16")
    batches: Sequence[int] = (1, 2, 4)
    reps: int = 10
    warmup: int = 2
    loop: bool = True
    overlay: bool = True
    frames: int = 8            # distinct frames every row cycles through
    parity_frames: int = 4
    int8: Optional[Path] = None
    engines: Sequence[Path] = ()
    work_dir: Optional[Path] = None   # exported graphs, the loop video (temporary when None)
    peak_tflops: Optional[float] = None
    cpu_batches: Optional[Sequence[int]] = None  # CPU rows only at these batches (None: every batch)
    search: SearchSettings = SearchSettings()  # the accuracy searches (int8 without --int8, bf16); seed: cfg.seed
    seed: int = 0
    plot: bool = True
    clients: Sequence[int] = (1, 2, 4)   # served rows: concurrent clients
    server: Optional[str] = None         # served rows: a running server's grpc://HOST:PORT/MODEL (else aaclip-serve)
    serve_python: Optional[Path] = None  # served rows: the Python of aaclip-serve's environment
    command: str = field(default_factory=lambda: shlex.join(["aaclip-bench", *sys.argv[1:]]))

    def check(self) -> None:
        if self.reps < 1:
            raise UserError(f"--reps must be >= 1, got {self.reps}")
        if self.warmup < 0:
            raise UserError(f"--warmup must be >= 0, got {self.warmup}")
        if self.frames < 1 or self.parity_frames < 1:
            raise UserError("--frames and --parity-frames must be >= 1")
        if self.search.frames < 2 or self.search.search_frames < 2 or self.search.holdout < 0:
            raise UserError("--calibration-frames and --search-frames must be >= 2 and --holdout >= 0 (got "
                            f"{self.search.frames}, {self.search.search_frames}, {self.search.holdout})")
        for b in self.backends:
            if b not in R.BACKENDS:
                raise UserError(f"unknown backend {b!r}: use {', '.join(R.BACKENDS)}")
        for p in self.precisions:
            if p not in R.PRECISIONS:
                raise UserError(f"unknown precision {p!r}: use {', '.join(R.PRECISIONS)}")
        if not self.batches or min(self.batches) < 1:
            raise UserError("--batches must be positive integers")
        if not self.clients or min(self.clients) < 1:
            raise UserError("--clients must be positive integers")
        if self.int8 is not None and not Path(self.int8).is_file():
            raise UserError(f"--int8 {self.int8} does not exist: pass the INT8 (QDQ) ONNX graph")


class _Context:
    """What the rows share: model, frames, artifacts (exported lazily), the parity reference."""

    def __init__(self, cfg: BenchConfig, work: Path, env: dict):
        self.cfg, self.work, self.env = cfg, work, env
        from aaclip.train.checkpoint import load_checkpoint

        self.ckpt, self.description = prepare_checkpoint(cfg.ckpt, cfg.tiny, cfg.shape, work, cfg.seed)
        self.model = load_checkpoint(self.ckpt)
        self.size = int(self.model.config.image_size)
        names = list(self.model.config.classes.values())
        if not names:
            raise UserError(f"{self.ckpt}: the checkpoint's config lists no classes")
        self.class_name = list(self.model.config.classes)[0]
        self.flops = flops_report(self.model.config)
        self.flops_per_image = int(self.flops["breakdown"]["total"])
        log.info("model %s: %.4g GFLOP per image", self.description, self.flops_per_image / 1e9)
        self.frames = bench_frames(self.size, cfg.frames, cfg.seed)
        self._graphs: dict[str, Artifact] = {}
        self._engines: dict[str, Artifact] = {}
        self._reference: Optional[dict] = None
        self._video: Optional[Path] = None
        self.cpu_peaks: Optional[dict] = None  # the probe's result (best per probe) when CPU rows run
        self.probe: Optional[PeakProbe] = None  # sampled once per timing round
        self.plans: dict[str, dict] = {}        # precision -> the accuracy search's outcome (reduced.py)
        for path in cfg.engines:
            from aaclip.contract.manifest import load_manifest

            precision = str(load_manifest(path).data.get("precision", "fp16"))
            self._engines[precision] = external_artifact(path, precision)

    # ---- artifacts -----------------------------------------------------------------------------
    @property
    def search_settings(self) -> SearchSettings:
        """The accuracy searches' settings, with the run's seed."""
        return replace(self.cfg.search, seed=self.cfg.seed)

    @property
    def engine_precisions(self) -> list[str]:
        """Precisions of the engines given with --engine."""
        return list(self._engines)

    def graph(self, precision: str) -> Artifact:
        if precision not in self._graphs:
            if precision == "int8" and self.cfg.int8 is not None:
                self._graphs[precision] = external_artifact(self.cfg.int8, "int8")
            elif precision == "int8":  # no --int8: the accuracy search makes it from the FP32 graph
                from .reduced import searched_int8

                self._graphs[precision] = searched_int8(self.graph("fp32"), self.work / "artifacts",
                                                        self.search_settings, self.plans)
            else:
                self._graphs[precision] = export_graph(self.ckpt, self.model, precision, self.work / "artifacts",
                                                       self.class_name)
        return self._graphs[precision]

    def engine(self, precision: str) -> Artifact:
        if precision not in self._engines:
            top = max(self.cfg.batches)
            self._engines[precision] = build_engine_for(self.graph(precision), (1, top, top), self.work / "artifacts")
        return self._engines[precision]

    def video(self) -> Path:
        if self._video is None:
            n = max(self.cfg.batches) * (self.cfg.reps + max(1, self.cfg.warmup))
            self._video = write_video(self.frames, self.work / "loop.avi", n)
        return self._video

    # ---- parity --------------------------------------------------------------------------------
    def parity_frames(self) -> np.ndarray:
        return self.frames[: self.cfg.parity_frames] if self.cfg.parity_frames <= len(self.frames) else \
            batch_of(self.frames, self.cfg.parity_frames)

    def reference(self) -> dict:
        if self._reference is None:
            from aaclip.contract.manifest import open_artifact

            manifest = open_artifact(self.graph("fp32").path)
            options = RunnerOptions(extra={"model": self.model})
            with open_runner(manifest, REFERENCE_BACKEND, options) as ref:
                self._reference = run_frames(ref, manifest, self.parity_frames(), 1)
        return self._reference


def run_frames(runner, manifest, frames: np.ndarray, batch: int) -> dict[str, np.ndarray]:
    """All outputs of ``frames`` through an active runner, in batches (copies); a multi-class graph (e.g. a
    given INT8 graph) gets class 0."""
    return infer_frames(runner, manifest, frames, None, batch, OUTPUT_NAMES)


def parity_fields(ctx: _Context, spec: R.RowSpec, runner, manifest) -> dict:
    """Parity of ``runner`` against the FP32 PyTorch reference (the export verifier's comparator)."""
    from aaclip.export.verify import TOLERANCES, compare_outputs

    if spec.backend == "torch" and spec.precision == "fp32":
        return {"parity": "reference", "parity_passed": True, "parity_map_rel": None, "parity_cls_abs": None}
    out = run_frames(runner, manifest, ctx.parity_frames(), spec.batch)
    report = compare_outputs(ctx.reference(), out, TOLERANCES.get(spec.precision, TOLERANCES["fp16"]))
    verdict = "PASS" if report.passed else "FAIL"
    return {"parity": f"{verdict} map {report.map_rel:.2g}, cls {report.cls_max_abs:.2g}",
            "parity_passed": report.passed, "parity_map_rel": report.map_rel, "parity_cls_abs": report.cls_max_abs}


# ---- runners -------------------------------------------------------------------------------------
def row_runner(ctx: _Context, spec: R.RowSpec):
    """(runner, artifact or None, manifest) for a row group, from the backend registry."""
    from aaclip.contract.manifest import open_artifact

    if spec.backend == "torch":  # the checkpoint itself, behind the FP32 graph's manifest (classes, input)
        manifest = open_artifact(ctx.graph("fp32").path)
        options = RunnerOptions(device=spec.device, extra={"model": ctx.model, "precision": spec.precision})
        return open_runner(manifest, REFERENCE_BACKEND, options), None, manifest
    if spec.backend == "openvino":  # mixed BF16 runs the FP32 graph with the plan its accuracy search found
        artifact = ctx.graph("int8" if spec.precision == "int8" else "fp32")
        extra = {"precision": "bf16" if spec.precision == "bf16" else "fp32", "ungated": True,
                 "cache_dir": str(ctx.work / "openvino-cache")}
        if spec.precision == "bf16":
            from .reduced import searched_bf16

            record = searched_bf16(artifact, ctx.work / "openvino-cache", ctx.search_settings, ctx.plans)
            extra["fp32_nodes"] = tuple(record["fp32_nodes"])
        manifest = open_artifact(artifact.path)
        return open_runner(manifest, "openvino", RunnerOptions(device=spec.device, extra=extra)), artifact, manifest
    artifact = ctx.graph(spec.precision) if spec.backend == "onnxruntime" else ctx.engine(spec.precision)
    manifest = open_artifact(artifact.path)
    return open_runner(manifest, spec.backend, RunnerOptions(device=spec.device)), artifact, manifest


def _cuda_sync(spec: R.RowSpec) -> Optional[Callable[[], None]]:
    if spec.device != "cuda" or spec.backend != "torch":
        return None  # onnxruntime, openvino and the TensorRT runner return host arrays: their calls are synchronous
    import torch

    return torch.cuda.synchronize


def row_call(ctx: _Context, spec: R.RowSpec, runner, manifest) -> Callable[[], None]:
    """One timed call of a row: the next of its distinct input batches (filled once, up front) through ``runner``,
    synchronized on CUDA."""
    builders = []  # one filled input set per distinct batch of frames
    for i in range(len(ctx.frames)):
        builder = FeedBuilder(manifest, spec.batch)
        for k, frame in enumerate(batch_of(ctx.frames, spec.batch, i * spec.batch)):
            builder.put(k, frame)
        builders.append(builder.feeds(spec.batch))
    calls = iter(range(10**12))
    sync = _cuda_sync(spec)

    def call() -> None:
        runner.infer(builders[next(calls) % len(builders)], OUTPUT_NAMES)
        if sync:
            sync()

    return call


def timing_fields(ctx: _Context, spec: R.RowSpec, times: Sequence[float]) -> dict:
    """Latency, throughput and FLOP/s fields of a row from its per-call seconds."""
    fields = latency_stats(times, spec.batch)
    achieved = ctx.flops_per_image * fields["images_per_s"] / 1e12
    name = device_label(ctx.env, spec.device)
    gpu_name = (ctx.env["gpu"].get("name") or "") if spec.device == "cuda" else name
    peak = device_peak(spec.device, gpu_name, spec.precision, ctx.cfg.peak_tflops, cpu_measured=ctx.cpu_peaks)
    fields.update(
        device_name=name, flops_per_image=ctx.flops_per_image, achieved_tflops=achieved,
        peak_tflops=peak.tflops if peak else None, peak_source=peak.source if peak else None,
        fraction_of_peak=achieved / peak.tflops if peak else None,
    )
    return fields


def loop_fields(ctx: _Context, spec: R.RowSpec, runner, manifest, raw_ips: float) -> dict:
    if not ctx.cfg.loop:
        return {"loop_status": "skipped", "loop_reason": "--no-loop"}
    if spec.backend not in ARTIFACT_BACKENDS:
        return {"loop_status": "skipped", "loop_reason": "the runtime loop runs artifacts (ONNX/engine), not PyTorch"}
    res = run_timed_loop(runner, manifest, ctx.video(), spec.batch, ctx.work / "loop" / spec.key.replace("/", "-"),
                         overlay=ctx.cfg.overlay, batches=ctx.cfg.reps, warmup_batches=max(1, ctx.cfg.warmup))
    ratio = res["images_per_s"] / raw_ips
    out = {"loop_status": "ok", "loop_frames": res["frames"], "loop_images_per_s": res["images_per_s"],
           "loop_ratio": ratio, "loop_overhead": 1.0 - ratio,
           "loop_non_inference_share": 1.0 - res["stage_share"]["inference"],
           "loop_latency_p50_ms": res["latency_p50_ms"], "loop_latency_p95_ms": res["latency_p95_ms"],
           "loop_latency_p99_ms": res["latency_p99_ms"]}
    out.update({f"loop_{s}_ms_per_image": res["stage_ms_per_image"][s] for s in STAGES})
    return out


def _base_row(spec: R.RowSpec, cfg: BenchConfig) -> dict:
    row = empty_row()
    row.update(key=spec.key, backend=spec.backend, backend_label=R.BACKEND_LABELS[spec.backend], device=spec.device,
               precision=spec.precision, batch=spec.batch, reps=cfg.reps, warmup=cfg.warmup,
               clients=spec.clients or None)
    return row


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300] if text else ''}"


@dataclass
class _Group:
    """One backend/device/precision: one active runner shared by its batch sizes."""

    specs: list[R.RowSpec]
    rows: list[dict]
    runner: object = None
    artifact: Optional[Artifact] = None
    manifest: object = None


def open_group(ctx: _Context, specs: list[R.RowSpec]) -> _Group:
    """Activate the group's runner; on failure its rows are marked failed (``runner`` stays None)."""
    group = _Group(specs, [_base_row(s, ctx.cfg) for s in specs])
    first = specs[0]
    try:
        if not (first.backend == "torch" and first.precision == "fp32"):
            ctx.reference()  # before any runner moves the shared model to a GPU
        runner, group.artifact, group.manifest = row_runner(ctx, first)
        log.info("activating %s/%s/%s", first.backend, first.device, first.precision)
        runner.activate()
        group.runner = runner
    except Exception as exc:  # noqa: BLE001 - a row that cannot run is reported, the others go on
        log.warning("%s/%s/%s failed: %s", first.backend, first.device, first.precision, _error(exc))
        for row in group.rows:
            row.update(status="failed", reason=_error(exc))
    return group


def time_interleaved(ctx: _Context, groups: Sequence[_Group]) -> None:
    """Time every runnable row round-robin: ``warmup`` untimed rounds, then ``reps`` timed rounds, each round one
    call per row (the starting row rotates), so load from outside hits every row alike. Fills the rows."""
    cfg = ctx.cfg
    entries = []  # (group, spec, row, call)
    for g in groups:
        if g.runner is None:
            continue
        for spec, row in zip(g.specs, g.rows):
            if g.artifact is not None:
                row.update(artifact=str(g.artifact.path.name), artifact_size_mb=g.artifact.size_mb)
            if g.manifest is not None and g.manifest.batch_max is not None and spec.batch > g.manifest.batch_max:
                row.update(status="skipped", reason=f"the engine's batch profile ends at {g.manifest.batch_max}")
                continue
            entries.append((g, spec, row, row_call(ctx, spec, g.runner, g.manifest)))
    times: dict[str, list[float]] = {spec.key: [] for _, spec, _, _ in entries}
    failed: set[str] = set()
    log.info("timing %d rows round-robin: %d warm-up + %d timed rounds", len(entries), cfg.warmup, cfg.reps)
    torch_cuda = any(spec.backend == "torch" and spec.device == "cuda" for _, spec, _, _ in entries)
    with HostMemory() as host, DeviceMemory(torch_allocator=torch_cuda) as dev:
        for rnd in range(cfg.warmup + cfg.reps):
            for i in range(len(entries)):
                _, spec, row, call = entries[(rnd + i) % len(entries)]
                if spec.key in failed:
                    continue
                try:
                    t0 = time.perf_counter()
                    call()
                    dt = time.perf_counter() - t0
                except Exception as exc:  # noqa: BLE001 - the row is reported failed, the others go on
                    log.warning("%s failed: %s", spec.key, _error(exc))
                    row.update(status="failed", reason=_error(exc))
                    failed.add(spec.key)
                    continue
                if rnd >= cfg.warmup:
                    times[spec.key].append(dt)
            if ctx.probe is not None:  # the peak is re-measured every round, under the same load; the best counts
                ctx.probe.sample()
            log.debug("round %d of %d done", rnd + 1, cfg.warmup + cfg.reps)
    if ctx.probe is not None:
        ctx.cpu_peaks = ctx.probe.result()
    memory = {"host_peak_rss_mb": host.peak_mb, "host_memory_method": f"{host.method}, all runners active",
              "device_mem_mb": dev.peak_mb, "device_memory_method": dev.method}
    for _, spec, row, _ in entries:
        if spec.key not in failed:
            row.update(timing_fields(ctx, spec, times[spec.key]), **memory)
            row["status"] = "ok"


def finish_group(ctx: _Context, g: _Group) -> None:
    """Parity (once per runner) and the end-to-end loop of the group's timed rows."""
    parity: Optional[dict] = None
    for spec, row in zip(g.specs, g.rows):
        if row["status"] != "ok":
            continue
        try:
            if parity is None:
                parity = parity_fields(ctx, spec, g.runner, g.manifest)
            row.update(parity)
        except Exception as exc:  # noqa: BLE001
            log.warning("%s parity failed: %s", spec.key, _error(exc))
            row.update(status="failed", reason=_error(exc))
            continue
        try:
            row.update(loop_fields(ctx, spec, g.runner, g.manifest, row["images_per_s"]))
        except Exception as exc:  # noqa: BLE001
            log.warning("%s loop failed: %s", spec.key, _error(exc))
            row.update(loop_status="failed", loop_reason=_error(exc))


def run_groups(ctx: _Context, specs_by_group: Sequence[list[R.RowSpec]]) -> list[dict]:
    """Activate every group's runner, time all rows interleaved, then parity and loops; rows in group order."""
    groups: list[_Group] = []
    try:
        for specs in specs_by_group:
            groups.append(open_group(ctx, specs))
        time_interleaved(ctx, groups)
        for g in groups:
            if g.runner is not None:
                finish_group(ctx, g)
    finally:
        for g in groups:
            if g.runner is not None:
                g.runner.deactivate()
    return [row for g in groups for row in g.rows]


def run_benchmark(cfg: BenchConfig, progress: Optional[Callable[[str], None]] = None) -> tuple[dict, dict[str, Path]]:
    """Run every configured row and write the outputs into ``cfg.out_dir``; (result, written files by kind)."""
    cfg.check()
    env = collect_environment()
    with ExitStack() as stack:
        if cfg.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="aaclip-bench-")))
        else:
            work = Path(cfg.work_dir)
            work.mkdir(parents=True, exist_ok=True)
        ctx = _Context(cfg, work, env)
        precisions = list(cfg.precisions) + (["int8"] if cfg.int8 and "int8" not in cfg.precisions else [])
        caps = R.detect_capabilities(cfg.int8 is not None or "int8" in precisions, ctx.engine_precisions)
        specs = [s for s in R.expand_rows(cfg.backends, precisions, cfg.batches, caps)
                 if cfg.cpu_batches is None or s.device != "cpu" or s.batch in cfg.cpu_batches]
        groups: dict[tuple, list[R.RowSpec]] = {}
        for spec in specs:
            groups.setdefault((spec.backend, spec.device, spec.precision), []).append(spec)
        rows_by_key: dict[str, dict] = {}
        runnable = []
        for group in groups.values():
            reason = R.skip_reason(group[0], caps)
            if reason is not None:
                for spec in group:
                    rows_by_key[spec.key] = dict(_base_row(spec, cfg), status="skipped", reason=reason)
                continue
            if progress:
                progress(f"{group[0].backend}/{group[0].device}/{group[0].precision}")
            runnable.append(group)
        if any(g[0].device == "cpu" for g in runnable) and not cfg.peak_tflops:
            ctx.probe = PeakProbe()
            ctx.probe.sample()
            ctx.cpu_peaks = ctx.probe.result()
        for row in run_groups(ctx, runnable):
            rows_by_key[row["key"]] = row
        if ctx.cpu_peaks:
            log.info("measured CPU matmul peaks, best of %d samples (TFLOP/s): %s", ctx.cpu_peaks["reps"],
                     ctx.cpu_peaks["probes"])
        apply_bounds(list(rows_by_key.values()), ctx.cpu_peaks, ctx.plans)
        served: list[dict] = []
        if "triton" in cfg.backends:
            from .served import served_rows

            if progress:
                progress("triton")
            served = served_rows(ctx, precisions, _base_row, parity_fields)
        result = {
            "format": RESULT_FORMAT, "format_version": RESULT_VERSION,
            "model": {"description": ctx.description, "backbone": ctx.model.config.backbone.name,
                      "image_size": ctx.size, "class": ctx.class_name, "flops_per_image": ctx.flops_per_image,
                      "flops": ctx.flops},
            "settings": {"command": cfg.command, "backends": list(cfg.backends), "precisions": precisions,
                         "batches": list(cfg.batches), "reps": cfg.reps, "warmup": cfg.warmup, "loop": cfg.loop,
                         "overlay": cfg.overlay, "frames": cfg.frames, "parity_frames": cfg.parity_frames,
                         "loop_batches_per_row": f"{max(1, cfg.warmup)} warm-up + {cfg.reps} timed",
                         "int8": str(cfg.int8) if cfg.int8 else None, "clients": list(cfg.clients),
                         **cfg.search.record()},
            "precision_plans": ctx.plans,
            "environment": dict(env, cpu_peaks=ctx.cpu_peaks),
            "rows": [rows_by_key[s.key] for s in specs] + served,
        }
    return result, write_outputs(result, cfg.out_dir, cfg.plot)


__all__ = ["BenchConfig", "run_benchmark", "run_groups", "run_frames", "row_runner", "time_interleaved",
           "loop_fields", "parity_fields", "timing_fields", "RESULT_FORMAT", "RESULT_VERSION"]
