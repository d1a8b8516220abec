"""Build the manifest dict of docs/graph-contract.md for an exported artifact (written by runtime.manifest).

Uncalibrated artifacts get default score constants derived from the method (documented in
docs/export.md, "Default score constants"): each level map is 0.5 where the normal and abnormal
similarities tie, so ``map_lo = 0.5 * n_levels``; ``map_hi = map_lo + MAP_SPAN_PER_LEVEL * n_levels``
is the map where every level has ``S_abnormal - S_normal = 2`` (2-way softmax 0.88); the classification
score is 0.5 for a detection feature orthogonal to both anchors, so ``cls_lo = 0.5``, ``cls_hi = 1.0``.
"""
from __future__ import annotations

import datetime as _dt
import importlib.metadata
from pathlib import Path
from typing import Any, Optional, Sequence

from aaclip.contract.files import sha256_file
from aaclip.contract.manifest import MANIFEST_FORMAT, MANIFEST_VERSION, manifest_path, write_manifest
from aaclip.train.constants import MAP_WEIGHT

METHOD = "aa-clip"
INPUT_NAME = "image"
CLASS_INPUT_NAME = "class_id"
OUTPUT_NAMES = ("anomaly_map", "map_max", "cls_score")

LEVEL_TIE_VALUE = 0.5  # m_i = (S1 + 1 - S0) / 2 where S1 == S0
MAP_SPAN_PER_LEVEL = 1.0  # map_hi - map_lo per level: S1 - S0 = 2 at every level
DEFAULT_CLS_LO = 0.5  # (s1 + 1) / 2 with s1 = 0
DEFAULT_CLS_HI = 1.0
DEFAULT_THRESHOLD = 0.5
DEFAULT_PIXEL_THRESHOLD = 0.5  # S1 - S0 = 1 at every level (2-way softmax 0.73)


def package_version(name: str, fallback: Optional[str] = None) -> Optional[str]:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return fallback


def aaclip_version() -> str:
    """The installed aaclip-edge version (setup.cfg's when running from a source checkout)."""
    version = package_version("aaclip-edge")
    if version:
        return version
    setup_cfg = Path(__file__).resolve().parent.parent / "setup.cfg"
    if setup_cfg.is_file():
        for line in setup_cfg.read_text().splitlines():
            if line.strip().startswith("version"):
                return line.split("=", 1)[1].strip()
    return "0+unknown"


def default_score(n_levels: int, domain: str) -> dict[str, Any]:
    """The ``score`` section of an uncalibrated artifact (see the module docstring)."""
    map_lo = LEVEL_TIE_VALUE * n_levels
    return {
        "map_lo": map_lo,
        "map_hi": map_lo + MAP_SPAN_PER_LEVEL * n_levels,
        "cls_lo": DEFAULT_CLS_LO,
        "cls_hi": DEFAULT_CLS_HI,
        "map_weight": MAP_WEIGHT[domain],
        "threshold": DEFAULT_THRESHOLD,
        "pixel_threshold": DEFAULT_PIXEL_THRESHOLD,
        "source": "default",
        "calibration": None,
    }


def tool_versions(opset: int) -> dict[str, Any]:
    import onnx
    import torch

    return {
        "aaclip-edge": aaclip_version(),
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "open_clip_torch": package_version("open_clip_torch"),
        "opset": int(opset),
    }


def build_manifest(
    *,
    artifact: Path,
    artifact_format: str,
    sha256: str,
    precision: str,
    checkpoint: Path,
    checkpoint_sha256: str,
    backbone: str,
    image_size: int,
    domain: str,
    n_levels: int,
    classes: Sequence[tuple[str, str]],
    input_hw: tuple[int, int],
    opset: int,
    rebuild_command: str,
    external_data: Sequence[str] = (),
    batch: Optional[tuple[int, int, int]] = None,
    onnx_sha256: Optional[str] = None,
    tensorrt: Optional[dict] = None,
    score: Optional[dict] = None,
) -> dict[str, Any]:
    """The manifest of one artifact, every field of docs/graph-contract.md in its order."""
    artifact = Path(artifact)
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "method": METHOD,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "artifact": {
            "file": artifact.name,
            "format": artifact_format,
            "sha256": sha256,
            "size_bytes": artifact.stat().st_size,
            "external_data": list(external_data),
            "external_data_sha256": {name: sha256_file(artifact.parent / name) for name in external_data},
        },
        "precision": precision,
        "source": {
            "checkpoint": str(checkpoint),
            "checkpoint_sha256": checkpoint_sha256,
            "onnx_sha256": onnx_sha256,
        },
        "model": {"backbone": backbone, "image_size": int(image_size), "domain": domain},
        "input": {
            "name": INPUT_NAME,
            "dtype": "uint8",
            "layout": "NHWC",
            "color": "BGR",
            "height": int(input_hw[0]),
            "width": int(input_hw[1]),
            "batch": None if batch is None else {"min": batch[0], "opt": batch[1], "max": batch[2]},
        },
        "class_input": {"name": CLASS_INPUT_NAME, "dtype": "int64"} if len(classes) > 1 else None,
        "classes": [{"id": i, "name": name, "object_name": obj} for i, (name, obj) in enumerate(classes)],
        "outputs": [
            {"name": "anomaly_map", "dtype": "float32", "shape": ["B", int(image_size), int(image_size)]},
            {"name": "map_max", "dtype": "float32", "shape": ["B"]},
            {"name": "cls_score", "dtype": "float32", "shape": ["B"]},
        ],
        "score": dict(score) if score is not None else default_score(n_levels, domain),
        "tools": tool_versions(opset),
        "tensorrt": tensorrt,
        "rebuild_command": rebuild_command,
    }


__all__ = [
    "build_manifest",
    "default_score",
    "manifest_path",
    "write_manifest",
    "aaclip_version",
    "INPUT_NAME",
    "CLASS_INPUT_NAME",
    "OUTPUT_NAMES",
]
