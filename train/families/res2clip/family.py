"""Res2CLIP (SPEC-peers.md section 2) as two model families: ``res2clip`` (training-free, Res2CLIP*) and
``res2clip-ft`` (fine-tuned adapters, Res2CLIP-dagger), both with a per-class bank of k normal references.

The implementation, in this folder: ``config`` (the configs), ``model`` (model, adapters, reference bank, import
of the official adapter checkpoints), ``bank``, ``trainer`` (the alternating optimizers), ``flops``; shared:
``common.dual_path`` (the DPAM stream) and ``common.peer_ops`` (sort-free sparsemax, the 5x5 zero-padded blur, top-1% means). As the official code:
QuickGELU and a bilinear position-embedding resize (OpenAI ViT-L/14@336 at 518 px), taps at the
quarter depths with the V-V path from the first tap block, the class-agnostic text residual, and the
class name as object name (Res2CLIP's prompts do not use it; it only has to be unique).

Per-class constants are one tensor (C, 4 k L + 3, E): for each class its bank (the L2-normalized tap
features of its k references, per tap), the mean reference image feature g_ref, then the text residuals
R~_t and R~res_t (the same for every class; the adapters on a constant input fold into constants).
The bank lives in the checkpoint's ``adapters.safetensors`` as ``reference_bank`` (C, 4 k L + 1, E), in
the order of the config's ``classes``.

Default score constants of an uncalibrated artifact: the score is Res2CLIP's own per-frame image score
(``cls_score``, ``map_weight = 0``); ``cls_lo = 0``, ``cls_hi = 2`` (a frame whose visual residuals have
norm 1 scores about 1 on the visual branch alone; unit vectors give residual norms in [0, 2]); the map
0.1 M_text + M_vis + M_res is 0 for a perfect match, ``map_hi = 2``.
"""
from __future__ import annotations

from aaclip.contract.score import ScoreParams

from aaclip.train.families.registry import Family, register_family
from aaclip.train.families.res2clip.config import FINETUNED, FREE, Res2ClipConfig, Res2ClipFtConfig, object_name

def default_score(model=None) -> ScoreParams:
    return ScoreParams(map_lo=0.0, map_hi=2.0, cls_lo=0.0, cls_hi=2.0, map_weight=0.0, threshold=0.5,
                       pixel_threshold=0.5)


def _build(clip, tokenizer, config):
    from aaclip.train.families.res2clip.model import Res2Clip

    return Res2Clip(clip, tokenizer, config)


def _deploy(model, precision: str):
    from aaclip.train.common.dual_path import dual_path_deploy

    return dual_path_deploy(model, precision, drop=("text_adapter", "res_text_adapter"))


def _flops(config) -> dict:
    from aaclip.train.families.res2clip.flops import res2clip_flops

    return res2clip_flops(config)


def _trainer(model, records, root, out_dir, options):
    from aaclip.train.families.res2clip.trainer import Res2ClipTrainer

    return Res2ClipTrainer(model, records, root, out_dir, options)


def _import_official(src, out_dir, config):
    from aaclip.train.families.res2clip.model import import_official

    return import_official(src, out_dir, config)


def _options() -> type:
    from aaclip.train.families.res2clip.trainer import Res2ClipOptions

    return Res2ClipOptions


FAMILY_FREE = register_family(Family(
    name=FREE, config_class=Res2ClipConfig, build=_build, default_score=default_score, deploy=_deploy,
    flops=_flops, default_object_name=object_name, references=True,
    summary="Res2CLIP*: residual-to-residual matching against k normal references per class, training-free",
))
FAMILY_FINETUNED = register_family(Family(
    name=FINETUNED, config_class=Res2ClipFtConfig, build=_build, default_score=default_score, deploy=_deploy,
    flops=_flops, trainer=_trainer, train_options=_options(), import_official=_import_official,
    default_object_name=object_name, references=True,
    summary="Res2CLIP-ft: Res2CLIP with multi-scale conv and residual adapters (alternating optimizers)",
))
