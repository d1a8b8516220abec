"""The ``ManifestDraft`` of an exported graph (``aaclip.contract.manifest.manifest_for`` writes the rest).

What export adds to the contract's manifest builder: the method and the model section from the
checkpoint's config, the family's default score constants for an uncalibrated artifact
(``Family.default_score``), the versions of the tools that made the graph and its rebuild command.
"""
from __future__ import annotations

import importlib.metadata
from pathlib import Path
from typing import Any, Optional, Sequence

from aaclip.contract.manifest import ManifestDraft

# Re-exported for modules not yet ported (export/verify.py, benchmarks/suite.py and rows.py import them
# from here); they are defined in aaclip.contract.tensors only.
from aaclip.train.families import get_family


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


def default_score_block(model) -> dict[str, Any]:
    """The ``score`` block of an uncalibrated artifact of ``model``: its family's default constants."""
    return get_family(model.config.method).default_score(model).to_block("default")


def export_draft(model, precision: str, classes: Sequence[tuple[str, str]], input_hw: tuple[int, int],
                 opset: int, rebuild_command: str, checkpoint: Path, checkpoint_sha256: str) -> ManifestDraft:
    """What export knows about a new ONNX graph of ``model`` (a family model loaded from ``checkpoint``)."""
    config = model.config
    return ManifestDraft(
        method=config.method,
        precision=precision,
        model={"backbone": config.backbone.name, "image_size": int(config.image_size), "domain": config.domain},
        classes=list(classes),
        input_hw=(int(input_hw[0]), int(input_hw[1])),
        score=default_score_block(model),
        tools=tool_versions(opset),
        rebuild_command=rebuild_command,
        source={"checkpoint": str(checkpoint), "checkpoint_sha256": checkpoint_sha256, "onnx_sha256": None},
    )


__all__ = [
    "export_draft",
    "default_score_block",
    "tool_versions",
    "aaclip_version",
    "package_version",
]
