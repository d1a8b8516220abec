"""``aaclip-export``: checkpoint -> ONNX graph or TensorRT engine with its manifest; ``--verify`` parity gate.

    aaclip-export CKPT                                   # FP32 ONNX, all classes, model resolution
    aaclip-export CKPT --precision fp16 --classes bottle --input-size 1080x1920
    aaclip-export CKPT --format engine --precision fp16 --engine-batch 1:4:8 --trt-flavour tensorrt
    aaclip-export aaclip-fp16.onnx --format engine               # on the Jetson, from a copied graph
    aaclip-export CKPT --format triton --out models/ --engine-batch 1:4:8   # a Triton model repository (docs/deploy-triton.md)
    aaclip-export --verify runs/demo/ckpt/aaclip-fp32.onnx [--checkpoint CKPT] [--images DIR]
"""
from __future__ import annotations

import logging
import shlex
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

import click
from aaclip.contract.cli import Command, FiniteFloat, renamed_options, setup_logging
from aaclip.contract.errors import UserError
from aaclip.runtime.backends.options import backend_option

if TYPE_CHECKING:
    from .engine import EngineOptions
    from .onnx_export import ExportOptions
    from .verify import VerifyOptions

log = logging.getLogger(__name__)

FORMATS = ("onnx", "engine", "triton")


def _split_classes(text: Optional[str]) -> Optional[list[str]]:
    if text is None:
        return None
    names = [c.strip() for c in text.split(",") if c.strip()]
    if not names:
        raise UserError("--classes is empty: give class names separated by commas, or omit it for all classes")
    return names


def _check_suffix(out: Optional[Path], fmt: str) -> None:
    if out is None:
        return
    suffix = Path(out).suffix.lower()
    if fmt == "engine" and suffix == ".onnx":
        raise UserError(f"--out {out} ends in .onnx but --format engine writes an engine (and its graph beside it as "
                        ".onnx): use e.g. --out model.engine")
    if fmt in ("onnx", "engine") and Path(out).is_dir():
        raise UserError(f"--out {out} is a folder; --format {fmt} writes one file (--format triton writes a folder)")
    if fmt == "onnx" and suffix in (".engine", ".plan", ".trt"):
        raise UserError(f"--out {out} looks like an engine but --format is onnx: add --format engine or use .onnx")


def check_method(path: Path, method: Optional[str]) -> None:
    """``--method``: the model family of the checkpoint (or artifact) at ``path`` must be ``method``."""
    if method is None:
        return
    from aaclip.train.families import check_method as check

    if Path(path).is_dir():
        from aaclip.train.checkpoint import checkpoint_config

        check(checkpoint_config(path).method, method, f"checkpoint {path}")
    else:
        from aaclip.contract.manifest import load_manifest

        check(load_manifest(path).method, method, f"artifact {path}")


def triton_repository(source: Path, out: Optional[Path], options, export_graph: Callable[[Path], Path]) -> Path:
    """``--format triton``: a Triton model repository in ``out`` from an exported graph or engine (copied), or
    from a checkpoint (``export_graph(path)`` writes the ONNX graph into a temporary folder, then it is moved)."""
    from .triton_repo import check_version_free, write_model_repository

    if out is None:
        raise UserError("--format triton writes a model repository: give its folder with --out REPO")
    if Path(out).suffix.lower() in (".onnx", ".engine", ".plan", ".trt"):
        raise UserError(f"--out {out} looks like a file, but --format triton writes a model repository folder")
    check_version_free(out, options)
    if Path(source).is_file():
        return write_model_repository(source, out, options)
    Path(out).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".aaclip-triton-", dir=out) as tmp:
        graph = export_graph(Path(tmp) / "model.onnx")
        return write_model_repository(graph, out, options, move=True)


def engine_from_onnx(onnx_path: Path, out: Optional[Path], options: "EngineOptions") -> Path:
    """Build an engine from an exported graph + manifest; needs TensorRT, not PyTorch (e.g. on a Jetson)."""
    from aaclip.contract.manifest import check_artifact, load_manifest

    from .engine import build_engine_artifact, load_flavour, parse_batch

    flavour, workspace_mb = options.flavour, options.workspace_mb
    profile = parse_batch(options.batch)
    _check_suffix(out, "engine")
    load_flavour(flavour)
    manifest = load_manifest(onnx_path)
    check_artifact(manifest)
    if manifest.artifact_format != "onnx":
        raise UserError(f"{onnx_path} is a {manifest.artifact_format} artifact: give an exported .onnx graph")
    engine_path = Path(out) if out is not None else Path(onnx_path).with_suffix(".engine")
    command = shlex.join(["aaclip-export", str(onnx_path), "--format", "engine", "--out", str(engine_path),
                          "--engine-batch", ":".join(map(str, profile)), "--trt-flavour", flavour,
                          "--workspace-mb", str(workspace_mb)])
    build_engine_artifact(onnx_path, engine_path, options, command)
    return engine_path


