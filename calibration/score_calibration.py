"""``aaclip-calibrate threshold``: normal frames -> normalization constants + thresholds in the manifest.

Frames go through the runtime's own backend (``open_runner``), resize (``fit_frame``) and batching
(``inference.run_items``), so the constants fit exactly what the deployed loop will compute. Only the
manifest is rewritten, atomically (temp file + rename); the artifact and its sha256 are untouched, and
the runtime uses the new constants with no further flag.
"""
from __future__ import annotations

import copy
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import Manifest, check_artifact, load_manifest, write_manifest
from aaclip.contract.score import ScoreParams, image_score
from aaclip.runtime.backends import RunnerOptions, open_runner

from . import thresholds
from .inference import Collect, FrameOutputs, run_items
from .inputs import FrameInput, SetHash

log = logging.getLogger(__name__)

DEFAULT_PIXEL_SAMPLES = 4096
"""Anomaly-map pixels kept per normal frame for the pixel threshold (uniform random, fixed seed)."""


@dataclass
class ThresholdResult:
    score: dict                         # the manifest's new "score" block
    normal_scores: np.ndarray           # image scores of the calibration frames (new constants)
    anomaly_scores: Optional[np.ndarray]
    evaluation: Optional[dict]          # thresholds.evaluate_threshold on labelled anomalies (information)
    manifest_path: Optional[Path]       # None for a dry run


def infer_input(manifest: Manifest, frames: FrameInput, backend: str, batch: int, pixel_samples: int = 0,
                hasher: Optional[SetHash] = None, runner_options: Optional[RunnerOptions] = None) -> FrameOutputs:
    """Raw outputs of every frame of ``frames`` through the runtime's backend for ``manifest`` (with the
    runtime's ``runner_options``: device, threads, OpenVINO's precision hint)."""
    log.info("running %s on %s (%s backend, batch %d)", manifest.artifact_path.name, frames.description, backend,
             batch)
    runner = open_runner(manifest, backend, runner_options)
    with runner:
        return run_items(runner, manifest, frames.items(), Collect(batch, pixel_samples=pixel_samples,
                                                                   on_item=hasher.update if hasher else None))


@dataclass(frozen=True)
class ThresholdOptions:
    """``aaclip-calibrate threshold``'s settings: false-alarm rates, backend and batch as the runtime will use
    them, pixel samples per frame, and ``dry_run`` (write nothing)."""

    far: float = thresholds.DEFAULT_FAR
    pixel_far: float = thresholds.DEFAULT_PIXEL_FAR
    backend: str = "auto"
    batch: int = 1
    pixel_samples: int = DEFAULT_PIXEL_SAMPLES
    dry_run: bool = False
    runner: RunnerOptions = RunnerOptions()  # device, threads, OpenVINO precision hint: as the runtime will run


def calibrate_artifact(artifact: Path, normals: FrameInput, anomalies: Optional[FrameInput] = None,
                       options: ThresholdOptions = ThresholdOptions()) -> ThresholdResult:
    """Calibrate ``artifact``'s score block on ``normals``; write it into the manifest unless ``dry_run``.

    ``anomalies`` (labelled defects) are scored for the report only; they never move the threshold.
    """
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    check_artifact(manifest)
    block, out = fit_score_block(manifest, normals, options)
    params = ScoreParams.from_block(block)
    normal_scores = image_score(out.map_max, out.cls_score, params).astype(np.float64)

    anomaly_scores, evaluation = None, None
    if anomalies is not None:
        bad = infer_input(manifest, anomalies, options.backend, options.batch, runner_options=options.runner)
        anomaly_scores = image_score(bad.map_max, bad.cls_score, params).astype(np.float64)
        evaluation = thresholds.evaluate_threshold(normal_scores, anomaly_scores, params.threshold)

    path = None
    if not options.dry_run:
        path = write_score_block(artifact, block)
    return ThresholdResult(block, normal_scores, anomaly_scores, evaluation, path)


def fit_score_block(manifest: Manifest, normals: FrameInput, options: ThresholdOptions) -> tuple[dict, FrameOutputs]:
    """The score block fitted on ``normals`` (with its calibration record) and their raw outputs."""
    hasher = SetHash()
    out = infer_input(manifest, normals, options.backend, options.batch, options.pixel_samples, hasher,
                      options.runner)
    if len(out) < 2:
        raise UserError(f"only {len(out)} normal frame(s) could be read from {normals.description}; "
                        "calibration needs many (thousands for a 0.001 false-alarm rate)")
    block = thresholds.calibrate(out.map_max, out.cls_score, manifest.score.map_weight, options.far,
                                 pixel_values=out.pixels, pixel_far=options.pixel_far)
    block["calibration"].update({
        "sha256": hasher.hexdigest(),
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "pixel_far": options.pixel_far if out.pixels is not None else None,
        "input": normals.description,
        "backend": options.backend,
        "batch": options.batch,
        "precision_hint": options.runner.extra.get("precision"),
    })
    return block, out


def write_score_block(artifact: Path, block: dict) -> Path:
    """Replace the manifest's ``score`` block atomically; the artifact must still match its recorded hash."""
    manifest = load_manifest(artifact)
    check_artifact(manifest)  # never bless a tampered artifact with new constants
    data = copy.deepcopy(manifest.data)
    data["score"] = block
    path = write_manifest(artifact, data)
    log.info("wrote the calibrated score block into %s", path)
    return path


def summary_lines(result: ThresholdResult) -> list[str]:
    """What the command prints: method, frame count, constants and (with anomalies) the information report."""
    s, c = result.score, result.score["calibration"]
    lines = [
        f"calibrated on {c['frames']} normal frames ({c['input']}), sha256 {c['sha256'][:16]}...",
        f"threshold {s['threshold']:.6g} by {c['method']} at far {c['far']:g} "
        f"({c['exceedances']} of {c['frames']} calibration frames at or above it)",
        f"pixel threshold {s['pixel_threshold']:.6g} by {c['pixel_method']}"
        + (f" at pixel far {c['pixel_far']:g}" if c.get("pixel_far") is not None else ""),
        f"normalization map [{s['map_lo']:.6g}, {s['map_hi']:.6g}], cls [{s['cls_lo']:.6g}, {s['cls_hi']:.6g}], "
        f"map_weight {s['map_weight']:g}",
    ]
    e = result.evaluation
    if e is not None:
        lines += [
            f"labelled check (information only, threshold unchanged): {e['n_anomaly']} anomalies vs the "
            f"{e['n_normal']} calibration frames",
            f"  AUROC {e['auroc']:.4f}, detection rate {e['detection_rate']:.3f} at the threshold "
            f"(F1 {e['f1']:.3f}); F1-optimal threshold {e['f1_optimal_threshold']:.6g} (F1 {e['f1_optimal']:.3f})",
        ]
    return lines
