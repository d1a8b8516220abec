"""CLIP-AD (SPEC-peers.md section 1) as two model families: ``clip-ad`` (SDP, training-free) and
``clip-ad-plus`` (SDP+, four linear layers trained with focal + dice).

The implementation, in this folder: ``config`` (the configs), ``model`` (model, text anchors with DBSCAN
representative vectors, import of the official ``linear_layers`` checkpoints), ``trainer`` (SDP+ training),
``flops``; shared: ``common.dual_path`` (the surgery stream) and ``common.peer_ops`` (scipy's Gaussian). As the official code:

- backbone: OpenCLIP's own factory rebuilds a model of non-native size from the plain JSON config,
  so the activation is exact GELU except for OpenAI weights at their native size (QuickGELU, OpenAI's
  loader): the default here follows that rule for ``--pretrained openai`` and for a weights file that is
  OpenAI's (``common.backbone.openai_weights``: OpenAI's TorchScript archive, a file with its extra
  entries, or a model only OpenAI released weights of, such as ViT-L-14-336). Position embedding:
  bicubic with antialias (OpenCLIP's).
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

from aaclip.contract.score import ScoreParams

from aaclip.train.families.clip_ad.config import SDP, SDP_PLUS, ClipAdConfig, ClipAdPlusConfig, object_name
from aaclip.train.families.registry import Family, register_family

STAGE_TIE, STAGE_HI = 0.0, 0.05
SOFTMAX_TIE, SOFTMAX_HI = 0.5, 1.0
MAP_WEIGHT = 0.5


def default_score(linear: bool) -> ScoreParams:
    map_lo = 4 * STAGE_TIE + (4 * SOFTMAX_TIE if linear else 0.0)
    map_hi = 4 * STAGE_HI + (4 * SOFTMAX_HI if linear else 0.0)
    return ScoreParams(map_lo=map_lo, map_hi=map_hi, cls_lo=SOFTMAX_TIE, cls_hi=SOFTMAX_HI, map_weight=MAP_WEIGHT,
                       threshold=0.5, pixel_threshold=0.5)


def _build(clip, tokenizer, config):
    from aaclip.train.families.clip_ad.model import ClipAd

    return ClipAd(clip, tokenizer, config)


def _deploy(model, precision: str):
    from aaclip.train.common.dual_path import dual_path_deploy

    return dual_path_deploy(model, precision)


def _flops(config) -> dict:
    from aaclip.train.families.clip_ad.flops import clip_ad_flops

    return clip_ad_flops(config)


def _trainer(model, records, root, out_dir, options):
    from aaclip.train.families.clip_ad.trainer import ClipAdTrainer

    return ClipAdTrainer(model, records, root, out_dir, options)


def _import_official(src, out_dir, config, epoch=None):
    from aaclip.train.families.clip_ad.model import import_official

    return import_official(src, out_dir, config, epoch)


def _options() -> type:
    from aaclip.train.families.clip_ad.trainer import ClipAdOptions

    return ClipAdOptions


FAMILY_SDP = register_family(Family(
    name=SDP, config_class=ClipAdConfig, build=_build, default_score=lambda model: default_score(False),
    deploy=_deploy, flops=_flops, default_object_name=object_name,
    summary="CLIP-AD SDP: staged dual-path (V-V) features, feature surgery, representative text vectors",
))
FAMILY_SDP_PLUS = register_family(Family(
    name=SDP_PLUS, config_class=ClipAdPlusConfig, build=_build, default_score=lambda model: default_score(True),
    deploy=_deploy, flops=_flops, trainer=_trainer, train_options=_options(), import_official=_import_official,
    default_object_name=object_name,
    summary="CLIP-AD SDP+: SDP plus four linear layers on the original stream (focal + dice)",
))
