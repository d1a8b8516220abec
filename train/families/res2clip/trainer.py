"""Res2CLIP-ft training (SPEC-peers.md 2.7, ``R2:train.py`` + ``utils/loss.py``), resumable.

Each sample is paired with another normal image of its class from the same records (k = 1 reference,
drawn per epoch from the seed). CLIP frozen. Four Adam optimizers (betas 0.5/0.999), gradient norms
clipped at 1 each: visual adapters and residual visual adapters (local + global) at ``lr_v``, residual
text and text adapters at ``lr_t``; cosine schedules with one epoch of linear warm-up, over all epochs
(visual, text) or over the epochs a residual group trains (ceil(E/2) visual, max(1, E//2) text). Even
epochs train the residual visual adapters (residual text frozen), odd epochs the residual text adapter;
visual and text adapters train every epoch. Losses (tau 1): fixed-margin hinges on g . R~_t and
F_last . R~_t plus (1 - cos(R~_t, R_t)); magnitude control of ||A_vis(R_v)||; dynamic margins
tau ||R_v|| on A_res(R_v) . R~res_t (per tap and global) plus an L1 norm match (visual epochs) or
(1 - cos(R~res_t, R_t)) (text epochs). Score maps are up-sampled to the mask; "mean over normal /
anomalous pixels" over the whole batch. Before training, the reference banks of the training classes
are built from their normal records (``shots`` per class), so every epoch's checkpoint is usable. One
phase of the training driver (``aaclip.train.common.driver``: resume, checkpoints and history after every
epoch, progress, signals); each epoch re-seeds from (seed, epoch).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from aaclip.contract.errors import UserError
from aaclip.data.records import NORMAL, Record
from torch.utils.data import DataLoader, Dataset

from aaclip.train.common.dataset import AnomalyDataset
from aaclip.train.common.driver import Driver, Phase, RunOptions, name_classes
from aaclip.train.families.res2clip.config import object_name

GROUPS = ("vis", "res_vis", "res_text", "text")


@dataclass
class Res2ClipOptions(RunOptions):
    epochs: int = 10
    batch: int = 16
    lr_v: float = 5e-4
    lr_t: float = 1e-4
    tau: float = 1.0
    seed: int = 111  # the official script's

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch < 1 or not (self.lr_v > 0 and self.lr_t > 0):
            raise ValueError("epochs and batch must be >= 1, learning rates > 0")


# ---- losses (R2:utils/loss.py) -----------------------------------------------------------------------------
def _up(score: torch.Tensor, grid: int, size) -> torch.Tensor:
    return F.interpolate(score.reshape(-1, 1, grid, grid), size=size, mode="bilinear", align_corners=False)


def _split_means(loss_n: torch.Tensor, loss_a: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """sum(loss_n * normal) / #normal + sum(loss_a * anomalous) / #anomalous (whole batch)."""
    n = (1 - mask).sum().clamp(min=1e-6)
    a = mask.sum().clamp(min=1e-6)
    return (loss_n * (1 - mask)).sum() / n + (loss_a * mask).sum() / a


def fixed_margin(score: torch.Tensor, mask: torch.Tensor, grid: int, margin: float) -> torch.Tensor:
    """Patch scores (B, L): normal pixels relu(s), anomalous relu(margin - s)."""
    s = _up(score, grid, mask.shape[-2:])
    return _split_means(F.relu(s), F.relu(margin - s), mask)


def dynamic_margin(score: torch.Tensor, rv: torch.Tensor, mask: torch.Tensor, grid: int, tau: float) -> torch.Tensor:
    """Patch scores (B, L): normal relu(s), anomalous relu(tau ||R_v|| - s) with the margin map up-sampled."""
    size = mask.shape[-2:]
    s = _up(score, grid, size)
    margin = _up(torch.norm(rv.detach(), dim=-1), grid, size) * tau
    return _split_means(F.relu(s), F.relu(margin - s), mask)


def magnitude_control(adapted: torch.Tensor, rv: torch.Tensor, mask: torch.Tensor, grid: int) -> torch.Tensor:
    """Normal pixels: ||A(R_v)||; anomalous: | ||A(R_v)|| - ||R_v|| |."""
    size = mask.shape[-2:]
    m_adapt = _up(torch.norm(adapted, dim=-1), grid, size)
    m_orig = _up(torch.norm(rv.detach(), dim=-1), grid, size)
    return _split_means(m_adapt, torch.abs(m_adapt - m_orig), mask)


