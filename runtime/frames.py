"""Fitting camera frames to the artifact's input size (the only resize the runtime does)."""
from __future__ import annotations

from typing import Optional

import cv2
import numpy as np


def fit_frame(frame: np.ndarray, height: int, width: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """Return ``frame`` (H, W, 3 uint8 BGR) at ``height`` x ``width``, written into ``out`` when given.

    Shrinking uses ``cv2.INTER_AREA`` (no aliasing), enlarging ``cv2.INTER_CUBIC``; a frame already at
    the right size is copied as is. The aspect ratio is not kept: export with ``--input-size`` to bake
    the camera resolution into the graph when that matters. ``out`` (e.g. one slot of a preallocated
    batch) avoids a per-frame allocation.
    """
    if frame.ndim == 2:  # grey cameras deliver one channel
        frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    elif frame.shape[2] == 4:
        frame = cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        if out is None:
            return frame
        np.copyto(out, frame)
        return out
    interp = cv2.INTER_AREA if h * w > height * width else cv2.INTER_CUBIC
    if out is None:
        return cv2.resize(frame, (width, height), interpolation=interp)
    cv2.resize(frame, (width, height), dst=out, interpolation=interp)
    return out