def export_command(ckpt: Path, out: Optional[Path], fmt: str, options: "ExportOptions",
                   engine: "EngineOptions") -> Path:
    """Export one artifact (for ``engine``: write or reuse the ONNX graph first); returns its path."""
    from .onnx_export import check_opset, check_precision, default_output, export_onnx, rebuild_command, resolve_classes

    check_opset(options.opset)
    check_precision(options.precision)
    precision, input_hw, opset = options.precision, options.input_size, options.opset
    flavour, workspace_mb = engine.flavour, engine.workspace_mb
    _check_suffix(out, fmt)
    if fmt == "onnx":
        return export_onnx(ckpt, out, options).path

    from aaclip.train.checkpoint import checkpoint_config, checkpoint_sha256

    from .engine import build_engine_artifact, load_flavour, parse_batch, reusable_onnx

    profile = parse_batch(engine.batch)
    load_flavour(flavour)  # fail before the (slow) ONNX export when the flavour is missing
    engine_path = Path(out) if out is not None else default_output(ckpt, precision, input_hw, ".engine")
    onnx_path = engine_path.with_suffix(".onnx")
    config = checkpoint_config(ckpt)
    table = resolve_classes(config.classes, options.classes)
    size = int(config.image_size)
    hw = input_hw or (size, size)
    if reusable_onnx(onnx_path, checkpoint_sha256(ckpt), precision, [n for n, _ in table], hw, opset):
        log.info("reusing %s", onnx_path)
    else:
        export_onnx(ckpt, onnx_path, options)  # loads the model and frees it before tracing
    extra = ["--engine-batch", ":".join(map(str, profile)), "--trt-flavour", flavour, "--workspace-mb",
             str(workspace_mb)]
    command = rebuild_command(ckpt, engine_path, "engine", options, extra)
    return build_engine_artifact(onnx_path, engine_path, engine, command)


def verify_command(artifact: Path, ckpt: Optional[Path], options: "VerifyOptions", limits: dict) -> bool:
    """``--verify``: the parity report against PyTorch on each backend of ``deployment_backends`` (``limits``
    override the precision's tolerances); the manifest records every result (``parity``)."""
    import dataclasses

    from aaclip.contract.manifest import load_manifest, record_parity

    from .verify import TOLERANCES, parity_record, verify_on_backends

    precision = load_manifest(artifact).precision
    tol = TOLERANCES.get(precision, TOLERANCES["fp16"]).replace(**limits)
    reports = verify_on_backends(artifact, ckpt, dataclasses.replace(options, tolerances=tol))
    for report in reports:
        click.echo(f"{artifact} ({precision}, {report.backend} backend) vs PyTorch:")
        for line in report.lines():
            click.echo(f"  {line}")
    try:
        record_parity(artifact, [parity_record(r, precision) for r in reports])
    except OSError as exc:
        log.warning("could not record the parity results in %s's manifest (%s); the runtime will warn that this "
                    "artifact was never verified", Path(artifact).name, exc.strerror or exc)
    return all(r.passed for r in reports)


@renamed_options(batch="engine-batch")
@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.argument("ckpt", metavar="CKPT|MODEL.onnx", required=False, type=click.Path(path_type=Path))
@click.option("--out", "-o", type=click.Path(path_type=Path),
              help="Artifact path [default: CKPT/aaclip-<precision>[-HxW].onnx|.engine]; --format triton: the "
                   "model repository folder.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="onnx", show_default=True,
              help="onnx: portable graph (ONNX Runtime, TensorRT parser). engine: TensorRT engine built from it. "
                   "triton: a Triton model repository from CKPT, MODEL.onnx or MODEL.engine.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]),
              help="fp16: FP16 transformer compute, FP32 LayerNorm/softmax/normalizations/post-processing "
                   "[default: fp32].")
@click.option("--classes", help="Comma-separated classes to fold in [default: all in the checkpoint]. "
                                "Several classes add a class_id input.")