def global_margin(score: torch.Tensor, label: torch.Tensor, margin: torch.Tensor | float) -> torch.Tensor:
    """Image scores (B,): normal relu(s), anomalous relu(margin - s)."""
    return _split_means(F.relu(score), F.relu(margin - score), label)


def cosine_schedule(optimizer, warmup: int, total: int):
    """Linear warm-up over ``warmup`` steps, then cosine to 0 at ``total`` (``R2:utils/utils.py``)."""
    def factor(step: int) -> float:
        if step < warmup:
            return step / max(1, warmup)
        progress = (step - warmup) / max(1, total - warmup)
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# ---- data ------------------------------------------------------------------------------------------------
class ReferencePairs(Dataset):
    """Items of ``AnomalyDataset`` plus ``ref_image``: another normal image of the same class (itself when the
    class has no other), drawn from (seed, epoch, index)."""

    def __init__(self, data: AnomalyDataset, seed: int):
        self.data, self.seed, self.epoch = data, seed, 0
        self.normals: dict[str, list[int]] = {}
        for i, r in enumerate(data.records):
            if r.label == NORMAL:
                self.normals.setdefault(r.class_name, []).append(i)

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> dict:
        item = dict(self.data[i])
        pool = [j for j in self.normals.get(self.data.records[i].class_name, []) if j != i]
        j = random.Random(f"{self.seed}:{self.epoch}:{i}").choice(pool) if pool else i
        item["ref_image"] = self.data[j]["image"]
        return item


