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
are built from their normal records (``shots`` per class), so every epoch's checkpoint is usable.
"""
from __future__ import annotations

import json
import logging
import math
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from aaclip.contract.errors import UserError
from aaclip.contract.files import atomic_path, atomic_write_text
from torch.utils.data import DataLoader, Dataset

from aaclip.train.common.checkpoint_files import HISTORY_FILE, STATE_FILE, save_checkpoint
from aaclip.train.common.dataset import AnomalyDataset
from aaclip.data.records import NORMAL, Record
from aaclip.train.common.driver import pick_device
from aaclip.train.families.res2clip.config import object_name

log = logging.getLogger(__name__)

GROUPS = ("vis", "res_vis", "res_text", "text")


@dataclass
class Res2ClipOptions:
    epochs: int = 10
    batch: int = 16
    lr_v: float = 5e-4
    lr_t: float = 1e-4
    tau: float = 1.0
    seed: int = 111
    device: str = "auto"
    max_steps_per_epoch: Optional[int] = None  # quick runs (tests, demo)

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
class Res2ClipTrainer:
    def __init__(self, model, records: Sequence[Record], root: Path, out_dir: Path, options: Res2ClipOptions):
        self.model, self.options, self.out_dir, self.root = model, options, Path(out_dir), Path(root)
        self.device = pick_device(options.device)
        self.records = list(records)
        self.classes = sorted({r.class_name for r in records})
        for name in self.classes:
            model.config.classes.setdefault(name, object_name(name))
        self.data = AnomalyDataset(records, root, model.config.image_size, self.classes)
        self.pairs = ReferencePairs(self.data, options.seed)

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

    def _optimizers(self, steps: int):
        o, m = self.options, self.model
        groups = {"vis": (("vis_adapters",), o.lr_v, o.epochs),
                  "res_vis": (("res_vis_local_adapters", "res_vis_global_adapter"), o.lr_v, math.ceil(o.epochs / 2)),
                  "res_text": (("res_text_adapter",), o.lr_t, max(1, o.epochs // 2)),
                  "text": (("text_adapter",), o.lr_t, o.epochs)}
        opts, scheds = {}, {}
        for name, (modules, lr, epochs) in groups.items():
            opts[name] = torch.optim.Adam(m.adapter_parameters(*modules), lr=lr, betas=(0.5, 0.999))
            scheds[name] = cosine_schedule(opts[name], steps, steps * epochs)
        return opts, scheds

    def run(self) -> Path:
        o, m = self.options, self.model
        m.to(self.device).requires_grad_(False)
        loader_len = math.ceil(len(self.pairs) / o.batch)
        steps = min(loader_len, o.max_steps_per_epoch or loader_len)
        state_path = self.out_dir / STATE_FILE
        if not state_path.exists():
            m.init_adapters(o.seed)  # a new run starts from the seed's initialization
        for name in ("vis_adapters", "res_vis_local_adapters", "res_vis_global_adapter", "res_text_adapter",
                     "text_adapter"):
            getattr(m, name).requires_grad_(True)  # the frozen groups of an epoch get no loss, hence no update
        opts, scheds = self._optimizers(steps)
        done = 0
        if state_path.exists():
            state = torch.load(state_path, map_location="cpu", weights_only=True)
            m.load_trainable_state_dict(state["weights"])
            for g in GROUPS:
                opts[g].load_state_dict(state["optimizers"][g])
                scheds[g].load_state_dict(state["schedulers"][g])
            done = int(state["epoch"])
            log.info("resuming from %s: %d epoch(s) done", state_path, done)
        else:
            self._build_banks()
        m.to(self.device)
        rt = m.text_residual().to(self.device)
        for epoch in range(done, o.epochs):
            self.pairs.epoch = epoch
            gen = torch.Generator().manual_seed(o.seed * 1000 + epoch)
            torch.manual_seed(o.seed * 1000 + epoch)
            loader = DataLoader(self.pairs, batch_size=o.batch, shuffle=True, generator=gen, num_workers=0)
            res_vis_epoch = epoch % 2 == 0
            totals, t0, n = {g: 0.0 for g in GROUPS}, time.time(), 0
            for step, batch in enumerate(loader):
                if step >= steps:
                    break
                losses = self.losses(batch, rt, res_vis_epoch)
                for g, loss in losses.items():
                    opt = opts[g]
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_([p for grp in opt.param_groups for p in grp["params"]], 1.0)
                    opt.step()
                    scheds[g].step()
                    totals[g] += float(loss.detach())
                n += 1
            means = {g: v / max(n, 1) for g, v in totals.items()}
            log.info("Res2CLIP epoch %d/%d (%s): %s (%d steps, %.1fs)", epoch + 1, o.epochs,
                     "residual visual" if res_vis_epoch else "residual text",
                     ", ".join(f"{g} {v:.4f}" for g, v in means.items() if v), n, time.time() - t0)
            self._save(epoch + 1, opts, scheds, means)
        m.requires_grad_(False)
        return self.out_dir

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

    def _save(self, epoch: int, opts, scheds, losses: dict) -> None:
        save_checkpoint(self.model, self.out_dir)
        state = {"epoch": epoch, "weights": {k: v.cpu() for k, v in self.model.trainable_state_dict().items()},
                 "optimizers": {g: opts[g].state_dict() for g in GROUPS},
                 "schedulers": {g: scheds[g].state_dict() for g in GROUPS},
                 "options": json.dumps(asdict(self.options))}
        with atomic_path(self.out_dir / STATE_FILE, suffix=".pt") as tmp:
            torch.save(state, tmp)
        path = self.out_dir / HISTORY_FILE
        previous = path.read_text() if path.exists() else ""
        line = {"stage": "res2clip-ft", "epoch": epoch, "loss": sum(losses.values()), "losses": losses,
                "time": time.time()}
        atomic_write_text(path, previous + json.dumps(line) + "\n")


__all__ = ["Res2ClipOptions", "Res2ClipTrainer", "ReferencePairs", "fixed_margin", "dynamic_margin",
           "magnitude_control", "global_margin", "cosine_schedule"]
