"""``aaclip-calibrate``: alarm thresholds from normal frames, and INT8 graphs behind an accuracy gate.

    aaclip-calibrate threshold model.onnx --images good_parts/            # writes the manifest's score block
    aaclip-calibrate threshold model.engine --camera csi://0 --frames 10000 --far 0.001
    aaclip-calibrate threshold model.onnx --data test.jsonl --dry-run       # label 1 records: report only
    aaclip-calibrate threshold model.onnx --reviews reviews.jsonl --images good_parts/  # operators' verdicts
    aaclip-calibrate int8 model.onnx --images good_parts/ --engine model.int8.engine --trt-flavour tensorrt

Exit status: 0 done, 1 the INT8 gate refused the graph, 2 bad input (one 'error: ...' line).
"""
from __future__ import annotations

import functools
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Optional

import click
from aaclip.contract.cli import FiniteFloat, Group, verbosity
from aaclip.contract.errors import UserError
from aaclip.contract.files import image_files
from aaclip.contract.manifest import Manifest, load_manifest
from aaclip.runtime.backends.options import backend_option, backend_options, runner_options
from aaclip.runtime.source_options import FirstFrameWait, first_frame_options

from . import thresholds
from .gate import MAX_AUROC_CHANGE, MAX_MAP_ERR, MIN_MAP_CORR, MIN_RANK_CORR, GateLimits
from .inputs import FrameInput, camera_input, class_id_for, data_inputs, file_input, folder_input
from .search import DEFAULT_BUDGET_S, DEFAULT_SEARCH_FRAMES

log = logging.getLogger(__name__)

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 110}


def resolve_inputs(manifest: Manifest, images: Optional[Path], data: Optional[Path], camera: Optional[str],
                   frames: Optional[int], anomalies: Optional[Path], class_name: Optional[str],
                   first_frame: FirstFrameWait = FirstFrameWait()) -> tuple[FrameInput, Optional[FrameInput]]:
    """(normal frames, labelled anomalies or None) from exactly one of --images / --data / --camera."""
    given = [n for n, v in (("--images", images), ("--data", data), ("--camera", camera)) if v is not None]
    if len(given) != 1:
        raise UserError("give exactly one source of normal frames: --images DIR, --data FILE.jsonl or "
                        f"--camera SPEC --frames N (got {', '.join(given) or 'none'})")
    bad: Optional[FrameInput] = None
    if data is not None:
        normals, bad = data_inputs(data, manifest, class_name)
    elif images is not None:
        normals = folder_input(images, class_id_for(manifest, class_name))
    else:
        if frames is None:
            raise UserError("--camera needs --frames N: how many frames of good parts to record "
                            "(10000 for the default 0.001 false-alarm rate)")
        normals = camera_input(camera, frames, class_id_for(manifest, class_name), first_frame)
    if anomalies is not None:
        if bad is not None:
            raise UserError("anomalies come from the label-1 records of --data; drop --anomalies or --data")
        files = image_files(anomalies)
        cid = class_id_for(manifest, class_name)
        bad = file_input(files, [cid] * len(files), f"images {anomalies}")
    return normals, bad


def _limit(frames_input: FrameInput, limit: Optional[int]) -> FrameInput:
    """At most ``limit`` frames of a file input (cameras already stop at --frames)."""
    if limit is None or frames_input.count is None:
        return frames_input
    import itertools

    return FrameInput(frames_input.description, lambda: itertools.islice(frames_input.items(), limit),
                      min(limit, frames_input.count))


