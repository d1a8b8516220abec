"""FLOPs per image of the CLIP-AD and Res2CLIP graphs, counted analytically from the config (``Family.flops``).

Same convention as AA-CLIP's count (``aaclip.train.flops``, ``torch.utils.flop_counter`` style): one
multiply-add is 2 FLOPs; only matrix multiplications and convolutions count (the patch embedding, every
Linear, the attention MatMuls, similarity MatMuls, the blur convolutions, the adapters' convolutions).
Element-wise work (LayerNorm, softmax, sparsemax's bisection, norms, up-sampling, top-k) is left out.
With W the visual width, N = L + 1 tokens, M the MLP width, E the embedding size, D blocks, G the grid,
S the image size:

    backbone (every block)  2 N W 3W + 2 (2 N^2 W) + 2 N W W + 2 (2 N W M)       (+ patch embed 2 L 3p^2 W)
    V-V path (per block)    2 (2 N^2 W) + 2 N W W    (its attention and output projection; the value
                                                      projection is shared with the original path)
    CLIP-AD                 V-V in all D blocks; 4 x ln_post/proj 2 N W E; 4 x similarities 2 N E 2;
                            SDP+: 4 x (2 L W E + 2 L E 2); blur: two 1-D convs of K = 2 int(4 sigma + 0.5) + 1
                            taps, each 2 K S^2
    Res2CLIP                V-V in blocks D/4 .. D; 4 x proj 2 L W E (+ 2 W E global); per tap matching
                            2 (2 L kL E); 5x5 blurs: 3 branch maps + the sum (2 * 25 * S^2 each); the text and
                            residual scores are element-wise products (not counted);
                            fine-tuned adapters: per conv adapter 2 L (E d + 3d d + d E) + 2 (9 d L)
                            (d = E / reduction), residual adapter on g: 2 (E d + d E)
"""
from __future__ import annotations

from dataclasses import asdict

from .flops import TowerGeometry as Geometry
from .flops import tower_geometry

CONVENTION = "2 FLOPs per multiply-add; matmuls and convolutions only (FlopCounterMode convention)"


def geometry(config) -> Geometry:
    """The image tower of ``config``'s backbone (``flops.tower_geometry``)."""
    return tower_geometry(config)[0]


def backbone_parts(g: Geometry, vv_blocks: int) -> dict[str, int]:
    W, N, L = g.width, g.tokens, g.patches
    M = int(round(g.mlp_ratio * W))
    return {
        "patch_embed": 2 * L * 3 * g.patch_size ** 2 * W,
        "qkv": g.layers * 2 * N * W * 3 * W,
        "attention": g.layers * 2 * (2 * N * N * W),
        "out_proj": g.layers * 2 * N * W * W,
        "mlp": g.layers * 2 * (2 * N * W * M),
        "vv_attention": vv_blocks * (2 * (2 * N * N * W) + 2 * N * W * W),
    }


def _report(g: Geometry, parts: dict[str, int], **extra) -> dict:
    parts["total"] = sum(parts.values())
    return {"geometry": asdict(g), "tokens": g.tokens, "breakdown": parts, "convention": CONVENTION, **extra}


def clip_ad_flops(config) -> dict:
    from .peer_ops import scipy_gaussian_kernel

    g = geometry(config)
    W, N, L, E, S = g.width, g.tokens, g.patches, g.embed_dim, g.image_size
    k = len(scipy_gaussian_kernel(config.sigma))
    parts = backbone_parts(g, g.layers)
    parts["projections"] = 4 * 2 * N * W * E
    parts["surgery"] = 4 * 2 * N * E * 2 + 2 * E * 2
    if config.method == "clip-ad-plus":
        parts["linear_layers"] = 4 * (2 * L * W * E + 2 * L * E * 2)
    parts["blur"] = 2 * (2 * k * S * S)
    return _report(g, parts)


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
    from .references import bank_bytes

    return _report(g, parts, bank_bytes_per_class=bank_bytes(config))


__all__ = ["clip_ad_flops", "res2clip_flops", "geometry", "backbone_parts", "Geometry"]
