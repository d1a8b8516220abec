"""Reduced-precision artifacts the benchmark makes itself: ``--precisions int8`` without ``--int8`` runs the
accuracy search of ``aaclip-calibrate int8`` on the run's FP32 graph, ``bf16`` (OpenVINO, CPUs with BF16) that of
``aaclip-calibrate bf16``; both on synthetic normal products (``inputs.synthetic_pairs``), with ``--time-budget``.

The plan is measured as found: a plan whose gate fails is still timed (``force``) and its row says ``gate FAIL``,
so the table shows what the accuracy costs, not only what passed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from aaclip.calibration.search import DEFAULT_SEARCH_FRAMES
from aaclip.contract.manifest import load_manifest

from .models import Artifact, external_artifact

log = logging.getLogger(__name__)

CALIBRATION_FRAMES = 32   # synthetic normal products read (every 4th held out for the gate)
HOLDOUT = 16              # synthetic products (and as many with defects) added to the gate's held-out set
BUDGET_S = 600.0          # the bench's --time-budget per reduced precision (aaclip-calibrate's is 1800 s)


@dataclass(frozen=True)
class SearchSettings:
    """How the benchmark runs the accuracy searches: ``aaclip-calibrate``'s ``--frames``, ``--holdout``,
    ``--search-frames`` and ``--time-budget`` (the bench's ``--calibration-frames``, ``--holdout``,
    ``--search-frames``, ``--time-budget``). A ViT-L at 518 px on a 2-core CPU takes seconds per frame and step, so
    its run gives fewer frames than these defaults (docs/benchmarks.md)."""

    budget_s: float = BUDGET_S
    frames: int = CALIBRATION_FRAMES
    holdout: int = HOLDOUT
    search_frames: int = DEFAULT_SEARCH_FRAMES
    seed: int = 0

    def record(self) -> dict:
        return {"time_budget_s": self.budget_s, "calibration_frames": self.frames, "holdout": self.holdout,
                "search_frames": self.search_frames}


def synthetic_normals(manifest, n: int, seed: int):
    """A ``FrameInput`` of ``n`` synthetic normal products at the artifact's size."""
    from aaclip.calibration.inputs import FrameInput, synthetic_pairs

    normals, _ = synthetic_pairs(manifest, n, seed)
    return FrameInput(f"{n} synthetic products (aaclip-bench)", lambda: iter(normals), n)


def _summary(search, units, passed: bool, low_name: str) -> str:
    return f"{len(search.low)}/{len(units)} units {low_name}, gate {'pass' if passed else 'FAIL'}"


def searched_int8(fp32: Artifact, out_dir: Path, settings: SearchSettings, plans: dict) -> Artifact:
    """The INT8 graph of the accuracy search on ``fp32`` (``aaclip-calibrate int8``'s), written to ``out_dir``."""
    from aaclip.calibration.int8 import Int8Options, quantize_artifact

    out = Path(out_dir) / "aaclip-int8.onnx"
    manifest = load_manifest(fp32.path)
    o = settings
    log.info("INT8 accuracy search on %s (time budget %.0f s)", fp32.path.name, o.budget_s)
    result = quantize_artifact(fp32.path, synthetic_normals(manifest, o.frames, o.seed), None, Int8Options(
        out=out, max_frames=o.frames, holdout=o.holdout, force=True, batch=1, seed=o.seed, budget_s=o.budget_s,
        search_frames=o.search_frames, discard_calibration=True,
        rebuild_command=f"aaclip-bench --precisions int8 (search on {fp32.path.name})"))
    plans["int8"] = {"summary": _summary(result.search, result.units, result.gate.passed, "INT8"),
                     "map_err": result.gate.map_err, "passed": result.gate.passed, "backend": None,
                     "plan": result.search.to_dict(), "speedup_on_gate": (result.speedup or {}).get("speedup")}
    return external_artifact(out, "int8")


def searched_bf16(fp32: Artifact, cache_dir: Path, settings: SearchSettings, plans: dict) -> dict:
    """The mixed-BF16 plan of the accuracy search on ``fp32`` (recorded in its manifest); returns the record."""
    from aaclip.calibration.bf16 import PrecisionGateOptions, gate_precision
    from aaclip.runtime.backends import RunnerOptions

    manifest = load_manifest(fp32.path)
    o = settings
    log.info("BF16 accuracy search on %s (time budget %.0f s)", fp32.path.name, o.budget_s)
    result = gate_precision(fp32.path, synthetic_normals(manifest, o.frames, o.seed), None, PrecisionGateOptions(
        max_frames=o.frames, holdout=o.holdout, force=True, seed=o.seed, budget_s=o.budget_s,
        search_frames=o.search_frames,
        runner=RunnerOptions(device="cpu", extra={"cache_dir": str(cache_dir)})))
    plans["bf16"] = {"summary": _summary(result.search, result.units, result.gate.passed, "BF16"),
                     "map_err": result.gate.map_err, "passed": result.gate.passed, "backend": "openvino",
                     "plan": result.search.to_dict(), "speedup_on_gate": (result.speedup or {}).get("speedup")}
    return result.record


__all__ = ["searched_int8", "searched_bf16", "synthetic_normals", "SearchSettings", "CALIBRATION_FRAMES", "HOLDOUT",
           "BUDGET_S"]
