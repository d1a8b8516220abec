"""FLOPs per image of the CLIP-AD graph (``Family.flops``), on top of the tower's (``aaclip.train.common.flops``):

    CLIP-AD   V-V in all D blocks; 4 x ln_post/proj 2 N W E; 4 x similarities 2 N E 2;
              SDP+: 4 x (2 L W E + 2 L E 2); blur: two 1-D convs of K = 2 int(4 sigma + 0.5) + 1
              taps, each 2 K S^2
"""
from __future__ import annotations

from aaclip.train.common.flops import backbone_parts, geometry, report


def clip_ad_flops(config) -> dict:
    from aaclip.train.common.peer_ops import scipy_gaussian_kernel

    g = geometry(config)
    W, N, L, E, S = g.width, g.tokens, g.patches, g.embed_dim, g.image_size
    k = len(scipy_gaussian_kernel(config.sigma))
    parts = backbone_parts(g, g.layers)
    parts["projections"] = 4 * 2 * N * W * E
    parts["surgery"] = 4 * 2 * N * E * 2 + 2 * E * 2
    if config.method == "clip-ad-plus":
        parts["linear_layers"] = 4 * (2 * L * W * E + 2 * L * E * 2)
    parts["blur"] = 2 * (2 * k * S * S)
    return report(g, parts)


__all__ = ["clip_ad_flops"]
