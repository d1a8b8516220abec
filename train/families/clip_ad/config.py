"""CLIP-AD's checkpoint configs (``clip-ad``: SDP, ``clip-ad-plus``: SDP+)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aaclip.contract.errors import UserError

from aaclip.train.common.config import BackboneConfig, ModelConfig

RVS_MODES = ("dbscan", "mean")
ANCHOR_PRECISIONS = ("float16", "float32")  # official recipe / clean variant
LEGACY_ANCHOR_PRECISION = "float32"  # what a config without the field computed (exact float64 mean)
SDP, SDP_PLUS = "clip-ad", "clip-ad-plus"


def native_image_size(name: str) -> int | None:
    """The image size of an OpenCLIP model config (None when unknown)."""
    import open_clip

    from aaclip.train.common import backbone as _backbone  # noqa: F401 - registers the project's model configs

    cfg = open_clip.get_model_config(name) or {}
    size = cfg.get("vision_cfg", {}).get("image_size")
    return int(size) if isinstance(size, int) else None


@dataclass
class ClipAdConfig(ModelConfig):
    """SDP: ``sigma`` (px) of the map smoothing; representative vectors ``rvs`` (``dbscan`` with ``dbscan_eps``,
    ``dbscan_min_samples``: 0.5 / 15, VisA's runs 1.5 / 25; or ``mean``); ``anchor_precision`` of the DBSCAN
    cluster mean's normalization (``float16``: the official code's; ``float32``: exact)."""

    default_activation: ClassVar[str] = "gelu"
    default_pos_embed_resize: ClassVar[str] = "bicubic-antialias"

    method: str = SDP
    sigma: float = 8.0
    rvs: str = "dbscan"
    dbscan_eps: float = 0.5
    dbscan_min_samples: int = 15
    anchor_precision: str = "float16"

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = BackboneConfig(**self.backbone)
        b = self.backbone
        if b.activation is None and native_image_size(b.name) == int(self.image_size) and _openai(b):
            b.activation = "quickgelu"  # OpenCLIP loads OpenAI's own model only at the native size
        super().__post_init__()
        if self.rvs not in RVS_MODES:
            raise UserError(f"rvs must be one of {', '.join(RVS_MODES)}, got {self.rvs!r}")
        if self.anchor_precision not in ANCHOR_PRECISIONS:
            raise UserError(f"anchor_precision must be one of {', '.join(ANCHOR_PRECISIONS)}, got "
                            f"{self.anchor_precision!r}")
        if not self.sigma > 0:
            raise UserError(f"sigma must be positive, got {self.sigma}")
        self.sigma = float(self.sigma)
        self.dbscan_min_samples = int(self.dbscan_min_samples)


    @classmethod
    def from_dict(cls, data):
        data = dict(data)
        data.setdefault("anchor_precision", LEGACY_ANCHOR_PRECISION)  # saved before the field: their anchors
        return super().from_dict(data)


def _openai(backbone: BackboneConfig) -> bool:
    from aaclip.train.common.backbone import openai_weights

    return openai_weights(backbone)


@dataclass
class ClipAdPlusConfig(ClipAdConfig):
    """SDP+: the SDP map plus four trained linear layers on the original stream."""

    method: str = SDP_PLUS


def object_name(class_name: str) -> str:
    """The prompt name of a class nobody named: the class (folder) name verbatim, as the official code."""
    return class_name
