"""Res2CLIP's reference banks in a model: build them from image files (``aaclip.data.references`` picks the
files), and what a bank adds to a graph, in bytes."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def add_references(model, paths: dict[str, list[Path]],
                   object_names: Optional[dict[str, str]] = None) -> dict[str, int]:
    """Build and install the banks of ``paths``' classes; {class: bytes it adds to a graph}."""
    from aaclip.train.families.res2clip.model import build_references

    model.set_references(build_references(model, paths), object_names)
    return {c: model.bank_bytes() for c in paths}


def bank_bytes(config) -> int:
    """float32 bytes one class's references add to a graph: (4 k L + 3) x E (without building the model)."""
    from aaclip.train.common.flops import geometry

    g = geometry(config)
    return 4 * (4 * int(config.shots) * g.patches + 3) * g.embed_dim


def describe(sizes: dict[str, int], shots: int) -> list[str]:
    """Lines for the user: each class's bank and the total."""
    lines = [f"reference bank {c}: {shots} image(s), {b / 1e6:.1f} MB (float32)" for c, b in sizes.items()]
    lines.append(f"reference banks: {len(sizes)} class(es), {sum(sizes.values()) / 1e6:.1f} MB in all")
    return lines


__all__ = ["add_references", "bank_bytes", "describe"]
