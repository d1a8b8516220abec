"""Res2CLIP's checkpoint configs (``res2clip``, ``res2clip-ft``) and the constants of its method."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional

from aaclip.contract.errors import UserError

from aaclip.train.common.config import ModelConfig

FREE, FINETUNED = "res2clip", "res2clip-ft"
BLUR_SIZE, BLUR_SIGMA = 5, 4.0
TOP_FRACTION = 0.01


def check_object_names(classes: dict[str, str]) -> None:
    """Res2CLIP finds a class's bank by its object name (what the export passes): names must be distinct."""
    names = list(classes.values())
    if len(set(names)) != len(names):
        raise UserError("Res2CLIP finds each class's reference bank by its object name: give every class a "
                        f"distinct object name (got {names})")


@dataclass
class Res2ClipConfig(ModelConfig):
    """``shots`` (k normal references per class), ``spatial_penalty`` (gamma of the radial penalty),
    ``sparsemax_steps`` (bisection steps of the sort-free sparsemax), ``res_taps`` (1-based blocks of the
    residual branch; None: the last tap training-free, all four fine-tuned, as the official scripts)."""

    default_activation: ClassVar[str] = "quickgelu"
    default_pos_embed_resize: ClassVar[str] = "bilinear"

    method: str = FREE
    shots: int = 1
    spatial_penalty: float = 0.01
    sparsemax_steps: int = 30
    res_taps: Optional[list[int]] = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.shots = int(self.shots)
        if self.shots < 1:
            raise UserError(f"shots must be at least 1, got {self.shots}")
        if self.sparsemax_steps < 24:
            raise UserError(f"sparsemax_steps {self.sparsemax_steps}: use at least 24 (float32 resolution)")
        if self.res_taps is not None:
            self.res_taps = [int(v) for v in self.res_taps]
        check_object_names(self.classes)

    @property
    def finetuned(self) -> bool:
        return self.method == FINETUNED


@dataclass
class Res2ClipFtConfig(Res2ClipConfig):
    """Res2CLIP with its adapters (``reduction``: bottleneck width = embed / reduction)."""

    method: str = FINETUNED
    reduction: int = 4


def object_name(class_name: str) -> str:
    """The prompt name of a class nobody named: the class (folder) name verbatim, as the official code."""
    return class_name
