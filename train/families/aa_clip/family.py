"""AA-CLIP (SPEC.md) as a model family, method ``aa-clip``.

The implementation lives in the modules it names: ``config.AAClipConfig`` (adapter depths, blend weight,
levels, projection activation), ``model.AAClip`` (adapters on the frozen OpenCLIP towers; per-class
constants are the text anchors (C, E, 2)), ``maps`` (SPEC section 5), ``trainer`` (two-stage training,
section 6) and ``aaclip_official`` (import of the reference code's checkpoints). The backbone runs
exact GELU with a bicubic+antialias position-embedding resize, as the reference does (config defaults).

Default score constants of an uncalibrated artifact (docs/export.md, "Default score constants"): each
level map is 0.5 where the normal and abnormal similarities tie, so ``map_lo = 0.5 * n_levels``;
``map_hi = map_lo + MAP_SPAN_PER_LEVEL * n_levels`` is the map where every level has
``S_abnormal - S_normal = 2`` (2-way softmax 0.88); the classification score is 0.5 for a detection
feature orthogonal to both anchors, so ``cls_lo = 0.5``, ``cls_hi = 1.0``.
"""
from __future__ import annotations

from aaclip.contract.score import ScoreParams

from aaclip.train.families.aa_clip.config import AAClipConfig
from aaclip.train.common.constants import MAP_WEIGHT
from aaclip.train.families.registry import Family, register_family

METHOD = "aa-clip"
LEVEL_TIE_VALUE = 0.5  # m_i = (S1 + 1 - S0) / 2 where S1 == S0
MAP_SPAN_PER_LEVEL = 1.0  # map_hi - map_lo per level: S1 - S0 = 2 at every level
DEFAULT_CLS_LO = 0.5  # (s1 + 1) / 2 with s1 = 0
DEFAULT_CLS_HI = 1.0
DEFAULT_THRESHOLD = 0.5
DEFAULT_PIXEL_THRESHOLD = 0.5  # S1 - S0 = 1 at every level (2-way softmax 0.73)


def default_score(n_levels: int, domain: str) -> ScoreParams:
    """The score constants of an uncalibrated AA-CLIP artifact (see the module docstring)."""
    map_lo = LEVEL_TIE_VALUE * n_levels
    return ScoreParams(map_lo=map_lo, map_hi=map_lo + MAP_SPAN_PER_LEVEL * n_levels, cls_lo=DEFAULT_CLS_LO,
                       cls_hi=DEFAULT_CLS_HI, map_weight=MAP_WEIGHT[domain], threshold=DEFAULT_THRESHOLD,
                       pixel_threshold=DEFAULT_PIXEL_THRESHOLD)


def _build(clip, tokenizer, config: AAClipConfig):
    from aaclip.train.families.aa_clip.model import AAClip

    return AAClip(clip, tokenizer, config)


def _default_score(model) -> ScoreParams:
    return default_score(len(model.levels), model.config.domain)


def _deploy(model, precision: str):
    from aaclip.train.common.deploy import deploy_copy

    return deploy_copy(model, precision, drop=("text_adapters", "text_proj"))


def _trainer(model, records, root, out_dir, options):
    from aaclip.train.families.aa_clip.trainer import Trainer

    return Trainer(model, records, root, out_dir, options)


def _import_official(src, out_dir, config: AAClipConfig, epoch=None):
    from aaclip.train.families.aa_clip.official import import_official

    return import_official(src, out_dir, config, epoch)


def _flops(config: AAClipConfig) -> dict:
    from aaclip.train.families.aa_clip.flops import flops_report

    return flops_report(config)


def _train_options() -> type:
    from aaclip.train.families.aa_clip.trainer import TrainOptions

    return TrainOptions


FAMILY = register_family(Family(
    name=METHOD,
    config_class=AAClipConfig,
    build=_build,
    default_score=_default_score,
    deploy=_deploy,
    trainer=_trainer,
    train_options=_train_options(),
    import_official=_import_official,
    flops=_flops,
    summary="AA-CLIP (CVPR 2025): residual adapters in both CLIP towers, two-stage training",
))
