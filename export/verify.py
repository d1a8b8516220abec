"""Parity gate: run an artifact and the PyTorch model on the same frames and compare (Polygraphy-style).

Both runners come from the backend registry: the reference is the ``pytorch`` backend
(``aaclip.export.reference``: the checkpoint's ``predict`` per class, on the training pre-processing), the
artifact runs on the backends ``deployment_backends`` names: what ``--backend auto`` deploys a graph on
here (OpenVINO on an Intel CPU) plus ONNX Runtime (CPU) as the reference, or TensorRT for an engine
(needs a GPU); ``aaclip-export --verify`` records each result in the manifest (``parity``).
``compare_outputs`` is the comparator: maps are compared
relative to the reference map range (AA-CLIP maps span tens of units, see SPEC section 5), scores in
absolute terms, plus the per-image map correlation and the IoU of the top-1% pixels.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.feeds import fit_frame
from aaclip.contract.files import image_files
from aaclip.contract.images import ImageError, SkippedImages, read_image
from aaclip.contract.manifest import Manifest, open_artifact
from aaclip.contract.tensors import OUTPUT_NAMES
from aaclip.runtime.backends import AUTO, RunnerOptions, open_runner, resolve_backend
from aaclip.runtime.backends.base import Runner, infer_frames

from .reference import REFERENCE_BACKEND

log = logging.getLogger(__name__)

TOP_FRACTION = 0.01  # the "top pixels" of a map: its highest 1%


@dataclass(frozen=True)
class Tolerances:
    """Limits of the parity gate (defaults per precision in ``TOLERANCES``, documented in docs/export.md)."""

    map_rel: float  # max |map - ref| / (max(ref) - min(ref)), also for map_max
    score_abs: float  # max |cls_score - ref|
    min_corr: float  # smallest per-image Pearson correlation of the maps
    min_iou: float  # smallest per-image IoU of the top-1% pixels

    def replace(self, **changes: Optional[float]) -> "Tolerances":
        values = asdict(self)
        values.update({k: float(v) for k, v in changes.items() if v is not None})
        return Tolerances(**values)


TOLERANCES = {
    "fp32": Tolerances(map_rel=1e-4, score_abs=1e-4, min_corr=0.99999, min_iou=0.9),
    "fp16": Tolerances(map_rel=1e-2, score_abs=5e-3, min_corr=0.999, min_iou=0.8),
}


@dataclass
class ParityReport:
    """What the comparator measured, and which limits were broken (empty ``failures``: passed)."""

    frames: int
    map_max_abs: float
    map_mean_abs: float
    map_range: float
    map_rel: float
    map_max_rel: float
    cls_max_abs: float
    cls_mean_abs: float
    map_corr_min: float
    top_iou_min: float
    tolerances: Tolerances
    failures: list[str] = field(default_factory=list)
    backend: str = ""  # the backend the artifact ran on

    @property
    def passed(self) -> bool:
        return not self.failures

    def lines(self) -> list[str]:
        t = self.tolerances
        rows = [
            ("frames", f"{self.frames}", ""),
            ("anomaly_map max |err|", f"{self.map_max_abs:.3g}", f"(map range {self.map_range:.4g})"),
            ("anomaly_map mean |err|", f"{self.map_mean_abs:.3g}", ""),
            ("anomaly_map max |err| / range", f"{self.map_rel:.3g}", f"<= {t.map_rel:g}"),
            ("map_max max |err| / range", f"{self.map_max_rel:.3g}", f"<= {t.map_rel:g}"),
            ("cls_score max |err|", f"{self.cls_max_abs:.3g}", f"<= {t.score_abs:g}"),
            ("cls_score mean |err|", f"{self.cls_mean_abs:.3g}", ""),
            ("map correlation (min)", f"{self.map_corr_min:.6f}", f">= {t.min_corr:g}"),
            ("top-1% pixel IoU (min)", f"{self.top_iou_min:.4f}", f">= {t.min_iou:g}"),
        ]
        out = [f"{name:<32}{value:>12}  {limit}".rstrip() for name, value, limit in rows]
        out.append("PASS" if self.passed else "FAIL: " + "; ".join(self.failures))
        return out


# ---- comparator ----------------------------------------------------------------------------------
def _corr(a: np.ndarray, b: np.ndarray) -> float:
    a = a.ravel().astype(np.float64)
    b = b.ravel().astype(np.float64)
    a = a - a.mean()
    b = b - b.mean()
    denom = np.sqrt((a * a).sum() * (b * b).sum())
    if denom == 0.0:
        return 1.0 if np.allclose(a, b) else 0.0
    return float((a * b).sum() / denom)


def top_iou(ref: np.ndarray, test: np.ndarray, fraction: float = TOP_FRACTION) -> float:
    """IoU of the ``fraction`` highest pixels of two maps of the same shape."""
    k = max(1, int(round(fraction * ref.size)))
    a = set(np.argpartition(ref.ravel(), -k)[-k:].tolist())
    b = set(np.argpartition(test.ravel(), -k)[-k:].tolist())
    return len(a & b) / len(a | b)


def compare_outputs(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray], tol: Tolerances) -> ParityReport:
    """Compare two output dicts (``anomaly_map`` (B,H,W), ``map_max`` (B,), ``cls_score`` (B,))."""
    for name in OUTPUT_NAMES:
        if np.shape(ref[name]) != np.shape(test[name]):
            raise ValueError(f"{name}: reference shape {np.shape(ref[name])} != artifact shape {np.shape(test[name])}")
    rm = np.asarray(ref["anomaly_map"], np.float64)
    tm = np.asarray(test["anomaly_map"], np.float64)
    diff = np.abs(rm - tm)
    span = float(rm.max() - rm.min()) or 1.0
    mmax = np.abs(np.asarray(ref["map_max"], np.float64) - np.asarray(test["map_max"], np.float64))
    cls = np.abs(np.asarray(ref["cls_score"], np.float64) - np.asarray(test["cls_score"], np.float64))
    corr = min(_corr(r, t) for r, t in zip(rm, tm))
    iou = min(top_iou(r, t) for r, t in zip(rm, tm))
    report = ParityReport(
        frames=int(rm.shape[0]), map_max_abs=float(diff.max()), map_mean_abs=float(diff.mean()), map_range=span,
        map_rel=float(diff.max()) / span, map_max_rel=float(mmax.max()) / span, cls_max_abs=float(cls.max()),
        cls_mean_abs=float(cls.mean()), map_corr_min=corr, top_iou_min=iou, tolerances=tol,
    )
    checks = [
        (report.map_rel <= tol.map_rel, f"anomaly_map error {report.map_rel:.3g} of the range > {tol.map_rel:g}"),
        (report.map_max_rel <= tol.map_rel, f"map_max error {report.map_max_rel:.3g} of the range > {tol.map_rel:g}"),
        (report.cls_max_abs <= tol.score_abs, f"cls_score error {report.cls_max_abs:.3g} > {tol.score_abs:g}"),
        (report.map_corr_min >= tol.min_corr, f"map correlation {report.map_corr_min:.6f} < {tol.min_corr:g}"),
        (report.top_iou_min >= tol.min_iou, f"top-1% IoU {report.top_iou_min:.3f} < {tol.min_iou:g}"),
    ]
    report.failures = [msg for ok, msg in checks if not ok]
    return report


# ---- runners -------------------------------------------------------------------------------------
def deployment_backends(manifest: Manifest, backend: Optional[str] = None) -> list[str]:
    """The backends ``--verify`` checks: a named one alone; for ``auto`` (or None) a graph on what ``auto``
    deploys it on here plus ``onnxruntime`` (the reference backend; once when they are the same), an engine
    on ``tensorrt``."""
    if backend not in (None, AUTO):
        return [backend]
    if manifest.is_engine:
        return ["tensorrt"]
    deployed = resolve_backend(manifest, AUTO)
    return [deployed] if deployed == "onnxruntime" else [deployed, "onnxruntime"]


def artifact_runner(manifest: Manifest, backend: Optional[str] = None) -> Runner:
    """The runner the artifact is verified on: ``backend`` from the registry (OpenVINO in FP32: the parity
    gate is about the graph, reduced precision has its own gate), else the artifact's own backend: ONNX
    Runtime on the CPU for graphs, TensorRT for engines (which needs a GPU)."""
    if backend is not None and backend != "auto" and not manifest.is_engine:
        return open_runner(manifest, backend, RunnerOptions(device="cpu"))
    if manifest.is_engine:
        from .engine import gpu_info

        if gpu_info()[0] is None:
            raise UserError(f"verifying the TensorRT engine {manifest.artifact_path.name} needs an NVIDIA GPU and none "
                            "is visible; verify the ONNX graph it was built from on this machine "
                            "(aaclip-export --verify MODEL.onnx), and the engine on the device")
        return open_runner(manifest, "tensorrt")
    return open_runner(manifest, "onnxruntime", RunnerOptions(device="cpu"))


# ---- frames --------------------------------------------------------------------------------------
def _synthetic_frames(classes: Sequence[str], n: int, hw: tuple[int, int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.arange(n, dtype=np.int64) % len(classes)
    h, w = hw
    try:
        from aaclip.data import synth
    except ImportError:  # pragma: no cover - synth ships with aaclip.train
        synth = None
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):
        if synth is None:
            frames[i] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            continue
        name = classes[ids[i]] if classes[ids[i]] in synth.CLASSES else synth.CLASSES[i % len(synth.CLASSES)]
        img = synth.draw_product(name, rng, max(synth.MIN_IMAGE_SIZE, min(h, w)))
        if i % 2:
            img, _ = synth.add_defect(img, rng, class_name=name if name in synth.OBJECT_CLASSES else None)
        frames[i] = fit_frame(img, h, w)
    return frames, ids


def _folder_frames(folder: Path, classes: Sequence[str], n: int, hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:

    frames, ids = [], []
    skipped = SkippedImages(f"--images {folder}")
    for p in image_files(folder, recursive=True):
        if len(frames) == n:
            break
        try:
            img, _ = read_image(p)
        except ImageError as exc:
            skipped.skip(exc)
            continue
        frames.append(fit_frame(img, hw[0], hw[1]).copy())
        # DIR/<class>/image.png uses that class; other images take the classes in turn
        ids.append(classes.index(p.parent.name) if p.parent.name in classes else len(ids) % len(classes))
    skipped.report()
    if not frames:
        raise UserError(f"no usable image in {folder} ({len(skipped)} skipped)")
    return np.stack(frames), np.asarray(ids, np.int64)


def verification_frames(manifest: Manifest, images: Optional[Path] = None, n: int = 8,
                        seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(frames (N, H, W, 3) uint8 BGR at the artifact's input size, class ids (N,))."""
    hw = (manifest.height, manifest.width)
    if images is not None:
        return _folder_frames(images, manifest.classes, n, hw)
    return _synthetic_frames(manifest.classes, n, hw, seed)


