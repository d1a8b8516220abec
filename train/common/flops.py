"""FLOPs of an OpenCLIP ViT image tower, counted analytically from a config: what every family's count
(``Family.flops``) starts from; each family adds its own parts in its folder (``families/<family>/flops.py``).

One multiply-add is 2 FLOPs; only matrix multiplications and convolutions count (the patch embedding,
every Linear, the attention MatMuls), the convention of ``torch.utils.flop_counter.FlopCounterMode``.
With W the visual width, N = L + 1 tokens, M the MLP width, D blocks:

    backbone (every block)  2 N W 3W + 2 (2 N^2 W) + 2 N W W + 2 (2 N W M)       (+ patch embed 2 L 3p^2 W)
    V-V path (per block)    2 (2 N^2 W) + 2 N W W    (its attention and output projection; the value
                                                      projection is shared with the original path)
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

CONVENTION = "2 FLOPs per multiply-add; matmuls and convolutions only (FlopCounterMode convention)"


@dataclass(frozen=True)
class TowerGeometry:
    """An OpenCLIP ViT image tower at a resolution: what every family's FLOP count starts from."""

    image_size: int
    patch_size: int
    width: int
    layers: int
    mlp_ratio: float
    embed_dim: int

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def patches(self) -> int:
        return self.grid * self.grid

    @property
    def tokens(self) -> int:
        return self.patches + 1


def tower_geometry(config) -> tuple[TowerGeometry, dict]:
    """The tower of ``config``'s backbone (read from its OpenCLIP model config; no model is built) and that
    model config."""
    import open_clip
    from aaclip.contract.errors import UserError

    from aaclip.train.common import backbone as _backbone  # noqa: F401 - registers the project's model configs

    cfg = open_clip.get_model_config(config.backbone.name)
    if cfg is None:
        raise UserError(f"unknown OpenCLIP model {config.backbone.name!r}: see open_clip.list_models()")
    vision = cfg["vision_cfg"]
    if not isinstance(vision.get("layers"), int) or "patch_size" not in vision:
        raise UserError(f"{config.backbone.name} is not a plain ViT image tower; FLOPs are counted for ViTs only")
    tower = TowerGeometry(image_size=int(config.image_size), patch_size=int(vision["patch_size"]),
                          width=int(vision["width"]), layers=int(vision["layers"]),
                          mlp_ratio=float(vision.get("mlp_ratio", 4.0)), embed_dim=int(cfg["embed_dim"]))
    return tower, cfg


def geometry(config) -> TowerGeometry:
    """The image tower of ``config``'s backbone (``tower_geometry``)."""
    return tower_geometry(config)[0]


def backbone_parts(g: TowerGeometry, vv_blocks: int) -> dict[str, int]:
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


def report(g: TowerGeometry, parts: dict[str, int], **extra) -> dict:
    parts["total"] = sum(parts.values())
    return {"geometry": asdict(g), "tokens": g.tokens, "breakdown": parts, "convention": CONVENTION, **extra}


__all__ = ["TowerGeometry", "tower_geometry", "geometry", "backbone_parts", "report", "CONVENTION"]