@click.option("--input-size", help="Camera resolution HxW (e.g. 1080x1920): the graph resizes (PIL bicubic) "
                                   "inside [default: model resolution].")
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset, 17..20 (TensorRT 10.3: <= 20).")
@click.option("--engine-batch", "batch", default="1:4:8", show_default=True,
              help="Engine batch profile MIN:OPT:MAX; --format triton from ONNX: max_batch_size MAX, preferred "
                   "batch sizes OPT and MAX.")
@click.option("--workspace-mb", type=click.IntRange(min=16), default=2048, show_default=True,
              help="TensorRT builder workspace limit.")
@click.option("--timing-cache", type=click.Path(dir_okay=False, path_type=Path),
              help="Persistent TensorRT timing cache file (read if present, updated after the build).")
@click.option("--trt-flavour", "flavour", type=click.Choice(["tensorrt", "tensorrt-rtx"]), default="tensorrt",
              show_default=True,
              help="tensorrt: build on the target GPU (Jetson). tensorrt-rtx: ahead-of-time, no GPU.")
@click.option("--clip-weights", type=click.Path(dir_okay=False, path_type=Path),
              help="CLIP weights file, when not where the checkpoint's config says.")
@click.option("--method", metavar="NAME",
              help="Model family the checkpoint must be (it is read from the checkpoint; this only checks it).")
@click.option("--discard-calibration", is_flag=True,
              help="Replace a calibrated artifact even though the new one computes other outputs (its thresholds are "
                   "then lost: recalibrate). Without it such a re-export is refused; an identical one keeps them.")
@click.option("--external-data/--no-external-data", default=None,
              help="Store tensors in <out>.data beside the graph [default: only when larger than 1.8 GB].")
@click.option("--model-name", default="aaclip", show_default=True, help="(triton) the served model's name.")
@click.option("--model-version", type=int, default=1, show_default=True, help="(triton) version folder.")
@click.option("--max-queue-delay-us", type=int, default=1000, show_default=True,
              help="(triton) how long the dynamic batcher waits to fill a batch, in microseconds.")
@click.option("--instances", type=int, default=1, show_default=True,
              help="(triton) model instances per device (instance_group count).")
@click.option("--instance-kind", type=click.Choice(["gpu", "cpu"]), default="gpu", show_default=True,
              help="(triton) KIND_GPU or KIND_CPU instances (ONNX only for cpu).")
@click.option("--gpus", default=None, metavar="0,1", help="(triton) GPUs of the instance group [default: all].")
@click.option("--tensorrt-accelerator", type=click.Choice(["fp32", "fp16"]), default=None,
              help="(triton, ONNX) run the graph through ONNX Runtime's TensorRT execution accelerator.")
@click.option("--verify", "verify", type=click.Path(path_type=Path), metavar="ARTIFACT",
              help="Parity gate: run ARTIFACT and the PyTorch model on the same frames, exit 1 beyond tolerances.")
@click.option("--checkpoint", "verify_ckpt", type=click.Path(path_type=Path),
              help="(--verify) checkpoint [default: the CKPT argument, else the one in the manifest].")
@click.option("--images", type=click.Path(path_type=Path),
              help="(--verify) folder of images (DIR/<class>/x.png picks the class) [default: synthetic frames].")
@click.option("--frames", type=click.IntRange(min=1), default=8, show_default=True, help="(--verify) number of frames.")
@click.option("--map-tol", type=FiniteFloat(min=0.0),
              help="(--verify) max map error relative to the map range [fp32 1e-4, fp16 1e-2].")
@click.option("--score-tol", type=FiniteFloat(min=0.0), help="(--verify) max cls_score error [fp32 1e-4, fp16 5e-3].")
@click.option("--min-corr", type=FiniteFloat(min=-1.0, max=1.0), help="(--verify) min per-image map correlation [fp32 0.99999, fp16 0.999].")
@click.option("--min-iou", type=FiniteFloat(min=0.0, max=1.0), help="(--verify) min IoU of the top-1% pixels [fp32 0.9, fp16 0.8].")
@backend_option("(--verify) auto: verify on what auto deploys on here, plus onnxruntime as the reference; a name: on "
                "that backend only (openvino runs graphs in FP32). ")
