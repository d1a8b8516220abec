"""SDP+ training (SPEC-peers.md 1.5, ``CA:train.py`` + ``train_SDP_plus.sh``), resumable.

CLIP frozen; only the four linear layers train. Adam (lr 1e-4 as the script, default betas, no weight
decay, no scheduler), 5 epochs, batch 8, seed 42, no augmentation and no shuffling (the official loader's
order). Loss per tap on the up-sampled 2-channel softmax (``ClipAd.linear_logits``): focal (gamma 2,
class weights 1) + dice of the anomaly channel against the mask, summed over the taps. Text anchors of
the training classes (with the config's DBSCAN settings) are computed once. After every epoch the
checkpoint and ``train_state.pt`` (weights, optimizer, epoch) are written; a run in the same folder
continues after the last finished epoch and ends where an uninterrupted run would.

The official script validates every epoch on the target test set and the paper reports the best epoch
(selection on test data); this trainer keeps the last epoch (docs/method-choices.md).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from aaclip.contract.files import atomic_path, atomic_write_text
from torch.utils.data import DataLoader

from aaclip.train.common.checkpoint_files import HISTORY_FILE, STATE_FILE, save_checkpoint
from aaclip.train.common.dataset import AnomalyDataset
from aaclip.train.common.losses import dice_loss, focal_loss
from aaclip.data.records import Record
from aaclip.train.common.driver import pick_device
from aaclip.train.families.clip_ad.config import object_name

log = logging.getLogger(__name__)


@dataclass
class ClipAdOptions:
    epochs: int = 5
    lr: float = 1e-4
    batch: int = 8
    seed: int = 42
    device: str = "auto"
    max_steps_per_epoch: Optional[int] = None  # quick runs (tests, demo)

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


class ClipAdTrainer:
    def __init__(self, model, records: Sequence[Record], root: Path, out_dir: Path, options: ClipAdOptions):
        self.model, self.options, self.out_dir = model, options, Path(out_dir)
        self.device = pick_device(options.device)
        self.classes = sorted({r.class_name for r in records})
        for name in self.classes:
            model.config.classes.setdefault(name, object_name(name))
        self.names = [model.config.classes[c] for c in self.classes]
        self.data = AnomalyDataset(records, root, model.config.image_size, self.classes)

    def run(self) -> Path:
        o, m = self.options, self.model
        m.to(self.device).requires_grad_(False)
        if not (self.out_dir / STATE_FILE).exists():
            m.linear_layers.reset(o.seed)  # a new run starts from the seed's initialization
        params = list(m.linear_layers.parameters())
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=o.lr)
        done = 0
        state_path = self.out_dir / STATE_FILE
        if state_path.exists():
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            m.load_trainable_state_dict(state["weights"])
            opt.load_state_dict(state["optimizer"])
            done = int(state["epoch"])
            log.info("resuming from %s: %d epoch(s) done", state_path, done)
        with torch.no_grad():
            anchors = m.text_anchors(self.names).to(self.device)
        for epoch in range(done, o.epochs):
            torch.manual_seed(o.seed * 1000 + epoch)
            loader = DataLoader(self.data, batch_size=o.batch, shuffle=False, num_workers=0)
            total, steps, t0 = 0.0, 0, time.time()
            for step, batch in enumerate(loader):
                if o.max_steps_per_epoch is not None and step >= o.max_steps_per_epoch:
                    break
                loss = sdp_plus_loss(m, batch["image"].to(self.device), batch["mask"].to(self.device),
                                     anchors[batch["class_index"].to(self.device)])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total, steps = total + float(loss.detach()), steps + 1
            mean = total / max(steps, 1)
            log.info("SDP+ epoch %d/%d: loss %.5f (%d steps, %.1fs)", epoch + 1, o.epochs, mean, steps,
                     time.time() - t0)
            self._save(epoch + 1, opt, mean)
        m.requires_grad_(False)
        return self.out_dir

    def _save(self, epoch: int, opt, loss: float) -> None:
        save_checkpoint(self.model, self.out_dir)
        state = {"epoch": epoch, "weights": {k: v.cpu() for k, v in self.model.trainable_state_dict().items()},
                 "optimizer": opt.state_dict(), "options": json.dumps(asdict(self.options))}
        with atomic_path(self.out_dir / STATE_FILE, suffix=".pt") as tmp:
            torch.save(state, tmp)
        path = self.out_dir / HISTORY_FILE
        previous = path.read_text() if path.exists() else ""
        line = {"stage": "sdp+", "epoch": epoch, "loss": loss, "time": time.time()}
        atomic_write_text(path, previous + json.dumps(line) + "\n")


__all__ = ["ClipAdOptions", "ClipAdTrainer", "sdp_plus_loss"]