def _source_options(f):
    f = first_frame_options(f)  # listed after --class
    for option in reversed([
        click.option("--images", type=click.Path(path_type=Path, file_okay=False),
                     help="Folder of images of good (normal) parts."),
        click.option("--data", type=click.Path(path_type=Path, dir_okay=False),
                     help="JSON-lines records (SPEC section 6): label 0 = normal frames, label 1 = anomalies for "
                          "the report."),
        click.option("--camera", metavar="SPEC",
                     help="Record live frames (same specs as aaclip-runtime: 0, /dev/video0, csi://0, rtsp://..., "
                          "a video file, a GStreamer pipeline)."),
        click.option("--anomalies", type=click.Path(path_type=Path, file_okay=False),
                     help="Folder of images with defects (labelled anomalies; information/gate only)."),
        click.option("--class", "class_name", metavar="NAME",
                     help="Class the frames show (required for multi-class artifacts unless --data names it)."),
    ]):
        f = option(f)
    return _first_frame(f)


def _first_frame(f):
    """The command sees --open-timeout and --wait-for-source (aaclip-runtime's, for --camera) as one
    ``first_frame``."""
    @functools.wraps(f)
    def wrapper(*args, open_timeout: float, wait_for_source: bool, **kwargs):
        return f(*args, first_frame=FirstFrameWait(open_timeout, wait_for_source), **kwargs)

    return wrapper


def _gate_options(f):
    for option in reversed([
        click.option("--max-map-err", type=FiniteFloat(min=0.0), default=MAX_MAP_ERR, show_default=True,
                     help="Gate: max |reduced - FP32| anomaly-map error over all held-out pixels, relative to the "
                          "FP32 maps' range."),
        click.option("--min-map-corr", type=FiniteFloat(min=-1.0, max=1.0), default=MIN_MAP_CORR, show_default=True,
                     help="Gate: mean per-frame Pearson correlation of reduced-precision vs FP32 anomaly maps."),
        click.option("--min-rank-corr", type=FiniteFloat(min=-1.0, max=1.0), default=MIN_RANK_CORR, show_default=True,
                     help="Gate: Spearman correlation of reduced-precision vs FP32 image scores."),
        click.option("--max-auroc-change", type=FiniteFloat(min=0.0, max=1.0), default=MAX_AUROC_CHANGE,
                     show_default=True,
                     help="Gate: largest |AUROC(reduced) - AUROC(FP32)| on the held-out labels."),
    ]):
        f = option(f)
    return f


def _search_options(f):
    for option in reversed([
        click.option("--search/--no-search", default=True, show_default=True,
                     help="Accuracy search: which blocks / groups (QKV, attention output, MLP) stay FP32 so the gate "
                          "holds (--no-search: everything in low precision, one gate)."),
        click.option("--time-budget", type=FiniteFloat(min=1.0), default=DEFAULT_BUDGET_S, show_default=True,
                     metavar="SECONDS", help="Time the search may take; what it could not measure stays FP32."),
        click.option("--search-frames", type=click.IntRange(min=2), default=DEFAULT_SEARCH_FRAMES, show_default=True,
                     help="Held-out frames (half normal, half anomalous) each search step is gated on; the final plan "
                          "is gated on all of them."),
        click.option("--plan", type=click.Path(path_type=Path, dir_okay=False),
                     help="Re-apply the plan recorded in this artifact's manifest (or the manifest itself): no search."),
    ]):
        f = option(f)
    return f


