"""Two-stage AA-CLIP training (SPEC section 6), resumable and deterministic on CPU for a seed.

Stage 1 trains the text adapters and projection against frozen V-V-attention visual features;
stage 2 freezes the resulting anchors and trains the image adapters and projections. The stages are
the phases of the training driver (``aaclip.train.common.driver``: resume, checkpoints and history after
every epoch, progress, signals). Each epoch re-seeds its shuffling and augmentation from (seed, stage,
epoch), so a resumed run reproduces an uninterrupted one exactly.

Image-level labels: the pixel losses (focal + dice) use only images whose pixels are known (normal
images and anomalies with masks); an anomaly without a mask trains through the image losses: stage 2's
classification loss (every image) and, in both stages, the map-maximum loss (``losses.map_max_loss``)
on each level. With a mask for every anomaly the losses are exactly SPEC section 6's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
from aaclip.data.object_names import object_name
from aaclip.data.records import Record
from torch.utils.data import DataLoader

from aaclip.train.common import maps
from aaclip.train.common.constants import default_vv_blocks
from aaclip.train.common.dataset import AnomalyDataset
from aaclip.train.common.driver import Driver, Phase, RunOptions, name_classes
from aaclip.train.common.losses import DISENTANGLE_WEIGHT, classification_loss, disentangle_loss, map_max_loss, segmentation_loss
from aaclip.train.common.vv_attention import VV_MODES, stage1_visual_features
from aaclip.train.families.aa_clip.model import AAClip

log = logging.getLogger(__name__)


@dataclass
class TrainOptions(RunOptions):
    stage1_epochs: int = 5
    stage1_lr: float = 1e-5
    stage1_batch: int = 16
    stage2_epochs: int = 20
    stage2_lr: float = 5e-4
    stage2_batch: int = 2
    betas: tuple[float, float] = (0.5, 0.999)
    milestones: tuple[int, ...] = (16000, 32000)  # stage-2 iterations
    lr_gamma: float = 0.5
    stage1_levels: str = "last"  # "last": reference behaviour; "all": the paper's description
    vv_mode: str = "reference"  # "reference": attention across the batch; "tokens": over tokens
    vv_blocks: Optional[int] = None  # None: the last 19/24 of the visual blocks
    stages: tuple[int, ...] = (1, 2)
    amp: bool = False  # bf16 autocast on CUDA

    def __post_init__(self) -> None:
        if self.stage1_levels not in ("last", "all"):
            raise ValueError("stage1_levels must be 'last' or 'all'")
        if self.vv_mode not in VV_MODES:
            raise ValueError(f"vv_mode must be one of {VV_MODES}")


def _seed_epoch(seed: int, stage: int, epoch: int) -> torch.Generator:
    s = seed * 1000 + stage * 100 + epoch
    torch.manual_seed(s)
    return torch.Generator().manual_seed(s)


class Trainer(Driver):
    def __init__(self, model: AAClip, records: Sequence[Record], root: Path, out_dir: Path, options: TrainOptions):
        super().__init__(model, out_dir, options)
        # every trained class gets an object name in the checkpoint table
        self.classes, self.object_names = name_classes(model, records, object_name)
        self.records = list(records)
        self.root = Path(root)
        self.size = model.config.image_size
        self.anchors_all: Optional[torch.Tensor] = None

    # ---- the driver's phases: the two stages ------------------------------------------------------
    def phases(self) -> list[Phase]:
        o = self.options
        return [Phase(stage, o.stage1_epochs if stage == 1 else o.stage2_epochs, stage, f"stage {stage}")
                for stage in o.stages]

    def start(self) -> None:
        self._log_supervision()

    def optimizers(self, phase: Phase):
        o, stage = self.options, phase.number
        params = self.model.text_parameters() if stage == 1 else self.model.image_parameters()
        opt = torch.optim.Adam(params, lr=o.stage1_lr if stage == 1 else o.stage2_lr, betas=o.betas)
        milestones = list(o.milestones) if stage == 2 else []
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=milestones, gamma=o.lr_gamma)
        return {"main": opt}, {"main": sched}

    def begin(self, phase: Phase) -> None:
        self._set_trainable(phase.number)
        self.anchors_all = None
        if phase.number == 2:
            with torch.no_grad():
                self.anchors_all = self.model.text_anchors(self.object_names).to(self.device)

    def batches(self, phase: Phase, epoch: int) -> DataLoader:
        o, stage = self.options, phase.number
        ds = AnomalyDataset(self.records, self.root, self.size, self.classes, augment=True, color_jitter=stage == 2)
        gen = _seed_epoch(o.seed, stage, epoch)
        batch = o.stage1_batch if stage == 1 else o.stage2_batch
        return DataLoader(ds, batch_size=batch, shuffle=True, generator=gen, num_workers=0, drop_last=False)

    def step(self, phase: Phase, batch: dict, optimizers: dict, schedulers: dict) -> dict[str, float]:
        with self._autocast():
            loss = self.stage1_loss(batch) if phase.number == 1 else self.stage2_loss(batch, self.anchors_all)
        return {"loss": self.update(optimizers["main"], loss, schedulers["main"] if phase.number == 2 else None)}

    def _autocast(self):
        enabled = self.options.amp and self.device.type == "cuda"
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16, enabled=enabled)

    # ---- stage 1: text adapters -------------------------------------------------------------------
    def stage1_loss(self, batch: dict) -> torch.Tensor:
        o, m = self.options, self.model
        images = batch["image"].to(self.device)
        idx = batch["class_index"].to(self.device)
        vv = o.vv_blocks or default_vv_blocks(len(m.clip.visual.transformer.resblocks))
        feats = stage1_visual_features(m.clip, images, m.levels, vv, o.vv_mode)
        used, inverse = torch.unique(idx, return_inverse=True)
        anchors = m.text_anchors([self.object_names[i] for i in used.tolist()])[inverse]  # (B, E, 2)
        levels = feats if o.stage1_levels == "all" else feats[-1:]
        loss = sum(self._map_losses(V, anchors, batch) for V in levels)
        return loss + DISENTANGLE_WEIGHT * disentangle_loss(anchors)

    def _map_losses(self, V: torch.Tensor, anchors: torch.Tensor, batch: dict) -> torch.Tensor:
        """One level's pixel losses on the images with known pixels, map-maximum loss on the others."""
        m, size = self.model, (self.size, self.size)
        known = batch["pixels_known"].to(self.device)
        mask = batch["mask"].to(self.device)
        if bool(known.all()):  # every pixel labelled: SPEC section 6's losses exactly
            return segmentation_loss(maps.train_probabilities(V, anchors, m.grid, size), mask)
        loss = map_max_loss(maps.similarity(V[~known], anchors[~known]), batch["label"].to(self.device)[~known])
        if bool(known.any()):
            loss = loss + segmentation_loss(maps.train_probabilities(V[known], anchors[known], m.grid, size), mask[known])
        return loss

    # ---- stage 2: image adapters ------------------------------------------------------------------
    def stage2_loss(self, batch: dict, anchors_all: torch.Tensor) -> torch.Tensor:
        m = self.model
        images = batch["image"].to(self.device)
        anchors = anchors_all[batch["class_index"].to(self.device)]
        V, d = m.encode_image(images)
        loss = classification_loss(maps.cls_logits(d, anchors), batch["label"].to(self.device))
        for v in V:
            loss = loss + self._map_losses(v, anchors, batch)
        return loss

    def _log_supervision(self) -> None:
        """Say which images train the pixel losses and which only the image losses."""
        n = len(self.records)
        unmasked = sum(not r.pixels_known for r in self.records)
        if unmasked == 0:
            log.info("training on %d images (%d anomalous), every pixel labelled: pixel and image losses on all",
                     n, sum(r.label for r in self.records))
        else:
            log.info("training on %d images: pixel losses on the %d with known pixels (normal images and anomalies "
                     "with masks); %d anomalies without masks train the image losses only (classification, "
                     "map maximum)", n, n - unmasked, unmasked)

    def _set_trainable(self, stage: int) -> None:
        self.model.requires_grad_(False)
        for p in self.model.text_parameters() if stage == 1 else self.model.image_parameters():
            p.requires_grad_(True)


__all__ = ["TrainOptions", "Trainer"]
