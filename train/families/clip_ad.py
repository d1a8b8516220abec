"""CLIP-AD (SPEC-peers.md section 1) as two model families: ``clip-ad`` (SDP, training-free) and
``clip-ad-plus`` (SDP+, four linear layers trained with focal + dice).

The implementation: ``aaclip.train.clip_ad`` (model, text anchors with DBSCAN representative vectors,
import of the official ``linear_layers`` checkpoints), ``clip_ad_trainer`` (SDP+ training),
``dual_path`` (the surgery stream) and ``peer_ops`` (scipy's Gaussian). As the official code:

- backbone: OpenCLIP's own factory rebuilds a model of non-native size from the plain JSON config,
  so the activation is exact GELU except for OpenAI weights at their native size (QuickGELU, OpenAI's
  loader): the default here follows that rule for ``--pretrained openai`` and for a weights file that is
  OpenAI's (``backbone.openai_weights``: OpenAI's TorchScript archive, a file with its extra entries, or
  a model only OpenAI released weights of, such as ViT-L-14-336). Position embedding: bicubic with
  antialias (OpenCLIP's).
- text anchors: ``anchor_precision`` "float16" (default) normalizes the DBSCAN cluster mean in float16 as
  ``CA:util/prompt_ensemble.py`` does; "float32" is the clean variant (and the meaning of configs
  written before the field existed).
- object names: the class (folder) name verbatim, as the official dataset code passes it.
- the map is smoothed with scipy's ``gaussian_filter`` (``sigma``, default 8 px; the official VisA runs
  of SDP+ use 2), symmetric padding.

Default score constants of an uncalibrated artifact (docs/export.md, "Default score constants"):
SDP's map sums 4 stages of ``p_a s_a - p_n s_n`` (0 at a tie); ``map_hi`` is 4 stages at 0.05 (cosine
margins of 0.1 with p = 0.5/0.5). SDP+ adds 4 softmax maps (0.5 each at a tie, 1 when certain):
``map_lo = 2``, ``map_hi = 4 + 0.2``. The classification score is a 2-way softmax probability: 0.5 at a
tie, 1 when certain. The reference's image score adds the test-set min-max normalized map maximum and
classification score: ``map_weight = 0.5`` (the same ranking); calibration replaces the test set.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from aaclip.contract.errors import UserError
from aaclip.contract.score import ScoreParams

from ..config import BackboneConfig, ModelConfig
from .registry import Family, register_family

SDP, SDP_PLUS = "clip-ad", "clip-ad-plus"
RVS_MODES = ("dbscan", "mean")
ANCHOR_PRECISIONS = ("float16", "float32")  # official recipe / clean variant
LEGACY_ANCHOR_PRECISION = "float32"  # what a config without the field computed (exact float64 mean)
STAGE_TIE, STAGE_HI = 0.0, 0.05
SOFTMAX_TIE, SOFTMAX_HI = 0.5, 1.0
MAP_WEIGHT = 0.5


def native_image_size(name: str) -> int | None:
    """The image size of an OpenCLIP model config (None when unknown)."""
    import open_clip

    from .. import backbone as _backbone  # noqa: F401 - registers the project's model configs

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
    from ..backbone import openai_weights

    return openai_weights(backbone)


@dataclass
class ClipAdPlusConfig(ClipAdConfig):
    """SDP+: the SDP map plus four trained linear layers on the original stream."""

    method: str = SDP_PLUS


def default_score(linear: bool) -> ScoreParams:
    map_lo = 4 * STAGE_TIE + (4 * SOFTMAX_TIE if linear else 0.0)
    map_hi = 4 * STAGE_HI + (4 * SOFTMAX_HI if linear else 0.0)
    return ScoreParams(map_lo=map_lo, map_hi=map_hi, cls_lo=SOFTMAX_TIE, cls_hi=SOFTMAX_HI, map_weight=MAP_WEIGHT,
                       threshold=0.5, pixel_threshold=0.5)


def _build(clip, tokenizer, config):
    from ..clip_ad import ClipAd

    return ClipAd(clip, tokenizer, config)


def _deploy(model, precision: str):
    from ..dual_path import dual_path_deploy

    return dual_path_deploy(model, precision)


def _flops(config) -> dict:
    from ..peer_flops import clip_ad_flops

    return clip_ad_flops(config)


def _trainer(model, records, root, out_dir, options):
    from ..clip_ad_trainer import ClipAdTrainer

    return ClipAdTrainer(model, records, root, out_dir, options)


def _import_official(src, out_dir, config, epoch=None):
    from ..clip_ad import import_official

    return import_official(src, out_dir, config, epoch)


def _options() -> type:
    from ..clip_ad_trainer import ClipAdOptions

    return ClipAdOptions


def _verbatim(class_name: str) -> str:
    return class_name


FAMILY_SDP = register_family(Family(
    name=SDP, config_class=ClipAdConfig, build=_build, default_score=lambda model: default_score(False),
    deploy=_deploy, flops=_flops, default_object_name=_verbatim,
    summary="CLIP-AD SDP: staged dual-path (V-V) features, feature surgery, representative text vectors",
))
FAMILY_SDP_PLUS = register_family(Family(
    name=SDP_PLUS, config_class=ClipAdPlusConfig, build=_build, default_score=lambda model: default_score(True),
    deploy=_deploy, flops=_flops, trainer=_trainer, train_options=_options(), import_official=_import_official,
    default_object_name=_verbatim,
    summary="CLIP-AD SDP+: SDP plus four linear layers on the original stream (focal + dice)",
))
