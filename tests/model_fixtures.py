"""Tiny randomly initialized AA-CLIP models and checkpoints for the tests (seconds, no downloads)."""
from __future__ import annotations

from pathlib import Path

TINY = "aaclip-tiny"
TINY_SIZE = 64  # 8 x 8 patch grid; the config's native 48 px exercises the position-embedding resize
TINY_CLASSES = {"disk": "metal disk", "wood": "wooden board"}


def tiny_config(weights: str | None = None, seed: int = 0, **overrides):
    from aaclip.train.config import AAClipConfig, BackboneConfig

    backbone = BackboneConfig(name=TINY, weights=weights, init_seed=None if weights else seed)
    fields = dict(backbone=backbone, image_size=TINY_SIZE, classes=dict(TINY_CLASSES))
    fields.update(overrides)
    return AAClipConfig(**fields)


def make_tiny_checkpoint(out_dir: Path, seed: int = 0, adapter_seed: int = 1, **overrides) -> Path:
    """A checkpoint directory whose CLIP weights file (random) lives beside the adapters."""
    import torch
    from aaclip.train.backbone import write_random_weights
    from aaclip.train.checkpoint import build_model, save_checkpoint

    out_dir = Path(out_dir)
    write_random_weights(TINY, out_dir / "clip.safetensors", seed=seed)
    config = tiny_config(weights="clip.safetensors", **overrides)
    torch.manual_seed(adapter_seed)
    model = build_model(config, base_dir=out_dir)
    return save_checkpoint(model, out_dir)