def _recorded_plan(path: Path, precision: str) -> dict:
    """The precision plan recorded in the manifest of ``path`` (an artifact or its manifest)."""
    import json as _json

    from aaclip.contract.manifest import manifest_path

    file = Path(path) if str(path).endswith(".manifest.json") else manifest_path(Path(path))
    try:
        data = _json.loads(file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UserError(f"--plan {path}: cannot read its manifest {file.name} ({exc}); give an artifact written "
                        f"by aaclip-calibrate {precision} or its manifest") from None
    if precision == "int8":
        record = (data.get("quantization") or {}).get("plan")
    else:
        record = ((data.get("precision_gates") or {}).get(f"openvino-{precision}") or {}).get("plan")
    if not record:
        raise UserError(f"--plan {path}: its manifest records no {precision} plan; run the search (drop --plan)")
    return record


def _print_plan(plan, units) -> None:
    if plan is None:
        return
    for line in plan.summary(units):
        click.echo(line)


def _print_speedup(speedup, name: str) -> None:
    if speedup and speedup.get("speedup"):
        click.echo(f"expected speed-up over FP32: {speedup['speedup']:.2f}x ({name} {speedup['reduced_s']:.3g} s vs "
                   f"FP32 {speedup['fp32_s']:.3g} s for the gate's {speedup['frames']} frames on {speedup['backend']}, "
                   "this CPU, one run each; aaclip-bench measures it properly)")


def _print_gate(gate) -> None:
    click.echo(f"accuracy gate ({'passed' if gate.passed else 'FAILED'}):")
    for line in gate.lines():
        click.echo(line)


@click.group(cls=Group, context_settings=CONTEXT)
@verbosity
def cli() -> None:
    """Calibrate an exported artifact on normal frames: score thresholds (threshold), INT8 (int8) or
    OpenVINO's mixed BF16 (bf16), the last two behind the accuracy gate.

    See docs/calibration.md.
    """


@cli.command(context_settings=CONTEXT)
@click.argument("artifact", type=click.Path(path_type=Path, dir_okay=False))
@_source_options
@click.option("--frames", type=click.IntRange(min=2),
              help="Frames to record from --camera (required there); at most this many with --images/--data.")
@click.option("--far", type=FiniteFloat(), default=thresholds.DEFAULT_FAR, show_default=True,
              help="False-alarm rate per normal frame the threshold aims at (0.001: one per 1000 good frames).")
@click.option("--pixel-far", type=FiniteFloat(), default=thresholds.DEFAULT_PIXEL_FAR, show_default=True,
              help="False-alarm rate per normal pixel for the pixel (overlay) threshold.")
@click.option("--pixel-samples", type=click.IntRange(min=0), default=4096, show_default=True,
              help="Anomaly-map pixels sampled per frame for the pixel threshold (0: derive it from map_max).")
@backend_option("Use the one the runtime will use. ")
@backend_options
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Frames per inference call (as aaclip-runtime --batch).")
@click.option("--plot", type=click.Path(path_type=Path, dir_okay=False),
              help="Histogram PNG [default: ARTIFACT.calibration.png; not written by --dry-run].")
@click.option("--no-plot", is_flag=True, help="Do not write the histogram.")
@click.option("--dry-run", is_flag=True, help="Print the score block; write nothing.")
@click.option("--reviews", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="Refit the threshold from the operators' reviews (aaclip-runtime --reviews): false alarms stay "
                   "below it, confirmed and missed defects above; with --images the constants are first fitted on "
                   "those good images. Refuses (exit 2) when no threshold separates the verdicts.")
@verbosity
def threshold(artifact: Path, images, data, camera, anomalies, class_name, frames, far, pixel_far,
              pixel_samples, backend, device, threads, precision_hint, perf_hint, cache_dir, batch, plot, no_plot,
              dry_run, reviews, first_frame) -> None:
    """Fit normalization constants and thresholds of ARTIFACT on normal frames; write them into its manifest.

    Only the manifest changes (atomically); the artifact and its sha256 stay as they are, and
    aaclip-runtime uses the new constants without any flag (a running one reloads them and logs the
    old and new threshold). Labelled anomalies (--data label 1, --anomalies) are only reported (AUROC,
    detection rate, F1-optimal threshold), never used to fit. --reviews is the exception: the verdicts
    operators gave on the line view bound the threshold (docs/calibration.md, "Refit from reviews").
    """
    from .plot import save_score_histogram
    from .score_calibration import ThresholdOptions, calibrate_artifact, summary_lines

    thresholds._check_far(far)
    thresholds._check_far(pixel_far, "pixel-far")
    manifest = load_manifest(artifact)
    if reviews is not None:
        _refit(artifact, manifest, reviews, images, (data, camera, anomalies), class_name, frames, ThresholdOptions(
            far=far, pixel_far=pixel_far, backend=backend, batch=batch, pixel_samples=pixel_samples, dry_run=dry_run,
            runner=runner_options(device, threads, precision_hint, perf_hint, cache_dir)))
        return
    normals, bad = resolve_inputs(manifest, images, data, camera, frames, anomalies, class_name, first_frame)
    if camera is None:
        normals = _limit(normals, frames)
    result = calibrate_artifact(artifact, normals, bad, ThresholdOptions(
        far=far, pixel_far=pixel_far, backend=backend, batch=batch, pixel_samples=pixel_samples, dry_run=dry_run,
        runner=runner_options(device, threads, precision_hint, perf_hint, cache_dir)))
    for line in summary_lines(result):
        click.echo(line)
    if dry_run:
        click.echo(json.dumps({"score": result.score}, indent=2))
        click.echo("dry run: manifest not written")
    else:
        click.echo(f"wrote {result.manifest_path}")
    if not no_plot and (plot is not None or not dry_run):
        path = plot or artifact.with_name(artifact.name + ".calibration.png")
        c = result.score["calibration"]
        if save_score_histogram(path, result.normal_scores, result.score["threshold"], result.anomaly_scores,
                                f"{artifact.name}: {c['frames']} normal frames, {c['method']} at far {c['far']:g}"):
            click.echo(f"plot {path}")


def _refit(artifact: Path, manifest: Manifest, reviews: Path, images: Optional[Path], others: tuple,
           class_name: Optional[str], frames: Optional[int], options) -> None:
    """``threshold --reviews``: refit from the reviews (and the good images of --images)."""
    from .review_refit import refit_threshold, summary_lines

    if any(v is not None for v in others):
        raise UserError("--reviews refits from the reviews and the good images of --images; drop --data, --camera "
                        "and --anomalies")
    normals = _limit(folder_input(images, class_id_for(manifest, class_name)), frames) if images else None
    result = refit_threshold(artifact, reviews, normals, options)
    for line in summary_lines(result):
        click.echo(line)
    click.echo("dry run: manifest not written" if options.dry_run else
               f"wrote {result.manifest_path} (a running aaclip-runtime reloads it within seconds)")


@cli.command(context_settings=CONTEXT)
@click.argument("fp32_onnx", type=click.Path(path_type=Path, dir_okay=False))
@_source_options
@click.option("--frames", type=click.IntRange(min=2), default=128, show_default=True,
              help="Normal frames to read (every 4th is held out for the gate when there are >= 8).")
@click.option("--out", "-o", type=click.Path(path_type=Path, dir_okay=False),
              help="INT8 graph [default: FP32_ONNX with .int8.onnx].")
@click.option("--holdout", type=click.IntRange(min=0), default=32, show_default=True,
              help="Synthetic products (and as many with synthetic defects) added to the gate's held-out set.")
@click.option("--method", type=click.Choice(["minmax", "percentile"]), default="minmax", show_default=True,
              help="Activation range estimator (percentile: 99.999th, clips rare outliers).")
@_gate_options
@click.option("--backend", type=click.Choice(["onnxruntime", "openvino"]), default="onnxruntime", show_default=True,
              help="Backend the gate runs FP32 and INT8 on: the one that will run the INT8 graph.")
@backend_options
@click.option("--force", is_flag=True, help="Write the INT8 graph even when the gate fails (recorded in the manifest).")
@click.option("--discard-calibration", is_flag=True,
              help="Replace a calibrated INT8 graph at --out whose outputs change (its thresholds are lost).")
@click.option("--batch", type=click.IntRange(min=1), default=8, show_default=True, help="Frames per inference call.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic held-out set.")
@_search_options
@click.option("--weight-bits", type=click.IntRange(7, 8), default=7, show_default=True,
              help="Bits of the INT8 weights: 7 keeps accuracy on every CPU (x86 without VNNI saturates with 8); 8 for "
                   "graphs only TensorRT or VNNI/AMX CPUs run.")
@click.option("--engine", type=click.Path(path_type=Path, dir_okay=False),
              help="Also build a TensorRT engine from the INT8 graph (same build as aaclip-export --format engine).")
@click.option("--trt-flavour", "flavour", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default="tensorrt",
              show_default=True, help="(--engine) tensorrt: build on the target GPU. tensorrt-rtx: ahead of time.")
@click.option("--engine-batch", default="1:4:8", show_default=True, help="(--engine) batch profile MIN:OPT:MAX.")
@verbosity
def int8(fp32_onnx: Path, images, data, camera, anomalies, class_name, frames, out, holdout, method,
         max_map_err, min_map_corr, min_rank_corr, max_auroc_change, backend, device, threads, precision_hint,
         perf_hint, cache_dir, force, discard_calibration, batch, seed, search, time_budget, search_frames, plan,
         weight_bits, engine, flavour, engine_batch, first_frame) -> None:
    """Quantize FP32_ONNX to an INT8 Q/DQ graph calibrated on normal frames, gated against FP32.

    By default an accuracy search decides which transformer blocks (or their QKV / attention-output / MLP
    groups) stay FP32: least sensitive first into INT8 while the gate holds (--time-budget bounds it; --plan
    re-applies a recorded plan). The gate compares INT8 with FP32 on held-out frames (held-out normal frames
    plus synthetic products, with labelled anomalies or synthetic defects) and refuses to write the INT8 graph
    (exit 1) when a metric misses its limit, unless --force. Prints the plan, the gate's figures and the
    speed-up measured on the gate's frames.
    """
    from .int8 import Int8Options, build_int8_engine, quantize_artifact

    profile = None
    if engine is not None:
        from aaclip.export.engine import load_flavour, parse_batch

        profile = parse_batch(engine_batch)
        load_flavour(flavour)  # fail before the slow part when TensorRT is missing
    manifest = load_manifest(fp32_onnx)
    normals, bad = resolve_inputs(manifest, images, data, camera, frames, anomalies, class_name, first_frame)
    source = (["--images", str(images)] if images else ["--data", str(data)] if data else
              ["--camera", str(camera)])
    target = out or fp32_onnx.with_name(fp32_onnx.stem + ".int8.onnx")
    recorded = _recorded_plan(plan, "int8") if plan is not None else None
    command = shlex.join(["aaclip-calibrate", "int8", str(fp32_onnx), *source, "--frames", str(frames),
                          "--method", method, "--out", str(target), "--backend", backend,
                          "--weight-bits", str(weight_bits), "--plan", str(plan or target)]
                         + (["--class", class_name] if class_name else [])
                         + (["--engine", str(engine), "--trt-flavour", flavour, "--engine-batch", engine_batch]
                            if engine else []))
    limits = GateLimits(max_map_err=max_map_err, min_map_corr=min_map_corr, min_rank_corr=min_rank_corr,
                        max_auroc_change=max_auroc_change)
    result = quantize_artifact(fp32_onnx, normals, bad, Int8Options(
        out=out, max_frames=frames, holdout=holdout, limits=limits, force=force, method=method, batch=batch, seed=seed,
        rebuild_command=command, discard_calibration=discard_calibration, backend=backend,
        runner=runner_options(device, threads, precision_hint, perf_hint, cache_dir), search=search,
        budget_s=time_budget, search_frames=search_frames, weight_bits=weight_bits, plan=recorded))
    click.echo(f"INT8 calibration: {result.calibration['frames']} frames ({result.calibration['input']}), "
               f"{len(result.plan.quantize)} nodes quantized, {len(result.plan.exclude)} kept FP32")
    _print_plan(result.search, result.units)
    _print_gate(result.gate)
    _print_speedup(result.speedup, "INT8")
    if not result.written:
        click.echo("error: INT8 graph not written: the accuracy gate failed (see above); calibrate on more varied "
                   "normal frames, try --method percentile, or pass --force to write it anyway", err=True)
        sys.exit(1)
    if not result.gate.passed:
        click.echo("warning: gate failed, written because of --force (recorded in the manifest)", err=True)
    click.echo(f"wrote {result.out} and {result.manifest.name}")
    if engine is not None:
        path = build_int8_engine(result.out, engine, flavour, profile, command)
        click.echo(f"wrote {path} ({flavour})")


@cli.command(context_settings=CONTEXT)
@click.argument("fp32_onnx", type=click.Path(path_type=Path, dir_okay=False))
@_source_options
@click.option("--frames", type=click.IntRange(min=1), default=32, show_default=True,
              help="Normal frames to read (all are test frames: nothing is fitted).")
@click.option("--holdout", type=click.IntRange(min=0), default=16, show_default=True,
              help="Synthetic products (and as many with synthetic defects) added to the test frames.")
@_gate_options
@backend_options
@click.option("--force", is_flag=True, help="Record BF16 as allowed even when the gate fails (marked forced).")
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True, help="Frames per inference call.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the synthetic test frames.")
@_search_options
@click.option("--emulate", is_flag=True,
              help="On a CPU without BF16: preview the plan on ONNX Runtime with BF16 rounding; nothing is recorded.")
