"""Torch dataset over JSON-lines records, with the joint image/mask augmentation of SPEC section 6."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torchvision.transforms.v2.functional as TF
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode

from aaclip.train.common.preprocess import load_mask, load_rgb, normalize, to_unit_tensor
from aaclip.data.records import Record, resolve

ROTATE_MAX_DEG = 30.0
TRANSLATE_MAX = 0.15
GEOMETRIC_P = 0.5
JITTER = 0.5  # brightness, contrast, saturation factors drawn from [1 - 0.5, 1 + 0.5]
JITTER_P = 0.7


def _chance(p: float) -> bool:
    return bool(torch.rand(()) < p)


def _uniform(lo: float, hi: float) -> float:
    return float(lo + (hi - lo) * torch.rand(()))


def augment_pair(image: torch.Tensor, mask: torch.Tensor, color: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random rotation/translation/flips applied jointly to image (3,H,W) in [0,1] and mask (H,W)."""
    m = mask.unsqueeze(0)
    if _chance(GEOMETRIC_P):
        angle = _uniform(-ROTATE_MAX_DEG, ROTATE_MAX_DEG)
        image = TF.rotate(image, angle, interpolation=InterpolationMode.BILINEAR)
        m = TF.rotate(m, angle, interpolation=InterpolationMode.NEAREST)
    if _chance(GEOMETRIC_P):
        h, w = image.shape[-2:]
        shift = [round(_uniform(-TRANSLATE_MAX, TRANSLATE_MAX) * w), round(_uniform(-TRANSLATE_MAX, TRANSLATE_MAX) * h)]
        image = TF.affine(image, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR)
        m = TF.affine(m, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0], interpolation=InterpolationMode.NEAREST)
    if _chance(GEOMETRIC_P):
        image, m = TF.horizontal_flip(image), TF.horizontal_flip(m)
    if _chance(GEOMETRIC_P):
        image, m = TF.vertical_flip(image), TF.vertical_flip(m)
    if color and _chance(JITTER_P):
        image = TF.adjust_brightness(image, _uniform(1 - JITTER, 1 + JITTER))
        image = TF.adjust_contrast(image, _uniform(1 - JITTER, 1 + JITTER))
        image = TF.adjust_saturation(image, _uniform(1 - JITTER, 1 + JITTER))
    return image.clamp(0.0, 1.0), m.squeeze(0)


class AnomalyDataset(Dataset):
    """Items: image (3,H,W) normalized, mask (H,W) in {0,1}, label, class index, image path, and
    ``pixels_known`` (False for an anomaly without a mask: its all-zero mask is a placeholder, not a label)."""

    def __init__(self, records: Sequence[Record], root: Path, image_size: int, classes: Sequence[str],
                 augment: bool = False, color_jitter: bool = False):
        self.records = list(records)
        self.root = Path(root)
        self.size = image_size
        self.class_index = {name: i for i, name in enumerate(classes)}
        self.augment = augment
        self.color_jitter = color_jitter
        unknown = sorted({r.class_name for r in self.records} - set(self.class_index))
        if unknown:
            raise ValueError(f"records name classes {unknown} missing from the class table {list(classes)}")

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        r = self.records[i]
        image = to_unit_tensor(load_rgb(resolve(self.root, r.image_path), self.size))
        mask_path = resolve(self.root, r.mask_path) if r.mask_path else None
        mask = torch.from_numpy(load_mask(mask_path, self.size))
        if self.augment:
            image, mask = augment_pair(image, mask, self.color_jitter)
        return {
            "image": normalize(image),
            "mask": mask,
            "label": torch.tensor(r.label),
            "class_index": torch.tensor(self.class_index[r.class_name]),
            "path": r.image_path,
            "pixels_known": torch.tensor(r.pixels_known),
        }
