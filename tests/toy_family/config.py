"""The toy's checkpoint config: the common fields plus the block whose tokens it scores."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from aaclip.train.common.config import ModelConfig


@dataclass
class ToyConfig(ModelConfig):
    default_activation: ClassVar[str] = "quickgelu"
    default_pos_embed_resize: ClassVar[str] = "bilinear"

    method: str = "toy"
    tap: Optional[int] = None  # 1-based visual block whose patch tokens are scored; None: the last
