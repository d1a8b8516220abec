"""Tiny randomly initialized AA-CLIP models and checkpoints for the tests (seconds, no downloads)."""
from __future__ import annotations

from pathlib import Path

TINY = "aaclip-tiny"
TINY_SIZE = 64  # 8 x 8 patch grid; the config's native 48 px exercises the position-embedding resize
TINY_CLASSES = {"disk": "metal disk", "wood": "wooden board"}


def tiny_config(weights: str | None = None, seed: int = 0, **overrides):
    from aaclip.train.common.config import BackboneConfig
    from aaclip.train.families.aa_clip.config import AAClipConfig

    backbone = BackboneConfig(name=TINY, weights=weights, init_seed=None if weights else seed)
    fields = dict(backbone=backbone, image_size=TINY_SIZE, classes=dict(TINY_CLASSES))
    fields.update(overrides)
    return AAClipConfig(**fields)


def make_tiny_checkpoint(out_dir: Path, seed: int = 0, adapter_seed: int = 1, **fields) -> Path:
    """A checkpoint directory whose CLIP weights file (random) lives beside the adapters."""
    from aaclip.train.checkpoint import random_checkpoint

    return random_checkpoint(out_dir, backbone=TINY, image_size=TINY_SIZE, classes=dict(TINY_CLASSES), seed=seed,
                             trainable_seed=adapter_seed, fields=fields)