# ---- the trainer -------------------------------------------------------------------------------------------
class Res2ClipTrainer(Driver):
    def __init__(self, model, records: Sequence[Record], root: Path, out_dir: Path, options: Res2ClipOptions):
        super().__init__(model, out_dir, options)
        self.root = Path(root)
        self.records = list(records)
        self.classes, _ = name_classes(model, records, object_name)
        self.data = AnomalyDataset(records, root, model.config.image_size, self.classes)
        self.pairs = ReferencePairs(self.data, options.seed)
        self.rt: Optional[torch.Tensor] = None

    def phases(self) -> list[Phase]:
        return [Phase(1, self.options.epochs, "res2clip-ft", "Res2CLIP")]

    def fresh_start(self) -> None:
        self.model.init_adapters(self.options.seed)  # a new run starts from the seed's initialization
        self._build_banks()

    def _build_banks(self) -> None:
        from aaclip.data.records import resolve
        from aaclip.data.references import REFERENCE_SEED
        from aaclip.train.families.res2clip.model import build_references
        from aaclip.data.shots import sample_shots

        m = self.model
        normals = [r for r in self.records if r.label == NORMAL]
        short = sorted(c for c in self.classes if sum(r.class_name == c for r in normals) < m.shots)
        if short:
            raise UserError(f"classes {short} have fewer than {m.shots} normal images for their reference bank")
        chosen = sample_shots(normals, m.shots, REFERENCE_SEED, label=NORMAL)

        paths = {c: [resolve(self.root, r.image_path) for r in chosen if r.class_name == c] for c in self.classes}
        m.set_references(build_references(m, paths), dict(m.config.classes))

    def optimizers(self, phase: Phase):
        o, m = self.options, self.model
        for name in ("vis_adapters", "res_vis_local_adapters", "res_vis_global_adapter", "res_text_adapter",
                     "text_adapter"):
            getattr(m, name).requires_grad_(True)  # the frozen groups of an epoch get no loss, hence no update
        loader_len = math.ceil(len(self.pairs) / o.batch)
        steps = min(loader_len, o.max_steps_per_epoch or loader_len)
        groups = {"vis": (("vis_adapters",), o.lr_v, o.epochs),
                  "res_vis": (("res_vis_local_adapters", "res_vis_global_adapter"), o.lr_v, math.ceil(o.epochs / 2)),
                  "res_text": (("res_text_adapter",), o.lr_t, max(1, o.epochs // 2)),
                  "text": (("text_adapter",), o.lr_t, o.epochs)}
        opts, scheds = {}, {}
        for name, (modules, lr, epochs) in groups.items():
            opts[name] = torch.optim.Adam(m.adapter_parameters(*modules), lr=lr, betas=(0.5, 0.999))
            scheds[name] = cosine_schedule(opts[name], steps, steps * epochs)
        return opts, scheds

    def begin(self, phase: Phase) -> None:
        self.model.to(self.device)
        self.rt = self.model.text_residual().to(self.device)

    def batches(self, phase: Phase, epoch: int) -> DataLoader:
        seed = self.options.seed * 1000 + epoch
        self.pairs.epoch = epoch
        gen = torch.Generator().manual_seed(seed)
        torch.manual_seed(seed)
        return DataLoader(self.pairs, batch_size=self.options.batch, shuffle=True, generator=gen, num_workers=0)

    def step(self, phase: Phase, batch: dict, optimizers: dict, schedulers: dict) -> dict[str, float]:
        """Even epochs train the residual visual adapters, odd ones the residual text adapter."""
        losses = self.losses(batch, self.rt, self.pairs.epoch % 2 == 0)
        done = {g: self.update(optimizers[g], loss, schedulers[g], clip_norm=1.0) for g, loss in losses.items()}
        return {g: done.get(g, 0.0) for g in GROUPS}

    def losses(self, batch: dict, rt: torch.Tensor, res_vis_epoch: bool) -> dict[str, torch.Tensor]:
        """The four groups' losses of one batch (each backpropagates into its own adapters only)."""
        m, tau, dev = self.model, self.options.tau, self.device
        images, refs = batch["image"].to(dev), batch["ref_image"].to(dev)
        mask = batch["mask"].to(dev)[:, None]
        b = images.shape[0]
        with torch.no_grad():
            feats, g = m.encode(torch.cat([images, refs]))
        fq, fr = [f[:b] for f in feats], [f[b:] for f in feats]
        gq, gr = g[:b], g[b:]
        label = mask.flatten(1).max(dim=1).values
        rt_b = rt.expand(b, -1)
        rt_text = F.normalize(m.text_adapter(rt_b), dim=-1)
        if res_vis_epoch:
            with torch.no_grad():
                rt_res = F.normalize(m.res_text_adapter(rt_b), dim=-1)
        else:
            rt_res = F.normalize(m.res_text_adapter(rt_b), dim=-1)
        out = {"vis": images.new_zeros(()), "text": images.new_zeros(())}
        res = images.new_zeros(())
        out["text"] = (global_margin((gq * rt_text).sum(-1), label, tau)
                       + (1 - F.cosine_similarity(rt_text, rt_b)).mean())
        rv_cls = gq - gr
        if res_vis_epoch:
            adapted = m.res_vis_global_adapter(rv_cls)
            res = res + global_margin((adapted * rt_res.detach()).sum(-1), label, tau * torch.norm(rv_cls, dim=-1))
            res = res + F.l1_loss(torch.norm(adapted, dim=-1), torch.norm(rv_cls, dim=-1))
        else:
            with torch.no_grad():
                adapted = m.res_vis_global_adapter(rv_cls)
            res = res + global_margin((adapted * rt_res).sum(-1), label, tau * torch.norm(rv_cls, dim=-1))
            res = res + (1 - F.cosine_similarity(rt_res, rt_b)).mean()
        for tap, f, ref in zip(m.taps, fq, fr):
            with torch.no_grad():
                rv = m.residual(f, ref)  # each sample against its own reference (k = 1)
            out["vis"] = out["vis"] + magnitude_control(m.vis_adapters[str(tap)](rv), rv, mask, m.grid)
            if tap == m.taps[-1]:
                out["text"] = out["text"] + fixed_margin((f * rt_text[:, None]).sum(-1), mask, m.grid, tau)
            if tap not in m.res_taps:
                continue
            local = m.res_vis_local_adapters[str(tap)]
            if res_vis_epoch:
                adapted = local(rv)
                res = res + dynamic_margin((adapted * rt_res.detach()[:, None]).sum(-1), rv, mask, m.grid, tau)
                res = res + F.l1_loss(torch.norm(adapted, dim=-1), torch.norm(rv, dim=-1))
            else:
                with torch.no_grad():
                    adapted = local(rv)
                res = res + dynamic_margin((adapted * rt_res[:, None]).sum(-1), rv, mask, m.grid, tau)
        out["res_vis" if res_vis_epoch else "res_text"] = res
        return out


__all__ = ["Res2ClipOptions", "Res2ClipTrainer", "ReferencePairs", "fixed_margin", "dynamic_margin",
           "magnitude_control", "global_margin", "cosine_schedule"]
