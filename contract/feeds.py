"""Frames (+ class ids) -> the input dictionary of any runner, written once into preallocated buffers.

``FeedBuilder`` holds the batch of one artifact: ``put(i, frame, class_id)`` fits a camera frame into
slot ``i`` (the only resize the runtime does, ``fit_frame``) and ``feeds(n)`` returns the inputs for the
first ``n`` slots, padded to the engine profile's minimum batch by repeating the last frame (its results
are ignored). The buffers can be lent by the runner (TensorRT's page-locked host memory), so a frame's
pixels are written exactly once on their way to the device.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Iterator, Optional, Sequence

import cv2
import numpy as np

from .errors import UserError
from .tensors import CLASS_INPUT_NAME, INPUT_NAME

if TYPE_CHECKING:
    from .manifest import Manifest

Allocate = Callable[[str, tuple, np.dtype], np.ndarray]


def fit_frame(frame: np.ndarray, height: int, width: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """``frame`` (H, W, 3 uint8 BGR; grey and BGRA accepted) at ``height`` x ``width``, into ``out`` when given.

    Shrinking uses ``cv2.INTER_AREA`` (no aliasing), enlarging ``cv2.INTER_CUBIC``; a frame already at
    the right size is copied as is. The aspect ratio is not kept: export with ``--input-size`` to bake
    the camera resolution into the graph when that matters.
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


def _zeros(_name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
    return np.zeros(shape, dtype)


class FeedBuilder:
    """Preallocated inputs of one artifact for batches of up to ``batch`` frames."""

    def __init__(self, spec: "Manifest", batch: int, allocate: Allocate = _zeros):
        """``spec``: the artifact's manifest (what is read of it: height, width, batch_min, batch_max,
        class_input, classes)."""
        if batch < 1:
            raise UserError(f"--batch must be >= 1, got {batch}")
        if spec.batch_max is not None and batch > spec.batch_max:
            raise UserError(f"--batch {batch} exceeds the artifact's max batch {spec.batch_max}; lower --batch or "
                            "rebuild the engine with a larger batch profile")
        self.spec = spec
        self.batch = batch
        rows = max(batch, spec.batch_min)
        self.images = allocate(INPUT_NAME, (rows, spec.height, spec.width, 3), np.dtype(np.uint8))
        self.class_ids = allocate(CLASS_INPUT_NAME, (rows,), np.dtype(np.int64)) if spec.class_input else None
        self._feeds = {}
        for n in range(1, rows + 1):
            feed = {INPUT_NAME: self.images[:n]}
            if self.class_ids is not None:
                feed[spec.class_input] = self.class_ids[:n]
            self._feeds[n] = feed

    def slot(self, i: int) -> np.ndarray:
        """The (H, W, 3) uint8 buffer of frame ``i`` (write a frame there yourself, or use ``put``)."""
        return self.images[i]

    def set_class(self, i: int, class_id: int) -> None:
        if self.class_ids is None:
            return
        if not 0 <= int(class_id) < len(self.spec.classes):
            raise UserError(f"class id {class_id} is outside 0..{len(self.spec.classes) - 1} "
                            f"({', '.join(self.spec.classes)})")
        self.class_ids[i] = class_id

    def put(self, i: int, frame: np.ndarray, class_id: int = 0) -> None:
        """Fit ``frame`` into slot ``i`` (one write) and record its class."""
        if frame.dtype != np.uint8 or frame.ndim not in (2, 3):
            raise UserError(f"frames must be uint8 images (H, W[, 3]) as OpenCV delivers them, got {frame.dtype} "
                            f"{frame.shape}")
        fit_frame(frame, self.spec.height, self.spec.width, out=self.images[i])
        self.set_class(i, class_id)

    def feeds(self, n: int) -> dict[str, np.ndarray]:
        """Inputs for the first ``n`` slots, padded to the profile's minimum batch (results beyond ``n``:
        ignore them)."""
        if not 1 <= n <= self.batch:
            raise ValueError(f"a batch of {n} frames does not fit this builder (1..{self.batch})")
        rows = max(n, self.spec.batch_min)
        if rows > n:
            self.images[n:rows] = self.images[n - 1]
            if self.class_ids is not None:
                self.class_ids[n:rows] = self.class_ids[n - 1]
        return self._feeds[rows]

    def batches(self, frames: Sequence[np.ndarray], class_ids: Optional[Sequence[int]] = None
                ) -> Iterator[tuple[slice, dict[str, np.ndarray]]]:
        """For a whole set of frames: (which frames, their feeds) per batch. The feeds are this builder's
        buffers, overwritten by the next batch."""
        ids = [0] * len(frames) if class_ids is None else list(class_ids)
        if len(ids) != len(frames):
            raise UserError(f"give one class id per frame ({len(frames)} frames, {len(ids)} class ids)")
        for start in range(0, len(frames), self.batch):
            part = range(start, min(start + self.batch, len(frames)))
            for i, k in enumerate(part):
                self.put(i, frames[k], ids[k])
            yield slice(part.start, part.stop), self.feeds(len(part))
