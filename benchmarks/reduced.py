"""Reduced-precision artifacts the benchmark makes itself: ``--precisions int8`` without ``--int8`` runs the
accuracy search of ``aaclip-calibrate int8`` on the run's FP32 graph, ``bf16`` (OpenVINO, CPUs with BF16) that of
``aaclip-calibrate bf16``; both on synthetic normal products (``inputs.synthetic_pairs``), with ``--time-budget``.

The plan is measured as found: a plan whose gate fails is still timed (``force``) and its row says ``gate FAIL``,
so the table shows what the accuracy costs, not only what passed.
"""
from __future__ import annotations

import logging
from pathlib import Path

from aaclip.contract.manifest import load_manifest

from .models import Artifact, external_artifact

log = logging.getLogger(__name__)

CALIBRATION_FRAMES = 32   # synthetic normal products read (every 4th held out for the gate)
HOLDOUT = 16              # synthetic products (and as many with defects) added to the gate's held-out set


def synthetic_normals(manifest, n: int, seed: int):
    """A ``FrameInput`` of ``n`` synthetic normal products at the artifact's size."""
    from aaclip.calibration.inputs import FrameInput, synthetic_pairs

    normals, _ = synthetic_pairs(manifest, n, seed)
    return FrameInput(f"{n} synthetic products (aaclip-bench)", lambda: iter(normals), n)


def _summary(search, units, passed: bool, low_name: str) -> str:
    return f"{len(search.low)}/{len(units)} units {low_name}, gate {'pass' if passed else 'FAIL'}"


def searched_int8(fp32: Artifact, out_dir: Path, budget_s: float, seed: int, plans: dict) -> Artifact:
    """The INT8 graph of the accuracy search on ``fp32`` (``aaclip-calibrate int8``'s), written to ``out_dir``."""
    from aaclip.calibration.int8 import Int8Options, quantize_artifact

    out = Path(out_dir) / "aaclip-int8.onnx"
    manifest = load_manifest(fp32.path)
    log.info("INT8 accuracy search on %s (time budget %.0f s)", fp32.path.name, budget_s)
    result = quantize_artifact(fp32.path, synthetic_normals(manifest, CALIBRATION_FRAMES, seed), None, Int8Options(
        out=out, max_frames=CALIBRATION_FRAMES, holdout=HOLDOUT, force=True, batch=1, seed=seed, budget_s=budget_s,
        discard_calibration=True, rebuild_command=f"aaclip-bench --precisions int8 (search on {fp32.path.name})"))
    plans["int8"] = {"summary": _summary(result.search, result.units, result.gate.passed, "INT8"),
                     "map_err": result.gate.map_err, "passed": result.gate.passed, "backend": None,
                     "plan": result.search.to_dict(), "speedup_on_gate": (result.speedup or {}).get("speedup")}
    return external_artifact(out, "int8")


def searched_bf16(fp32: Artifact, cache_dir: Path, budget_s: float, seed: int, plans: dict) -> dict:
    """The mixed-BF16 plan of the accuracy search on ``fp32`` (recorded in its manifest); returns the record."""
    from aaclip.calibration.bf16 import PrecisionGateOptions, gate_precision
    from aaclip.runtime.backends import RunnerOptions

    manifest = load_manifest(fp32.path)
    log.info("BF16 accuracy search on %s (time budget %.0f s)", fp32.path.name, budget_s)
    result = gate_precision(fp32.path, synthetic_normals(manifest, CALIBRATION_FRAMES, seed), None, PrecisionGateOptions(
        max_frames=CALIBRATION_FRAMES, holdout=HOLDOUT, force=True, seed=seed, budget_s=budget_s,
        runner=RunnerOptions(device="cpu", extra={"cache_dir": str(cache_dir)})))
    plans["bf16"] = {"summary": _summary(result.search, result.units, result.gate.passed, "BF16"),
                     "map_err": result.gate.map_err, "passed": result.gate.passed, "backend": "openvino",
                     "plan": result.search.to_dict(), "speedup_on_gate": (result.speedup or {}).get("speedup")}
    return result.record


__all__ = ["searched_int8", "searched_bf16", "synthetic_normals", "CALIBRATION_FRAMES", "HOLDOUT"]
