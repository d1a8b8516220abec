"""Image and mask pre-processing of SPEC section 1, as the reference does it.

RGB, PIL bicubic resize of the 8-bit image straight to size x size (no crop, no aspect keeping),
/255, CLIP mean/std. Masks: nearest resize, binarized (mask != 0).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from aaclip.contract.errors import UserError
from PIL import Image, UnidentifiedImageError

from aaclip.train.common.constants import CLIP_MEAN, CLIP_STD

_MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
_STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def _open(path: Path, mode: str) -> Image.Image:
    try:
        with Image.open(path) as img:
            return img.convert(mode)
    except FileNotFoundError as exc:
        raise UserError(f"image not found: {path}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise UserError(f"cannot decode image {path} ({exc}): the file is corrupt or not an image") from exc


def load_rgb(path: Path, size: int) -> np.ndarray:
    """(size, size, 3) uint8 RGB, PIL bicubic resize."""
    img = _open(Path(path), "RGB")
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.array(img, dtype=np.uint8)


def load_mask(path: Path | None, size: int) -> np.ndarray:
    """(size, size) float32 in {0, 1}; an all-zero mask when path is None (normal images)."""
    if path is None:
        return np.zeros((size, size), np.float32)
    img = _open(Path(path), "L")
    if img.size != (size, size):
        img = img.resize((size, size), Image.NEAREST)
    return (np.asarray(img) != 0).astype(np.float32)


def to_unit_tensor(rgb: np.ndarray) -> torch.Tensor:
    """uint8 (H, W, 3) RGB -> float (3, H, W) in [0, 1]."""
    return torch.from_numpy(np.array(rgb, dtype=np.uint8, copy=True)).permute(2, 0, 1).float() / 255.0


def normalize(unit: torch.Tensor) -> torch.Tensor:
    """CLIP mean/std normalization of a (..., 3, H, W) tensor in [0, 1]."""
    return (unit - _MEAN.to(unit.device)) / _STD.to(unit.device)
