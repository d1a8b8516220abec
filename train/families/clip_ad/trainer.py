"""SDP+ training (SPEC-peers.md 1.5, ``CA:train.py`` + ``train_SDP_plus.sh``), resumable.

CLIP frozen; only the four linear layers train. Adam (lr 1e-4 as the script, default betas, no weight
decay, no scheduler), 5 epochs, batch 8, seed 42, no augmentation and no shuffling (the official loader's
order). Loss per tap on the up-sampled 2-channel softmax (``ClipAd.linear_logits``): focal (gamma 2,
class weights 1) + dice of the anomaly channel against the mask, summed over the taps. Text anchors of
the training classes (with the config's DBSCAN settings) are computed once. One phase of the training
driver (``aaclip.train.common.driver``: resume, checkpoints and history after every epoch, progress,
signals); each epoch re-seeds from (seed, epoch), so a resumed run ends where an uninterrupted one would.

The official script validates every epoch on the target test set and the paper reports the best epoch
(selection on test data); this trainer keeps the last epoch (docs/method-choices.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from aaclip.data.records import Record
from torch.utils.data import DataLoader

from aaclip.train.common.dataset import AnomalyDataset
from aaclip.train.common.driver import Driver, Phase, RunOptions, name_classes
from aaclip.train.common.losses import dice_loss, focal_loss
from aaclip.train.families.clip_ad.config import object_name


@dataclass
class ClipAdOptions(RunOptions):
    epochs: int = 5
    batch: int = 8
    lr: float = 1e-4
    seed: int = 42  # the official script's

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch < 1 or not self.lr > 0:
            raise ValueError("epochs and batch must be >= 1 and lr > 0")


def sdp_plus_loss(model, images: torch.Tensor, masks: torch.Tensor, anchors: torch.Tensor) -> torch.Tensor:
    """Sum over taps of focal(softmax(up(100 V T)), mask) + dice(anomaly channel, mask); anchors (B, E, 2)."""
    with torch.no_grad():
        _, original = model.encode_image(images)
    size = tuple(masks.shape[-2:])
    loss = images.new_zeros(())
    for logits in model.linear_logits(original, anchors):
        probs = torch.softmax(F.interpolate(logits, size=size, mode="bilinear", align_corners=True), dim=1)
        loss = loss + focal_loss(probs, masks) + dice_loss(probs[:, 1], masks)
    return loss


class ClipAdTrainer(Driver):
    def __init__(self, model, records: Sequence[Record], root: Path, out_dir: Path, options: ClipAdOptions):
        super().__init__(model, out_dir, options)
        self.classes, self.names = name_classes(model, records, object_name)
        self.data = AnomalyDataset(records, root, model.config.image_size, self.classes)
        self.anchors: Optional[torch.Tensor] = None

    def phases(self) -> list[Phase]:
        return [Phase(1, self.options.epochs, "sdp+", "SDP+")]

    def fresh_start(self) -> None:
        self.model.linear_layers.reset(self.options.seed)  # a new run starts from the seed's initialization

    def optimizers(self, phase: Phase):
        params = list(self.model.linear_layers.parameters())
        for p in params:
            p.requires_grad_(True)
        return {"main": torch.optim.Adam(params, lr=self.options.lr)}, {}

    def begin(self, phase: Phase) -> None:
        with torch.no_grad():
            self.anchors = self.model.text_anchors(self.names).to(self.device)

    def batches(self, phase: Phase, epoch: int) -> DataLoader:
        torch.manual_seed(self.options.seed * 1000 + epoch)
        return DataLoader(self.data, batch_size=self.options.batch, shuffle=False, num_workers=0)

    def step(self, phase: Phase, batch: dict, optimizers: dict, schedulers: dict) -> dict[str, float]:
        loss = sdp_plus_loss(self.model, batch["image"].to(self.device), batch["mask"].to(self.device),
                             self.anchors[batch["class_index"].to(self.device)])
        return {"loss": self.update(optimizers["main"], loss)}


__all__ = ["ClipAdOptions", "ClipAdTrainer", "sdp_plus_loss"]
