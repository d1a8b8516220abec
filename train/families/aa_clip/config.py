"""AA-CLIP's checkpoint config: adapter depths, blend weight, feature levels, projection activation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from aaclip.contract.errors import UserError

from aaclip.train.common import constants as C
from aaclip.train.common.config import ModelConfig


@dataclass
class AAClipConfig(ModelConfig):
    """AA-CLIP (SPEC.md): exact GELU and bicubic-antialias position resize, as the reference runs."""

    method: str = "aa-clip"
    text_adapter_depth: Optional[int] = None  # None: 1/4 of the text blocks (3 for ViT-L-14-336)
    image_adapter_depth: Optional[int] = None  # None: 1/4 of the visual blocks (6 for ViT-L-14-336)
    adapter_lambda: float = C.ADAPTER_LAMBDA
    levels: Optional[list[int]] = None  # 1-based visual block indices; None = quarter depths
    relu: bool = False  # LeakyReLU after the patch/detection projections (reference default: off)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.adapter_lambda <= 1.0:
            raise UserError(f"adapter_lambda must be in [0, 1], got {self.adapter_lambda}")
        if self.levels is not None:
            self.levels = [int(v) for v in self.levels]

    def resolved_levels(self, depth: int) -> tuple[int, ...]:
        levels = tuple(self.levels) if self.levels else C.default_levels(depth)
        if any(not 1 <= v <= depth for v in levels) or list(levels) != sorted(set(levels)):
            raise UserError(f"levels {list(levels)} must be increasing block indices in 1..{depth}")
        return levels

    def resolved_depths(self, text_blocks: int, visual_blocks: int) -> tuple[int, int]:
        k_t = self.text_adapter_depth or C.default_adapter_depth(text_blocks, 12, C.TEXT_ADAPTER_DEPTH)
        k_i = self.image_adapter_depth or C.default_adapter_depth(visual_blocks, 24, C.IMAGE_ADAPTER_DEPTH)
        if not (1 <= k_t <= text_blocks and 1 <= k_i <= visual_blocks):
            raise UserError(
                f"adapter depths text={k_t}, image={k_i} do not fit a backbone with {text_blocks} text and "
                f"{visual_blocks} visual blocks"
            )
        return k_t, k_i
