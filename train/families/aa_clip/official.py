"""Import of checkpoints written by the AA-CLIP reference code (``text_adapter.pth``,
``image_adapter_<epoch>.pth``), read with ``torch.load(weights_only=True)``; the AA-CLIP family's
``import_official`` (``aaclip-train import-official``). The format is documented in
docs/checkpoint-format.md.
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Optional

import torch
from aaclip.contract.errors import UserError

from aaclip.train.common.backbone import build_on_backbone
from aaclip.train.common.checkpoint_files import save_checkpoint
from aaclip.train.families.aa_clip.config import AAClipConfig
from aaclip.train.families.aa_clip.model import AAClip

log = logging.getLogger(__name__)


def _load_official(path: Path, key: str) -> dict[str, torch.Tensor]:
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"cannot read {path} safely ({exc.__class__.__name__}): is it an AA-CLIP checkpoint?") from exc
    if not isinstance(data, dict) or key not in data:
        raise UserError(f"{path} has no '{key}' entry: expected a checkpoint saved by the AA-CLIP reference code")
    return data[key]


def _count(state: dict, pattern: str) -> int:
    found = {int(m.group(1)) for k in state for m in [re.match(pattern, k)] if m}
    return len(found)


def official_to_state(text_sd: dict, image_sd: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Map reference key names onto ours; returns (state dict, config fields inferred from the keys)."""
    n_text = _count(text_sd, r"^(\d+)\.fc\.0\.weight$") - 1  # last entry is the projection P_T
    n_image = _count(image_sd, r"^layer_adapters\.(\d+)\.fc\.0\.weight$")
    n_levels = _count(image_sd, r"^seg_proj\.(\d+)\.fc\.(?:0\.)?weight$")
    if n_text < 1 or n_image < 1 or n_levels < 1:
        raise UserError("unexpected key layout: not the text_adapter/image_adapter state dicts of AA-CLIP")
    relu = "det_proj.fc.0.weight" in image_sd
    sub = "fc.0.weight" if relu else "fc.weight"
    state = {f"text_adapters.{i}.fc.weight": text_sd[f"{i}.fc.0.weight"] for i in range(n_text)}
    state["text_proj.fc.weight"] = text_sd[f"{n_text}.fc.0.weight"]
    for i in range(n_image):
        state[f"image_adapters.{i}.fc.weight"] = image_sd[f"layer_adapters.{i}.fc.0.weight"]
    for i in range(n_levels):
        state[f"seg_proj.{i}.fc.weight"] = image_sd[f"seg_proj.{i}.{sub}"]
    state["det_proj.fc.weight"] = image_sd[f"det_proj.{sub}"]
    fields = {"text_adapter_depth": n_text, "image_adapter_depth": n_image, "relu": relu}
    return {k: v.float() for k, v in state.items()}, fields


def find_official_files(src: Path, epoch: Optional[int] = None) -> tuple[Path, Path]:
    src = Path(src)
    text = src / "text_adapter.pth"
    if not text.is_file():
        raise UserError(f"no text_adapter.pth in {src}: point at the reference code's output directory")
    images = {int(m.group(1)): p for p in src.glob("image_adapter_*.pth") for m in [re.match(r"image_adapter_(\d+)\.pth$", p.name)] if m}
    if not images:
        raise UserError(f"no image_adapter_<epoch>.pth in {src}: was stage 2 run?")
    if epoch is None:
        epoch = max(images)
    if epoch not in images:
        raise UserError(f"no image_adapter_{epoch}.pth in {src}; available epochs: {sorted(images)}")
    return text, images[epoch]


def import_official(src: Path, out_dir: Path, config: AAClipConfig, epoch: Optional[int] = None) -> Path:
    """Convert reference checkpoints into an aaclip-edge checkpoint directory (weights checked by shape)."""
    text_path, image_path = find_official_files(src, epoch)
    state, fields = official_to_state(_load_official(text_path, "text_adapter"), _load_official(image_path, "image_adapter"))
    for key, value in fields.items():
        setattr(config, key, value)
    model = build_on_backbone(config, AAClip, base_dir=Path(out_dir))
    expected = model.trainable_state_dict()
    bad = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise UserError(
            f"imported weights do not fit backbone {config.backbone.name}: {bad[0]} is "
            f"{tuple(state[bad[0]].shape)}, expected {tuple(expected[bad[0]].shape)}"
        )
    try:
        model.load_trainable_state_dict(state)
    except ValueError as exc:
        raise UserError(f"{src}: {exc}") from exc
    log.info("imported %s and %s", text_path.name, image_path.name)
    return save_checkpoint(model, out_dir)
