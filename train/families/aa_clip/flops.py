"""FLOPs per image of the deployed AA-CLIP graph, counted analytically from the config (``Family.flops``).

Convention (the one of ``torch.utils.flop_counter.FlopCounterMode``, fvcore x 2): one multiply-add is
2 FLOPs, and only matrix multiplications and convolutions are counted. Element-wise work (LayerNorm,
GELU, softmax, the adapters' norm rescaling, L2-normalizations, pixel normalization, bilinear
up-sampling) is left out; it is well under 1% of the total for ViT-L.

With ``W`` the visual width, ``p`` the patch size, ``G = image_size / p`` the grid, ``L = G*G`` patch
tokens, ``N = L + 1`` tokens (class token), ``M = mlp_ratio * W``, ``E`` the embedding size, ``D`` blocks,
``K`` image adapters, ``n`` feature levels and a ``k``-tap blur with reflect padding ``k // 2``:

    patch embed (conv, no bias)  2 * L * (3 p^2) * W
    per block:  QKV projection   2 * N * W * 3W
                Q K^T            2 * N^2 * W          (summed over heads)
                attention x V    2 * N^2 * W
                out projection   2 * N * W * W
                MLP              2 * N * W * M  +  2 * N * M * W
    adapters                     K * 2 * N * W * W
    projections                  n * 2 * L * W * E  (patch heads)  +  2 * L * W * E  (detection head)
    post-processing              n * 2 * L * E * 2  (similarities)  +  2 * E * 2  (class score)
                                 + n * (2 k G (G + 2 (k // 2)) + 2 k G^2)  (separable blur convs)

All D blocks run (the deepest level taps the last block). The text tower is not in the graph: the text
anchors are computed once at export time.
"""
from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass

from aaclip.train.common.flops import TowerGeometry, tower_geometry


@dataclass(frozen=True)
class VisionGeometry(TowerGeometry):
    """AA-CLIP's: the tower plus its adapters, feature levels and blur."""

    adapters: int
    levels: int
    blur_kernel: int


def geometry_from_config(config) -> VisionGeometry:
    """The ``VisionGeometry`` of an ``AAClipConfig``."""
    from aaclip.train.common.constants import BLUR

    tower, cfg = tower_geometry(config)
    _, k_i = config.resolved_depths(int(cfg["text_cfg"]["layers"]), tower.layers)
    return VisionGeometry(**dataclasses.asdict(tower), adapters=int(k_i),
                          levels=len(config.resolved_levels(tower.layers)), blur_kernel=int(BLUR[config.domain][0]))


def flops_breakdown(g: VisionGeometry) -> dict[str, int]:
    """FLOPs per image by part (see the module docstring); ``total`` is their sum."""
    W, N, L, E, k, G = g.width, g.tokens, g.patches, g.embed_dim, g.blur_kernel, g.grid
    M = int(round(g.mlp_ratio * W))
    pad = k // 2
    parts = {
        "patch_embed": 2 * L * 3 * g.patch_size ** 2 * W,
        "qkv": g.layers * 2 * N * W * 3 * W,
        "attention": g.layers * 2 * (2 * N * N * W),
        "out_proj": g.layers * 2 * N * W * W,
        "mlp": g.layers * 2 * (2 * N * W * M),
        "adapters": g.adapters * 2 * N * W * W,
        "projections": (g.levels + 1) * 2 * L * W * E,
        "post_processing": g.levels * (2 * L * E * 2 + 2 * k * G * (G + 2 * pad) + 2 * k * G * G) + 2 * E * 2,
    }
    parts["total"] = sum(parts.values())
    return parts


def model_flops(config) -> int:
    """FLOPs per image of the deployed graph for an ``AAClipConfig`` (multiply-add = 2 FLOPs)."""
    return flops_breakdown(geometry_from_config(config))["total"]


def flops_report(config) -> dict:
    """Geometry, breakdown and total, for the benchmark's JSON."""
    g = geometry_from_config(config)
    return {"geometry": asdict(g), "tokens": g.tokens, "breakdown": flops_breakdown(g),
            "convention": "2 FLOPs per multiply-add; matmuls and convolutions only (FlopCounterMode convention)"}


__all__ = ["VisionGeometry", "geometry_from_config", "flops_breakdown", "model_flops", "flops_report"]
