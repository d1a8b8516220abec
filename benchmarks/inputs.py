"""The frames every row runs on, and the synthetic video the end-to-end loop decodes.

All rows use the same frames: ``bench_frames`` renders a product moving on a conveyor (with defects on
some frames) at the model resolution, BGR uint8 as a camera delivers them. The loop reads the same
frames back from an MJPG video file, so decoding is part of its measurement.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import numpy as np
from aaclip.contract.errors import UserError

DEFAULT_CLASS = "disk"
VIDEO_FOURCC = "MJPG"


def bench_frames(size: int, n: int, seed: int = 0, class_name: str = DEFAULT_CLASS,
                 frame_hw: Optional[tuple[int, int]] = None) -> np.ndarray:
    """``n`` distinct frames (n, H, W, 3) uint8 BGR; every third one has a defect.

    ``frame_hw`` renders at another (camera) resolution than ``size`` (the loop resizes them).
    """
    import cv2
    from aaclip.data.synth import synthetic_video_frames

    frames, _ = synthetic_video_frames(class_name, n, set(range(1, n, 3)), size, seed=seed)
    if frame_hw is not None and tuple(frame_hw) != (size, size):
        frames = [cv2.resize(f, (frame_hw[1], frame_hw[0]), interpolation=cv2.INTER_CUBIC) for f in frames]
    return np.ascontiguousarray(np.stack(frames))


def batch_of(frames: np.ndarray, batch: int, start: int = 0) -> np.ndarray:
    """A contiguous batch of ``batch`` frames taken in turn from ``frames`` (wrapping around)."""
    idx = [(start + i) % len(frames) for i in range(batch)]
    return np.ascontiguousarray(frames[idx])


def write_video(frames: np.ndarray, path: Path, n_frames: int, fps: float = 30.0) -> Path:
    """Write ``n_frames`` frames (cycling through ``frames``) to an MJPG ``.avi`` at ``path``."""
    import cv2

    path = Path(path)
    h, w = frames.shape[1:3]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), fps, (w, h))
    if not writer.isOpened():
        raise UserError(f"OpenCV cannot write an {VIDEO_FOURCC} video at {path}: is OpenCV built with its "
                        "video I/O (opencv-python, not opencv-python-headless without FFmpeg)?")
    try:
        for i in range(n_frames):
            writer.write(frames[i % len(frames)])
    finally:
        writer.release()
    return path


__all__ = ["bench_frames", "batch_of", "write_video", "DEFAULT_CLASS"]
