"""``aaclip-calibrate bf16``: OpenVINO's mixed BF16 on an FP32 graph, allowed only behind the accuracy gate.

Nothing is fitted: the FP32 graph runs on normal frames (and anomalies: labelled ones, else synthetic
defects on the same frames, plus synthetic products) once in FP32 and once in mixed BF16 on the same
backend and device, and ``gate.evaluate_gate`` compares the two with the same limits as INT8. When the
gate passes (or ``force``), the manifest gets a record under ``precision_gates["openvino-bf16"]`` (the
artifact's sha256, the metrics, limits, device, OpenVINO version); the openvino backend runs BF16 only
on an artifact whose manifest holds a passed (or forced) record for its own hash.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import Manifest, check_artifact, load_manifest, write_manifest
from aaclip.contract.score import image_score
from aaclip.runtime.backends import RunnerOptions, open_runner

from .gate import GateLimits, GateReport, evaluate_gate
from .inference import Collect, FrameOutputs, run_items
from .inputs import FrameInput, Item
from .int8 import _collect, holdout_set

log = logging.getLogger(__name__)

BACKEND = "openvino"
DEFAULT_FRAMES = 32
DEFAULT_HOLDOUT = 16


@dataclass(frozen=True)
class PrecisionGateOptions:
    """``aaclip-calibrate bf16``'s settings (defaults in docs/calibration.md)."""

    precision: str = "bf16"
    max_frames: int = DEFAULT_FRAMES     # normal frames read (all of them are test frames: nothing is fitted)
    holdout: int = DEFAULT_HOLDOUT       # synthetic products (and as many defective) added
    limits: GateLimits = GateLimits()
    force: bool = False                  # record the mode even when the gate fails (marked forced)
    batch: int = 1
    seed: int = 0
    runner: RunnerOptions = RunnerOptions()  # device, threads, cache of the backend that will run the line


@dataclass
class PrecisionGateResult:
    gate: GateReport
    written: bool
    record: dict
    manifest: Optional[Path]


def _run(manifest: Manifest, items: Sequence[Item], precision: str,
         o: PrecisionGateOptions) -> tuple[FrameOutputs, Optional[dict]]:
    """Outputs of every item in ``precision`` (ungated: this is the gate), and the layers per runtime precision."""
    extra = {**o.runner.extra, "precision": precision, "ungated": True}
    runner = open_runner(manifest, BACKEND, dataclasses.replace(o.runner, extra=extra))
    with runner:
        out = run_items(runner, manifest, items, Collect(o.batch, keep_maps=True))
        return out, getattr(runner, "execution_precision", None)


def gate_precision(artifact: Path, normals: FrameInput, anomalies: Optional[FrameInput] = None,
                   options: PrecisionGateOptions = PrecisionGateOptions()) -> PrecisionGateResult:
    """Compare ``options.precision`` with FP32 on OpenVINO; record the gate in the manifest when it passes."""
    from aaclip.runtime.backends.openvino import import_openvino

    o = options
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    check_artifact(manifest)
    if manifest.artifact_format != "onnx":
        raise UserError(f"{artifact.name} is not an ONNX graph; OpenVINO's {o.precision} runs the exported .onnx")
    if manifest.precision != "fp32":
        raise UserError(f"{artifact.name} has precision {manifest.precision!r}; the {o.precision} gate compares with "
                        "FP32 and starts from the FP32 export (aaclip-export CKPT --precision fp32)")
    items = _collect(normals, manifest, o.max_frames)
    if not items and not o.holdout:
        raise UserError(f"no frames read from {normals.description}")
    test_items, labels, desc = holdout_set(manifest, items, anomalies, o.holdout, o.seed,
                                           max(o.holdout, len(items)) * 4)
    log.info("accuracy gate for %s: %d frames in fp32 and %s (%s)", o.precision, len(test_items), o.precision, desc)
    ref, _ = _run(manifest, test_items, "fp32", o)
    test, layers = _run(manifest, test_items, o.precision, o)
    p = manifest.score
    report = evaluate_gate(ref.maps, test.maps, image_score(ref.map_max, ref.cls_score, p).astype(np.float64),
                           image_score(test.map_max, test.cls_score, p).astype(np.float64), labels, o.limits)
    record = {
        "backend": BACKEND, "precision": o.precision, "artifact_sha256": manifest.sha256,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "passed": report.passed, "forced": bool(o.force and not report.passed),
        "device": o.runner.device, "openvino": import_openvino().__version__, "runtime_precisions": layers,
        "input": normals.description, "holdout": desc, "gate": report.to_dict(),
    }
    if not (report.passed or o.force):
        return PrecisionGateResult(report, False, record, None)
    data = copy.deepcopy(manifest.data)
    gates = dict(data.get("precision_gates") or {})
    gates[f"{BACKEND}-{o.precision}"] = record
    data["precision_gates"] = gates
    path = write_manifest(artifact, data)
    if manifest.calibrated:
        log.warning("the score constants were fitted on FP32 outputs; %s shifts raw outputs slightly: run "
                    "aaclip-calibrate threshold %s --backend openvino --precision %s", o.precision, artifact,
                    o.precision)
    return PrecisionGateResult(report, True, record, path)


__all__ = ["PrecisionGateOptions", "PrecisionGateResult", "gate_precision"]
