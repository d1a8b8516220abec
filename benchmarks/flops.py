"""FLOPs per image of a checkpoint's deployed graph: its model family's analytic count (``Family.flops``).

AA-CLIP's count (``VisionGeometry`` ... ``model_flops``) lives with the family in ``aaclip.train.families.aa_clip.flops``.
"""
from __future__ import annotations

from aaclip.contract.errors import UserError
from aaclip.train.families import get_family


def flops_report(config) -> dict:
    """``{"breakdown": {..., "total": int}, "convention": str, ...}`` of ``config``'s family."""
    family = get_family(config.method)
    if family.flops is None:
        raise UserError(f"method {family.name!r} has no FLOP count (Family.flops): benchmark it with a family "
                        "that defines one")
    return family.flops(config)


__all__ = ["flops_report"]
