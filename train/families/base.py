"""The model interface every family offers; export, evaluation, verification and benchmarks use only this.

    model.config                          the family's ModelConfig (.method, .image_size, .domain, .classes)
    model.clip                            the frozen OpenCLIP model
    model.trainable_state_dict()          the trainable weights (what ``adapters.safetensors`` holds)
    model.load_trainable_state_dict(sd)   load them (keys must match the config exactly)
    model.class_constants(object_names)   per-class constants (C, ...), computed once at export time
    model.predict(images, constants)      normalized images (B, 3, H, W) -> (anomaly_map (B, H, W), cls_score (B,))

``constants`` in ``predict`` is one class's entry (no class axis) or one entry per image (leading batch
axis), as the deployed graph selects them with ``class_id``.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class FamilyModel(nn.Module):
    """Base class: a frozen ``clip`` plus the family's own (trainable or constant) modules."""

    def __init__(self, clip: nn.Module, config):
        super().__init__()
        self.clip = clip
        self.config = config

    # ---- trainable weights: every parameter and buffer outside the frozen CLIP ------------------------
    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().clone() for k, v in self.state_dict().items() if not k.startswith("clip.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        got = set(state)
        if expected != got:
            raise ValueError(
                f"trainable weights do not match the config: missing {sorted(expected - got)[:4]}, "
                f"unexpected {sorted(got - expected)[:4]}"
            )
        self.load_state_dict(state, strict=False)

    # ---- what a family defines ------------------------------------------------------------------------
    def class_constants(self, object_names: Sequence[str]) -> torch.Tensor:
        """Per-class constants (C, ...) for the object names, in order (AA-CLIP: text anchors (C, E, 2))."""
        raise NotImplementedError

    def predict(self, images: torch.Tensor, constants: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Raw anomaly map (B, H, W) and classification score (B,) of normalized images (B, 3, H, W)."""
        raise NotImplementedError