@click.option("-v", "--verbose", count=True, help="More log output.")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors.")
def cli(ckpt, out, fmt, precision, classes, input_size, opset, batch, workspace_mb, timing_cache, flavour,
        clip_weights, method, discard_calibration, external_data, model_name, model_version, max_queue_delay_us,
        instances, instance_kind, gpus, tensorrt_accelerator, verify, verify_ckpt, images, frames, map_tol, score_tol,
        min_corr, min_iou, backend, verbose, quiet):
    """Export a checkpoint CKPT (any model family) to a deployable ONNX graph or TensorRT engine (+ manifest),
    build an engine from an exported MODEL.onnx (--format engine; needs TensorRT, not PyTorch), or check
    an exported ARTIFACT against PyTorch with --verify. See docs/export.md."""
    setup_logging(verbose, quiet)
    from .engine import EngineOptions

    engine = EngineOptions(batch=batch, workspace_mb=workspace_mb, timing_cache=timing_cache, flavour=flavour,
                           discard_calibration=discard_calibration)
    if verify is not None:
        check_method(verify, method)
        from .verify import VerifyOptions

        ok = verify_command(verify, verify_ckpt or ckpt, VerifyOptions(images=images, frames=frames,
                                                                        clip_weights=clip_weights, backend=backend),
                            dict(map_rel=map_tol, score_abs=score_tol, min_corr=min_corr, min_iou=min_iou))
        sys.exit(0 if ok else 1)
    if ckpt is None:
        raise UserError("give a checkpoint directory to export (aaclip-export CKPT) or --verify ARTIFACT")
    if ckpt.exists():
        check_method(ckpt, method)
    fixed = [name for name, value in (("--precision", precision), ("--classes", classes),
                                      ("--input-size", input_size), ("--clip-weights", clip_weights)) if value]
    if fmt == "triton":
        from .engine import parse_batch
        from .triton_repo import TritonRepoOptions

        if ckpt.is_file() and fixed:
            raise UserError(f"{', '.join(fixed)} cannot change an exported artifact: re-export from the checkpoint")
        _, opt, top = parse_batch(batch)
        options = TritonRepoOptions(
            model_name=model_name, version=model_version, max_batch=top, preferred_batches=tuple(sorted({opt, top})),
            max_queue_delay_us=max_queue_delay_us, instances=instances, instance_kind=instance_kind,
            gpus=_gpu_list(gpus), tensorrt_accelerator=tensorrt_accelerator)

        def export_graph(graph: Path) -> Path:
            from .onnx_export import ExportOptions, check_opset, export_onnx, parse_input_size, rebuild_command

            check_opset(opset)
            graph_options = ExportOptions(precision=precision or "fp32", classes=_split_classes(classes),
                                          input_size=parse_input_size(input_size), opset=opset,
                                          external_data=external_data, clip_weights=clip_weights)
            command = rebuild_command(ckpt, out, "triton", graph_options,
                                      ["--engine-batch", batch, "--model-name", model_name])
            return export_onnx(ckpt, graph, graph_options, rebuild=command).path

        path = triton_repository(ckpt, out, options, export_graph)
        click.echo(str(path))
        log.info("next: aaclip-serve %s, or NVIDIA's Triton container (docs/deploy-triton.md)",
                 shlex.quote(str(path)))
        return
    if ckpt.is_file() and ckpt.suffix == ".onnx":
        if fmt != "engine":
            raise UserError(f"{ckpt} is already an ONNX graph: add --format engine to build a TensorRT engine from it")
        if fixed:
            raise UserError(f"{', '.join(fixed)} cannot change an exported graph: re-export from the checkpoint")
        path = engine_from_onnx(ckpt, out, engine)
    else:
        from .onnx_export import ExportOptions, parse_input_size

        options = ExportOptions(precision=precision or "fp32", classes=_split_classes(classes),
                                input_size=parse_input_size(input_size), opset=opset, external_data=external_data,
                                clip_weights=clip_weights, discard_calibration=discard_calibration)
        path = export_command(ckpt, out, fmt, options, engine)
    click.echo(str(path))
    log.info("next: aaclip-export --verify %s", shlex.quote(str(path)))


def _gpu_list(text: Optional[str]) -> tuple[int, ...]:
    if not text:
        return ()
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError:
        raise UserError(f"--gpus {text!r}: give GPU indices separated by commas, e.g. 0,1") from None


def main(argv: Optional[list[str]] = None) -> None:
    """Console entry point (errors: see aaclip.contract.cli.Command)."""
    cli.main(args=argv)


if __name__ == "__main__":
    main()
