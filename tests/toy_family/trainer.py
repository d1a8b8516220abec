"""The toy's training: per-patch BCE against the mask pooled to the patch grid, one batch per epoch, on the
training driver (resume, checkpoints, history, progress and signals come from it)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from aaclip.train.common.dataset import AnomalyDataset
from aaclip.train.common.driver import Driver, Phase, name_classes


@dataclass
class ToyOptions:
    steps: int = 12
    lr: float = 3e-2
    batch: int = 8
    seed: int = 0
    device: str = "cpu"


class ToyTrainer(Driver):
    def __init__(self, model, records, root, out_dir: Path, options: ToyOptions):
        super().__init__(model, out_dir, options)
        classes, self.names = name_classes(model, records, lambda c: c)
        self.data = AnomalyDataset(records, root, model.config.image_size, classes)
        self.constants = None

    def phases(self) -> list[Phase]:
        return [Phase(1, self.options.steps, "toy", "toy")]  # an epoch is one step: history.jsonl per step

    def steps_per_epoch(self, phase: Phase, batches) -> int:
        return 1

    def optimizers(self, phase: Phase):
        self.model.head.requires_grad_(True)
        return {"head": torch.optim.Adam(self.model.head.parameters(), lr=self.options.lr)}, {}

    def begin(self, phase: Phase) -> None:
        with torch.no_grad():
            self.constants = self.model.class_constants(self.names)

    def batches(self, phase: Phase, epoch: int):
        generator = torch.Generator().manual_seed(self.options.seed * 1000 + epoch)
        return torch.utils.data.DataLoader(self.data, batch_size=self.options.batch, shuffle=True, generator=generator)

    def step(self, phase: Phase, batch: dict, optimizers: dict, schedulers: dict) -> dict[str, float]:
        m = self.model
        logits = m.patch_logits(batch["image"].to(self.device), self.constants[batch["class_index"]])
        target = F.adaptive_max_pool2d(batch["mask"][:, None].float(), m.grid).flatten(1).to(self.device)
        return {"loss": self.update(optimizers["head"], F.binary_cross_entropy_with_logits(logits, target))}
