"""The graph contract's tensors (docs/graph-contract.md): names, dtypes and layouts of every artifact's I/O.

Every method's graph takes uint8 NHWC BGR frames (+ int64 class ids when it holds several classes) and
returns the raw anomaly map, its per-image maximum and the classification score. Nothing else in the
project spells these names.
"""
from __future__ import annotations

INPUT_NAME = "image"
INPUT_DTYPE = "uint8"
INPUT_LAYOUT = "NHWC"
INPUT_COLOR = "BGR"
CLASS_INPUT_NAME = "class_id"
CLASS_INPUT_DTYPE = "int64"

MAP_OUTPUT = "anomaly_map"   # float32 (B, Hm, Wm)
MAX_OUTPUT = "map_max"       # float32 (B,)
CLS_OUTPUT = "cls_score"     # float32 (B,)
OUTPUT_NAMES = (MAP_OUTPUT, MAX_OUTPUT, CLS_OUTPUT)
SCORE_OUTPUTS = (MAX_OUTPUT, CLS_OUTPUT)  # what a loop needs for decisions (no map copy)
OUTPUT_DTYPE = "float32"


def output_specs(image_size: int) -> list[dict]:
    """The manifest's ``outputs`` list for a graph whose maps are ``image_size`` squared."""
    size = int(image_size)
    return [
        {"name": MAP_OUTPUT, "dtype": OUTPUT_DTYPE, "shape": ["B", size, size]},
        {"name": MAX_OUTPUT, "dtype": OUTPUT_DTYPE, "shape": ["B"]},
        {"name": CLS_OUTPUT, "dtype": OUTPUT_DTYPE, "shape": ["B"]},
    ]


def input_spec(height: int, width: int, batch: "tuple[int, int, int] | None" = None) -> dict:
    """The manifest's ``input`` block."""
    return {"name": INPUT_NAME, "dtype": INPUT_DTYPE, "layout": INPUT_LAYOUT, "color": INPUT_COLOR,
            "height": int(height), "width": int(width),
            "batch": None if batch is None else {"min": batch[0], "opt": batch[1], "max": batch[2]}}


def class_input_spec(num_classes: int) -> "dict | None":
    """The manifest's ``class_input`` block: present only when the artifact holds several classes."""
    return {"name": CLASS_INPUT_NAME, "dtype": CLASS_INPUT_DTYPE} if num_classes > 1 else None