@verbosity
def bf16(fp32_onnx: Path, images, data, camera, anomalies, class_name, frames, holdout, max_map_err,
         min_map_corr, min_rank_corr, max_auroc_change, device, threads, precision_hint, perf_hint, cache_dir, force,
         batch, seed, search, time_budget, search_frames, plan, emulate, first_frame) -> None:
    """Search and gate OpenVINO's mixed BF16 on FP32_ONNX against FP32.

    By default an accuracy search decides which transformer blocks (or their QKV / attention-output / MLP
    groups) run BF16 and which stay FP32, least sensitive first into BF16 while the gate holds; everything
    outside the transformer's matmuls stays FP32. When the gate passes, the manifest records the plan
    (precision_gates) and aaclip-runtime --backend openvino --precision bf16 runs it; otherwise nothing
    is written (exit 1). Needs a CPU with BF16 (AVX512-BF16 or AMX); elsewhere --emulate previews the plan.
    """
    from .bf16 import PrecisionGateOptions, gate_precision

    if precision_hint not in (None, "bf16"):
        raise UserError("aaclip-calibrate bf16 gates --precision bf16; drop --precision")
    manifest = load_manifest(fp32_onnx)
    normals, bad = resolve_inputs(manifest, images, data, camera, frames, anomalies, class_name, first_frame)
    if camera is None:
        normals = _limit(normals, frames)
    limits = GateLimits(max_map_err=max_map_err, min_map_corr=min_map_corr, min_rank_corr=min_rank_corr,
                        max_auroc_change=max_auroc_change)
    recorded = _recorded_plan(plan, "bf16") if plan is not None else None
    result = gate_precision(fp32_onnx, normals, bad, PrecisionGateOptions(
        max_frames=frames, holdout=holdout, limits=limits, force=force, batch=batch, seed=seed,
        runner=runner_options(device, threads, None, perf_hint, cache_dir), search=search, budget_s=time_budget,
        search_frames=search_frames, plan=recorded, emulate=emulate))
    _print_plan(result.search, result.units)
    _print_gate(result.gate)
    _print_speedup(result.speedup, "BF16")
    if result.emulated:
        click.echo("emulated BF16 (rounding on ONNX Runtime, this CPU has no BF16): nothing recorded; run this command "
                   "without --emulate on the line's machine to gate and record the plan")
        return
    if not result.written:
        click.echo("error: BF16 not allowed for this artifact: the accuracy gate failed (see above); run it in fp32 "
                   "(or pass --force to allow it anyway)", err=True)
        sys.exit(1)
    if not result.gate.passed:
        click.echo("warning: gate failed, recorded because of --force", err=True)
    click.echo(f"wrote {result.manifest}: aaclip-runtime {fp32_onnx} --backend openvino --precision bf16")


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point (errors: see aaclip.contract.cli.Command)."""
    cli.main(args=argv)


if __name__ == "__main__":
    main()
