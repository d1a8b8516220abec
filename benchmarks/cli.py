"""``aaclip-bench``: throughput and latency per backend x precision x batch, and the runtime-loop overhead."""
from __future__ import annotations

import logging
import tempfile
from contextlib import ExitStack
from pathlib import Path
from typing import Optional

import click
from aaclip.contract.cli import Command, setup_logging

from aaclip.calibration.search import DEFAULT_SEARCH_FRAMES

from .reduced import BUDGET_S, CALIBRATION_FRAMES, HOLDOUT, SearchSettings
from .rows import BACKENDS, DEFAULT_BACKENDS, PRECISIONS, parse_batches, parse_list

log = logging.getLogger(__name__)


def resolve_model(ckpt: Optional[Path], tiny: bool, shape: Optional[str], method: Optional[str],
                  work_dir: Optional[Path], seed: int, stack: ExitStack) -> Path:
    """The checkpoint to benchmark: ``ckpt`` (its family checked against ``method``), or the random
    ``--tiny`` / ``--shape`` checkpoint of family ``method`` built in ``work_dir`` (else a temporary
    folder that ``stack`` removes)."""
    from aaclip.train.checkpoint import checkpoint_config
    from aaclip.train.families import DEFAULT_METHOD, check_method, get_family

    from .models import prepare_checkpoint

    if method is not None:
        get_family(method)  # an unknown name fails before anything is built
    if ckpt is not None and not tiny and not shape:
        path, _ = prepare_checkpoint(ckpt, False, None, Path("."), seed)
        check_method(checkpoint_config(path).method, method, f"checkpoint {path}")
        return path
    base = Path(work_dir) if work_dir is not None else Path(stack.enter_context(
        tempfile.TemporaryDirectory(prefix="aaclip-bench-ckpt-")))
    path, description = prepare_checkpoint(ckpt, tiny, shape, base, seed, method or DEFAULT_METHOD)
    log.info("benchmarking %s", description)
    return path


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--checkpoint", "ckpt", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Checkpoint directory to benchmark (aaclip-train output).")
@click.option("--tiny", is_flag=True, help="A tiny random model (seconds; for smoke tests of the benchmark).")
@click.option("--shape", metavar="NAME@SIZE", default=None,
              help="The real architecture with random weights, no download, e.g. ViT-L-14-336@518.")
@click.option("--method", metavar="NAME", default=None,
              help="Model family of the --tiny/--shape random checkpoint [default: aa-clip]; with --checkpoint it only "
                   "checks the checkpoint's.")
@click.option("--backends", default=",".join(DEFAULT_BACKENDS), show_default=True,
              help=f"Comma-separated: {', '.join(BACKENDS)} (triton: the graph served by Triton, per --clients).")
@click.option("--precisions", default="fp32,fp16", show_default=True,
              help=f"Comma-separated: {', '.join(PRECISIONS)} (int8: the --int8 graph, else the accuracy search of "
                   "aaclip-calibrate int8 runs on the FP32 graph; bf16: OpenVINO's mixed BF16 with its searched plan on "
                   "CPUs with BF16, PyTorch autocast on GPUs).")
@click.option("--time-budget", type=float, default=BUDGET_S, show_default=True, metavar="SECONDS",
              help="Time the accuracy search may take per reduced precision (int8 without --int8, bf16).")
@click.option("--calibration-frames", type=int, default=CALIBRATION_FRAMES, show_default=True,
              help="(search) Synthetic normal products read, as aaclip-calibrate's --frames (every 4th is held out).")
@click.option("--holdout", type=int, default=HOLDOUT, show_default=True,
              help="(search) Synthetic products (and as many with defects) added to the gate's held-out set, as "
                   "aaclip-calibrate's --holdout.")
@click.option("--search-frames", type=int, default=DEFAULT_SEARCH_FRAMES, show_default=True,
              help="(search) Held-out frames each search step is gated on, as aaclip-calibrate's --search-frames.")
@click.option("--batches", default="1,2,4", show_default=True, help="Comma-separated batch sizes.")
@click.option("--reps", type=int, default=10, show_default=True, help="Timed calls per row.")
@click.option("--warmup", type=int, default=2, show_default=True, help="Untimed calls before timing each row.")
@click.option("--out", "-o", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("bench-results"),
              show_default=True, help="Folder for benchmark.json/.csv/.md/.png.")
@click.option("--loop/--no-loop", default=True, show_default=True,
              help="Also run the end-to-end runtime loop on a synthetic video for each ONNX/engine row.")
@click.option("--overlay/--no-overlay", default=True, show_default=True,
              help="The loop draws heat-map overlays into an annotated video (else decisions and events only).")
@click.option("--frames", type=int, default=8, show_default=True, help="Distinct synthetic frames all rows cycle through.")
@click.option("--parity-frames", type=int, default=4, show_default=True,
              help="Frames for the parity check against the FP32 PyTorch reference.")
@click.option("--int8", "int8", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="An INT8 (QDQ) ONNX graph with its manifest: adds onnxruntime and openvino int8 rows.")
@click.option("--engine", "engines", multiple=True, type=click.Path(path_type=Path, dir_okay=False),
              help="A TensorRT engine with its manifest (repeatable); without one, engines are built on the GPU.")