# ---- the gate ------------------------------------------------------------------------------------
def _checkpoint_for(manifest: Manifest, ckpt: Optional[Path]) -> Path:
    from aaclip.train.checkpoint import checkpoint_sha256

    source = manifest.data.get("source") or {}
    path = Path(ckpt) if ckpt is not None else Path(source.get("checkpoint") or "")
    if ckpt is None and not path.is_dir():
        raise UserError(f"the checkpoint the artifact was exported from ({path}) is not here: pass --checkpoint "
                        "CKPT_DIR")
    if not path.is_dir():
        raise UserError(f"checkpoint directory not found: {path}")
    want = source.get("checkpoint_sha256")
    try:
        have = checkpoint_sha256(path)
    except OSError as exc:
        raise UserError(f"cannot hash checkpoint {path} ({exc}): is it a checkpoint directory?") from None
    if want and have != want:
        raise UserError(f"{manifest.artifact_path.name} was not exported from {path} (checkpoint sha256 {have[:12]}... "
                        f"!= {want[:12]}... in the manifest): pass the right --checkpoint")
    return path


@dataclass(frozen=True)
class VerifyOptions:
    """Which frames the gate runs (``images`` folder, else ``frames`` synthetic ones from ``seed``), in batches of
    ``batch``, against ``tolerances`` (default: the artifact precision's); ``clip_weights`` when they moved."""

    images: Optional[Path] = None
    frames: int = 8
    batch: Optional[int] = None
    tolerances: Optional[Tolerances] = None
    clip_weights: Optional[Path] = None
    seed: int = 0
    backend: Optional[str] = None  # registry name for graphs [default: onnxruntime on the CPU]


