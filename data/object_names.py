"""Human-readable object names per dataset class, used in the prompts (SPEC section 3).

Names follow the AA-CLIP reference where it uses descriptive names; users override any of them
(`--object-name class=name` in the commands, or the checkpoint config's `classes` table).
"""
from __future__ import annotations

from aaclip.data.synth import OBJECT_NAMES as SYNTHETIC  # the project's own synthetic products (aaclip-data synth)

MVTEC = {
    "bottle": "dark bottle",
    "cable": "cable",
    "capsule": "capsule",
    "carpet": "carpet",
    "grid": "grid",
    "hazelnut": "hazelnut",
    "leather": "leather",
    "metal_nut": "metal nut which has four notched edges",
    "pill": "pill",
    "screw": "screw",
    "tile": "tile",
    "toothbrush": "toothbrush",
    "transistor": "transistor",
    "wood": "wood",
    "zipper": "zipper",
}
VISA = {
    "candle": "candle",
    "capsules": "capsules",
    "cashew": "cashew",
    "chewinggum": "chewing gum",
    "fryum": "fryum",
    "macaroni1": "macaroni",
    "macaroni2": "macaroni",
    "pcb1": "printed circuit board",
    "pcb2": "printed circuit board",
    "pcb3": "printed circuit board",
    "pcb4": "printed circuit board",
    "pipe_fryum": "pipe fryum",
}
MPDD = {
    "bracket_black": "black bracket",
    "bracket_brown": "brown bracket",
    "bracket_white": "white bracket",
    "connector": "connector",
    "metal_plate": "metal plate",
    "tubes": "tubes",
}
BTAD = {"01": "product", "02": "product", "03": "product"}
# Medical sets: the reference uses the generic "scan" for every class.
MEDICAL = {
    "brain": "scan",
    "liver": "scan",
    "retina": "scan",
    "colon": "scan",
    "chest": "scan",
    "skin": "scan",
    "endoscopy": "scan",
}
TABLES = {"mvtec": MVTEC, "visa": VISA, "mpdd": MPDD, "btad": BTAD, "medical": MEDICAL, "synthetic": SYNTHETIC}


def object_name(class_name: str, overrides: dict[str, str] | None = None) -> str:
    """Object name for a class: user override, else a built-in table, else the class name itself."""
    if overrides and class_name in overrides:
        return overrides[class_name]
    for table in TABLES.values():
        if class_name in table:
            return table[class_name]
    return class_name.replace("_", " ")