@click.option("--work-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Keep exported graphs and the loop video here (default: a temporary folder, removed).")
@click.option("--peak-tflops", type=float, default=None,
              help="Peak TFLOP/s of the device for the fraction-of-peak column (overrides the GPU table and the "
                   "CPU matmul probe measured in the run).")
@click.option("--no-plot", is_flag=True, help="Skip the PNG plot.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weights and frames.")
@click.option("--clients", default="1,2,4", show_default=True,
              help="(triton) numbers of concurrent clients, one frame per request each.")
@click.option("--server", default=None, metavar="grpc://HOST:8001/MODEL",
              help="(triton) a running server that serves this model [default: start aaclip-serve on loopback].")
@click.option("--serve-python", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="(triton) Python of aaclip-serve's environment [default: $AACLIP_SERVE_PYTHON, else .venv-serve].")
@click.option("--suite", type=click.Choice(["gpu"]), default=None,
              help="gpu: the prepared GPU proof (ViT-L-14-336@518: TensorRT FP16/INT8 engines, parity against ONNX "
                   "Runtime FP32 on the CPU, batch 1/8/32, the camera loop) into --out as suite.json/suite.md; without "
                   "a GPU it checks the engine build path and the report writer, then exits 2.")
@click.option("-v", "--verbose", count=True, help="More log output.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def main(ckpt: Optional[Path], tiny: bool, shape: Optional[str], method: Optional[str], backends: str, precisions: str,
         time_budget: float, calibration_frames: int, holdout: int, search_frames: int, batches: str,
         reps: int, warmup: int, out_dir: Path, loop: bool, overlay: bool, frames: int, parity_frames: int,
         int8: Optional[Path], engines: tuple[Path, ...], work_dir: Optional[Path], peak_tflops: Optional[float],
         no_plot: bool, seed: int, clients: str, server: Optional[str], serve_python: Optional[Path], suite: Optional[str],
         verbose: int, quiet: bool) -> None:
    """Benchmark a model the way a production engineer measures it.

    Rows: backend x precision x batch (PyTorch eager, ONNX Runtime CPU/CUDA, OpenVINO CPU, TensorRT),
    timed interleaved (round-robin); rows that cannot run here are listed as skipped with the reason.
    Reports images/s, latency min/median/p95/p99, speed against ONNX Runtime FP32, peak memory, artifact
    size, parity against FP32, FLOP/s against the device's peak (CPUs: measured in the run), and the
    end-to-end runtime loop's throughput per stage and its overhead over the raw backend.
    """
    setup_logging(verbose, quiet)
    if suite == "gpu":
        run_gpu_suite(out_dir, shape, reps, warmup, work_dir, seed)
        return
    from .suite import BenchConfig, run_benchmark

    with ExitStack() as stack:
        ckpt = resolve_model(ckpt, tiny, shape, method, work_dir, seed, stack)
        cfg = BenchConfig(
            out_dir=out_dir, ckpt=ckpt,
            backends=parse_list(backends, BACKENDS, "--backends"),
            precisions=parse_list(precisions, PRECISIONS, "--precisions"), batches=parse_batches(batches),
            reps=reps, warmup=warmup, loop=loop, overlay=overlay, frames=frames, parity_frames=parity_frames,
            int8=int8, engines=engines, work_dir=work_dir, peak_tflops=peak_tflops, seed=seed, plot=not no_plot,
            search=SearchSettings(budget_s=time_budget, frames=calibration_frames, holdout=holdout,
                                  search_frames=search_frames),
            clients=parse_batches(clients, "--clients"), server=server, serve_python=serve_python,
        )
        result, files = run_benchmark(cfg)
    counts: dict[str, int] = {}
    for row in result["rows"]:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    click.echo(Path(files["markdown"]).read_text(encoding="utf-8"))
    click.echo(f"{len(result['rows'])} rows (" + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + "); wrote "
               + ", ".join(str(p) for p in files.values()))


def run_gpu_suite(out_dir: Path, shape: Optional[str], reps: int, warmup: int, work_dir: Optional[Path],
                  seed: int) -> None:
    """``--suite gpu``: run it, print the report; exit 2 (one line) when there is no GPU here."""
    import sys

    from .gpu_suite import SHAPE, SuiteOptions, check_options, markdown, run_suite

    options = SuiteOptions(out_dir=Path(out_dir), shape=shape or SHAPE, reps=reps, warmup=warmup, work_dir=work_dir,
                           seed=seed)
    check_options(options)
    result, status = run_suite(options)
    click.echo(markdown(result))
    if status == 2:
        checked = ", ".join(f"{c.name}: {c.status}" for c in result.checks[1:])
        click.echo(f"error: no NVIDIA GPU here, so no GPU figure was measured (checked {checked}; report in "
                   f"{out_dir}/suite.json); run aaclip-bench --suite gpu --out DIR on the GPU machine", err=True)
    sys.exit(status)


if __name__ == "__main__":
    main()