def verify_artifact(artifact: Path, ckpt: Optional[Path] = None, options: VerifyOptions = VerifyOptions(),
                    model=None) -> ParityReport:
    """Compare ``artifact`` with the PyTorch model of its checkpoint (or ``model``) on the same frames, on one
    backend (``options.backend``, default: ONNX Runtime on the CPU for graphs, TensorRT for engines)."""
    backend = options.backend if options.backend not in (None, AUTO) else None
    return verify_on_backends(artifact, ckpt, options, model, backends=[backend])[0]


def verify_on_backends(artifact: Path, ckpt: Optional[Path] = None, options: VerifyOptions = VerifyOptions(),
                       model=None, backends: Optional[Sequence[Optional[str]]] = None) -> list[ParityReport]:
    """One ``ParityReport`` per backend (default: ``deployment_backends``), the reference run once."""
    from aaclip.train.checkpoint import load_checkpoint

    manifest = open_artifact(artifact)
    if backends is None:
        backends = deployment_backends(manifest, options.backend)
    if model is None:
        model = load_checkpoint(_checkpoint_for(manifest, ckpt), clip_weights=options.clip_weights)
    tol = options.tolerances or TOLERANCES.get(manifest.precision, TOLERANCES["fp16"])
    batch = max(1, min(options.batch or 4, manifest.batch_max or 4))
    images_in, class_ids = verification_frames(manifest, options.images, options.frames, options.seed)
    with open_runner(manifest, REFERENCE_BACKEND, RunnerOptions(extra={"model": model})) as reference:
        ref = infer_frames(reference, manifest, images_in, class_ids, batch, OUTPUT_NAMES)
    reports = []
    for backend in backends:
        with artifact_runner(manifest, backend) as runner:
            out = infer_frames(runner, manifest, images_in, class_ids, batch, OUTPUT_NAMES)
            report = compare_outputs(ref, out, tol)
            report.backend = runner.name
        log.info("%s on %s: %s", Path(artifact).name, report.backend, "PASS" if report.passed else "FAIL")
        reports.append(report)
    return reports


def parity_record(report: ParityReport, precision: str) -> dict:
    """The manifest's ``parity`` entry of one report (``aaclip.contract.manifest.record_parity``)."""
    return {"backend": report.backend, "precision": precision, "passed": report.passed, "frames": report.frames,
            "map_rel": report.map_rel, "cls_max_abs": report.cls_max_abs, "map_corr_min": report.map_corr_min,
            "top_iou_min": report.top_iou_min, "tolerances": asdict(report.tolerances)}


__all__ = [
    "Tolerances",
    "TOLERANCES",
    "ParityReport",
    "compare_outputs",
    "top_iou",
    "artifact_runner",
    "deployment_backends",
    "parity_record",
    "verify_on_backends",
    "verification_frames",
    "verify_artifact",
    "VerifyOptions",
]
