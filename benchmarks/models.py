"""The model under test: a checkpoint directory, a tiny random one, or the real architecture with random
weights (``NAME@SIZE``, no download), and the artifacts exported from it.

Random weights time exactly like trained ones (same shapes, same operations); they are for throughput
and latency only, never for accuracy.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from aaclip.contract.errors import UserError
from aaclip.contract.manifest import DEFAULT_METHOD, load_manifest

log = logging.getLogger(__name__)

TINY_BACKBONE = "aaclip-tiny"
TINY_SIZE = 64
BENCH_CLASSES = {"disk": "metal disk"}  # one class: the single-class graph (no class_id input)


def parse_shape(text: str) -> tuple[str, int]:
    """``"ViT-L-14-336@518"`` -> ("ViT-L-14-336", 518)."""
    name, sep, size = str(text).partition("@")
    try:
        value = int(size)
    except ValueError:
        value = 0
    if not sep or not name or value < 1:
        raise UserError(f"--shape {text!r} is not NAME@SIZE (an OpenCLIP model name and the image size, "
                        "e.g. ViT-L-14-336@518)")
    return name, value


def describe_checkpoint(ckpt: Path) -> str:
    """A short description: ``NAME@SIZE (random weights[, method])`` for a random checkpoint."""
    from aaclip.train.checkpoint import checkpoint_config

    config = checkpoint_config(ckpt)
    b = config.backbone
    if b.init_seed is None or b.weights is not None or b.pretrained is not None:
        return f"checkpoint {ckpt}" + ("" if config.method == DEFAULT_METHOD else f" ({config.method})")
    method = "" if config.method == DEFAULT_METHOD else f", {config.method}"
    return f"{b.name}@{config.image_size} (random weights{method})"


def prepare_checkpoint(ckpt: Optional[Path], tiny: bool, shape: Optional[str], work_dir: Path,
                       seed: int = 0, method: str = DEFAULT_METHOD) -> tuple[Path, str]:
    """(checkpoint directory, a short description) for exactly one of ``ckpt`` / ``tiny`` / ``shape``;
    the random checkpoints of ``tiny`` / ``shape`` are of family ``method``."""
    given = [n for n, v in (("--checkpoint", ckpt), ("--tiny", tiny), ("--shape", shape)) if v]
    if len(given) != 1:
        raise UserError("choose the model with exactly one of --checkpoint DIR, --tiny or --shape NAME@SIZE"
                        + (f" (got {', '.join(given)})" if given else ""))
    if ckpt:
        if not Path(ckpt).is_dir():
            raise UserError(f"checkpoint directory not found: {ckpt}")
        return Path(ckpt), describe_checkpoint(Path(ckpt))
    from aaclip.train.checkpoint import random_checkpoint

    name, size = (TINY_BACKBONE, TINY_SIZE) if tiny else parse_shape(shape)
    if not tiny:
        log.info("building %s at %d px with random weights (no download)", name, size)
    # CLIP weights not written: the config records init_seed and loading re-creates them
    path = random_checkpoint(Path(work_dir) / "ckpt", method=method, backbone=name, image_size=size,
                             classes=dict(BENCH_CLASSES), seed=seed, weights_file=None)
    return path, describe_checkpoint(path)


@dataclass(frozen=True)
class Artifact:
    path: Path
    precision: str
    size_bytes: int  # graph (or engine) plus external data

    @property
    def size_mb(self) -> float:
        return self.size_bytes / 1e6


def artifact_size(path: Path) -> int:
    """Bytes of an artifact including its external data files (from the manifest)."""
    path = Path(path)
    total = path.stat().st_size
    try:
        external = load_manifest(path).data.get("artifact", {}).get("external_data") or []
    except UserError:
        external = []
    return total + sum((path.parent / name).stat().st_size for name in external if (path.parent / name).is_file())


def export_graph(ckpt: Path, model, precision: str, out_dir: Path, class_name: str) -> Artifact:
    """Export the single-class ONNX graph of ``precision`` into ``out_dir`` (reused when already there and
    intact); one class keeps the benchmark's inputs to the frames alone (no ``class_id``)."""
    from aaclip.export.engine import reusable_onnx
    from aaclip.export.onnx_export import DEFAULT_OPSET, export_onnx
    from aaclip.train.checkpoint import checkpoint_sha256

    out = Path(out_dir) / f"aaclip-{precision}.onnx"
    size = int(model.config.image_size)
    if not reusable_onnx(out, checkpoint_sha256(ckpt), precision, [class_name], (size, size), DEFAULT_OPSET):
        export_onnx(ckpt, out, precision=precision, classes=[class_name], model=model)
    return Artifact(out, precision, artifact_size(out))


def external_artifact(path: Path, precision: str) -> Artifact:
    """An artifact given on the command line (an INT8 graph, an engine): it must have its manifest."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path} does not exist")
    load_manifest(path)  # refuses a missing or invalid manifest with the reason
    return Artifact(path, precision, artifact_size(path))


def build_engine_for(onnx: Artifact, batches: tuple[int, int, int], out_dir: Path) -> Artifact:
    """A TensorRT engine (+ manifest) from an exported graph, for the GPU this runs on."""
    from aaclip.export.engine import EngineOptions, build_engine_artifact

    engine = Path(out_dir) / f"{onnx.path.stem}.engine"
    options = EngineOptions(batch=batches, timing_cache=Path(out_dir) / "timing.cache", discard_calibration=True)
    build_engine_artifact(onnx.path, engine, options, f"aaclip-bench (engine built from {onnx.path.name})")
    return Artifact(engine, onnx.precision, artifact_size(engine))


__all__ = ["parse_shape", "describe_checkpoint", "prepare_checkpoint", "Artifact", "artifact_size", "export_graph",
           "external_artifact", "build_engine_for", "TINY_BACKBONE", "TINY_SIZE", "BENCH_CLASSES"]
