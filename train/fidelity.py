"""Which behaviours of a peer family's official code a checkpoint config reproduces, and which option changes each.

One list per family (``official_behaviours(config)``), read by ``benchmarks.family_parity`` (its report says
it per family) and summarized in docs/method-choices.md. Behaviours that no option changes are listed with
``option`` empty; ``reproduced`` is computed from the config, so a checkpoint made with other options says so.
"""
from __future__ import annotations

from dataclasses import dataclass

CLIP_AD_SIGMA, RES2CLIP_PENALTY = 8.0, 0.01


@dataclass(frozen=True)
class Behaviour:
    what: str  # the official code's behaviour
    reproduced: bool  # by this config
    option: str = ""  # the option that changes it ("" when none does)


def _clip_ad_activation(config) -> str:
    from aaclip.train.common.backbone import openai_weights
    from aaclip.train.families.clip_ad.config import native_image_size

    b = config.backbone
    return "quickgelu" if native_image_size(b.name) == config.image_size and openai_weights(b) else "gelu"


def clip_ad(config) -> list[Behaviour]:
    b = config.backbone
    act = _clip_ad_activation(config)
    where = ("OpenAI's loader (OpenAI weights at their native size): QuickGELU in both towers" if act == "quickgelu"
             else "OpenCLIP's plain config (other weights or sizes): exact GELU")
    return [
        Behaviour(f"backbone built by {where}", b.activation == act, "--activation gelu|quickgelu"),
        Behaviour("position embedding resized bicubic with antialias, class slot kept",
                  b.pos_embed_resize == "bicubic-antialias", "--pos-embed-resize"),
        Behaviour("DBSCAN representative vectors (eps 0.5, min_samples 15; VisA runs 1.5 / 25)",
                  config.rvs == "dbscan", "--set rvs=mean, --set dbscan_eps=..., --set dbscan_min_samples=..."),
        Behaviour("cluster mean cast to float16 and normalized in float16 (anchor norms 1 +- 5e-4)",
                  config.rvs != "dbscan" or config.anchor_precision == "float16", "--set anchor_precision=float32"),
        Behaviour("surgery sums restarted per stage, no input residual; taps N/4, N/2, 3N/4 read after the next "
                  "block's attention (the in-place add)", True),
        Behaviour("feature surgery without temperature, bilinear up-sampling (align_corners False)", True),
        Behaviour("scipy gaussian_filter, sigma 8, symmetric padding, truncate 4", config.sigma == CLIP_AD_SIGMA,
                  "--set sigma=2 (the VisA SDP+ and MVTec-trained runs)"),
        Behaviour("image score = test-set min-max of class score + of map maximum (aaclip-eval does it; a deployed "
                  "graph uses calibrated constants instead)", False),
    ]


def res2clip(config) -> list[Behaviour]:
    b = config.backbone
    return [
        Behaviour("OpenAI's loader at every size: QuickGELU in both towers, float32 parameters holding the "
                  "float16 values", b.activation == "quickgelu", "--activation gelu"),
        Behaviour("position embedding resized bilinear, no antialias, class slot kept",
                  b.pos_embed_resize == "bilinear", "--pos-embed-resize"),
        Behaviour("V-V path from block N/4 with the input residual, never reset; global feature = class token x "
                  "proj without ln_post", True),
        Behaviour(f"radial spatial penalty gamma {RES2CLIP_PENALTY}, sparsemax over the bank (here sort-free, equal "
                  "to the sorted one)", config.spatial_penalty == RES2CLIP_PENALTY, "--set spatial_penalty=..."),
        Behaviour("5x5 Gaussian (sigma 4) with zero padding, every branch blurred twice; top-1% image score", True),
        Behaviour("k = 1 normal reference per class", config.shots == 1, "--set shots=K"),
        Behaviour("the official 1-shot reference lists (data/few_shot_records)", False,
                  "copy the listed images into --reference-images DIR/<class>/"),
    ]


def official_behaviours(config) -> list[Behaviour]:
    """The list for ``config``'s family ([] for AA-CLIP: docs/method-choices.md covers it)."""
    if config.method.startswith("clip-ad"):
        return clip_ad(config)
    if config.method.startswith("res2clip"):
        return res2clip(config)
    return []


def markdown(method: str, behaviours: list[Behaviour]) -> list[str]:
    lines = [f"| {method}: official behaviour | default reproduces it | option that changes it |", "|---|---|---|"]
    lines += [f"| {b.what} | {'yes' if b.reproduced else 'no'} | {b.option or '-'} |" for b in behaviours]
    return lines


__all__ = ["Behaviour", "official_behaviours", "markdown"]
