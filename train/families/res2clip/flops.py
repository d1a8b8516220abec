"""FLOPs per image of the Res2CLIP graph (``Family.flops``), on top of the tower's (``aaclip.train.common.flops``):

    Res2CLIP  V-V in blocks D/4 .. D; 4 x proj 2 L W E (+ 2 W E global); per tap matching
              2 (2 L kL E); 5x5 blurs: 3 branch maps + the sum (2 * 25 * S^2 each); the text and
              residual scores are element-wise products (not counted);
              fine-tuned adapters: per conv adapter 2 L (E d + 3d d + d E) + 2 (9 d L)
              (d = E / reduction), residual adapter on g: 2 (E d + d E)
"""
from __future__ import annotations

from aaclip.train.common.flops import backbone_parts, geometry, report


def res2clip_flops(config) -> dict:
    g = geometry(config)
    W, L, E, S, k = g.width, g.patches, g.embed_dim, g.image_size, int(config.shots)
    taps, res_taps = 4, len(config.res_taps or ([0] * 4 if config.finetuned else [0]))
    parts = backbone_parts(g, g.layers - g.layers // 4 + 1)
    parts["projections"] = taps * 2 * L * W * E + 2 * W * E
    parts["matching"] = taps * 2 * (2 * L * k * L * E)
    parts["blur"] = 4 * 2 * 25 * S * S
    if config.finetuned:
        d = E // int(config.reduction)
        conv_adapter = 2 * L * (E * d + 3 * d * d + d * E) + 2 * (2 * 9 * d * L)
        parts["adapters"] = (taps + res_taps) * conv_adapter + 2 * (E * d + d * E)
    from aaclip.train.families.res2clip.bank import bank_bytes

    return report(g, parts, bank_bytes_per_class=bank_bytes(config))


__all__ = ["res2clip_flops"]
