"""The training driver every trainable family plugs its steps into (``Family.trainer`` returns one).

A family's trainer subclasses ``Driver`` and says only what differs: its phases (AA-CLIP: two stages;
SDP+ and Res2CLIP-ft: one), what a new run initializes (``fresh_start``), the optimizers and schedulers
of a phase, what a phase sets up before its first epoch (``begin``), the seeded batches of an epoch and
one step on a batch. The driver owns the rest, the same for every family:

- resume: ``train_state.pt`` holds the trainable weights, optimizers and schedulers after the last
  finished epoch; a run on the same folder continues after it. Each epoch's randomness comes from
  (seed, phase, epoch) in the family's ``batches``, so a resumed run ends with the weights of an
  uninterrupted one;
- checkpoints: ``config.json`` + ``adapters.safetensors`` and the resume state after every epoch, each
  written atomically (``save_checkpoint``);
- history: one ``history.jsonl`` line per finished epoch (``stage``, ``epoch``, ``loss``, ``time``, and
  ``losses`` per optimizer group where a family has several);
- progress: a bar or log lines over each epoch's steps (``common.progress``), the loss as it goes;
- signals: SIGINT or SIGTERM stops the run at the next step boundary with ``TrainingStopped`` (the
  folder keeps the last finished epoch; the same command continues); a second signal acts as before.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import logging
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Optional, Sequence

import torch
from aaclip.contract.errors import UserError
from aaclip.contract.files import atomic_path, atomic_write_text

from aaclip.train.common.checkpoint_files import HISTORY_FILE, STATE_FILE, read_train_state, save_checkpoint
from aaclip.train.common.progress import Progress

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def name_classes(model, records: Sequence, object_name) -> tuple[list[str], list[str]]:
    """The sorted classes of ``records`` and their prompt names; a class the checkpoint's table does not
    name gets ``object_name(class)`` there (so the saved checkpoint names every trained class)."""
    classes = sorted({r.class_name for r in records})
    for name in classes:
        model.config.classes.setdefault(name, object_name(name))
    return classes, [model.config.classes[c] for c in classes]


@dataclass
class RunOptions:
    """What every driven run has (a family's options dataclass extends it): the seed of the run's
    randomness, the device, and a cap on the steps of an epoch for quick runs (tests, the demo)."""

    seed: int = 0
    device: str = "auto"
    max_steps_per_epoch: Optional[int] = None


@dataclass(frozen=True)
class Phase:
    """One part of a run with its own optimizers: ``number`` orders the phases (and is what the resume state
    records), ``name`` is the history's ``stage`` value, ``label`` starts the log lines."""

    number: int
    epochs: int
    name: Any
    label: str


class TrainingStopped(UserError):
    """A signal stopped the run between two steps; the folder holds the last finished epoch."""


class Driver:
    """Runs a family's phases, epochs and steps (see the module's docstring). Subclasses implement
    ``phases``, ``optimizers``, ``batches`` and ``step``; ``fresh_start``, ``begin`` and ``start`` are optional."""

    def __init__(self, model, out_dir: Path, options):
        self.model, self.out_dir, self.options = model, Path(out_dir), options
        self.device = pick_device(getattr(options, "device", "auto"))
        self.history: list[dict] = []

    # ---- what a family supplies ---------------------------------------------------------------------
    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def start(self) -> None:
        """Called first in every run, new or resumed (e.g. to log what trains on what)."""

    def fresh_start(self) -> None:
        """A new run (no resume state): initialize what the seed decides."""

    def optimizers(self, phase: Phase) -> tuple[dict[str, torch.optim.Optimizer], dict[str, Any]]:
        """The phase's optimizers and learning-rate schedulers by name (the resume state keeps them)."""
        raise NotImplementedError

    def begin(self, phase: Phase) -> None:
        """Before the phase's first epoch of this run (after resuming): trainable parameters, constants."""

    def batches(self, phase: Phase, epoch: int) -> Iterable:
        """The epoch's batches, seeded from (seed, phase, epoch); ``len()`` of it gives the epoch's steps."""
        raise NotImplementedError

    def steps_per_epoch(self, phase: Phase, batches) -> int:
        limit = getattr(self.options, "max_steps_per_epoch", None)
        return len(batches) if limit is None else min(len(batches), limit)

    def step(self, phase: Phase, batch, optimizers: dict, schedulers: dict) -> dict[str, float]:
        """One step on ``batch`` (``update`` each optimizer); the losses by name."""
        raise NotImplementedError

    # ---- helpers for steps --------------------------------------------------------------------------
    @staticmethod
    def update(optimizer, loss: torch.Tensor, scheduler=None, clip_norm: Optional[float] = None) -> float:
        """Back-propagate ``loss`` into ``optimizer``'s parameters and step it (and ``scheduler``)."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], clip_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        return float(loss.detach())

    # ---- the loop -----------------------------------------------------------------------------------
    def run(self) -> Path:
        """Train (continuing a run found in ``out_dir``); returns ``out_dir``."""
        m = self.model
        m.to(self.device).requires_grad_(False)
        self.start()
        state = _upgrade(read_train_state(self.out_dir))
        if state is None:
            self.fresh_start()
        else:
            m.load_trainable_state_dict(state["weights"])
            m.to(self.device)
            label = next((p.label for p in self.phases() if p.number == state["stage"]), f"phase {state['stage']}")
            log.info("resuming from %s: %s, %d epoch(s) done", self.out_dir / STATE_FILE, label, state["epoch"])
        with _stop_on_signals() as stop:
            for phase in self.phases():
                if state is not None and state["stage"] > phase.number:
                    continue
                optimizers, schedulers = self.optimizers(phase)
                done = 0
                if state is not None and state["stage"] == phase.number:
                    for name, opt in optimizers.items():
                        opt.load_state_dict(state["optimizers"][name])
                    for name, sched in schedulers.items():
                        sched.load_state_dict(state["schedulers"][name])
                    done = state["epoch"]
                self.begin(phase)
                for epoch in range(done, phase.epochs):
                    losses = self._epoch(phase, epoch, optimizers, schedulers, stop)
                    self._save(phase, epoch + 1, optimizers, schedulers, losses)
                state = None
        m.requires_grad_(False)
        return self.out_dir

    def _epoch(self, phase: Phase, epoch: int, optimizers: dict, schedulers: dict, stop: dict) -> dict[str, float]:
        batches = self.batches(phase, epoch)
        total = self.steps_per_epoch(phase, batches)
        desc = f"{phase.label} epoch {epoch + 1}/{phase.epochs}"
        progress = Progress(itertools.islice(batches, total), total, desc, log)
        sums: dict[str, float] = {}
        steps, t0 = 0, time.time()
        for batch in progress:
            losses = self.step(phase, batch, optimizers, schedulers)
            for name, value in losses.items():
                sums[name] = sums.get(name, 0.0) + value
            steps += 1
            progress.note(loss=sum(losses.values()))
            if stop["signal"] is not None:
                raise TrainingStopped(
                    f"training stopped by {signal.Signals(stop['signal']).name} during {desc}: {self.out_dir} keeps "
                    f"the weights and resume state of the last finished epoch; run the same command to continue")
        means = {name: value / max(steps, 1) for name, value in sums.items()}
        shown = ", ".join(f"{k} {v:.5f}" for k, v in means.items() if v or len(means) == 1)
        log.info("%s: %s (%d steps, %.1fs)", desc, shown, steps, time.time() - t0)
        return means

    def _save(self, phase: Phase, epoch: int, optimizers: dict, schedulers: dict, losses: dict[str, float]) -> None:
        save_checkpoint(self.model, self.out_dir)
        state = {"stage": phase.number, "epoch": epoch,
                 "weights": {k: v.cpu() for k, v in self.model.trainable_state_dict().items()},
                 "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
                 "schedulers": {k: s.state_dict() for k, s in schedulers.items()},
                 "options": json.dumps(asdict(self.options))}
        with atomic_path(self.out_dir / STATE_FILE, suffix=".pt") as tmp:
            torch.save(state, tmp)
        line = {"stage": phase.name, "epoch": epoch, "loss": sum(losses.values())}
        if len(losses) > 1:
            line["losses"] = losses
        line["time"] = time.time()
        self.history.append(line)
        path = self.out_dir / HISTORY_FILE
        previous = path.read_text() if path.exists() else ""
        atomic_write_text(path, previous + json.dumps(line) + "\n")


def read_history(out_dir: Path) -> list[dict]:
    """The ``history.jsonl`` lines of a run (empty before its first finished epoch)."""
    path = Path(out_dir) / HISTORY_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _upgrade(state: Optional[dict]) -> Optional[dict]:
    """A resume state in the driver's keys; states written before it (AA-CLIP's ``adapters``/``optimizer``/
    ``scheduler``, SDP+'s ``weights``/``optimizer`` without a stage) still resume."""
    if state is None:
        return None
    state = dict(state)
    state.setdefault("stage", 1)
    if "weights" not in state:
        state["weights"] = state.pop("adapters")
    if "optimizers" not in state:
        state["optimizers"] = {"main": state.pop("optimizer")}
    if "schedulers" not in state:
        state["schedulers"] = {"main": state.pop("scheduler")} if "scheduler" in state else {}
    return state


@contextlib.contextmanager
def _stop_on_signals() -> Iterator[dict]:
    """``{"signal": None}`` until SIGINT or SIGTERM arrives (then its number); the previous handlers come
    back at the first signal (a second one acts as before) and on leaving. Off the main thread: no
    handlers (Python allows them only there)."""
    stop: dict[str, Optional[int]] = {"signal": None}
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    previous = {s: signal.getsignal(s) for s in STOP_SIGNALS}

    def restore() -> None:
        for s, handler in previous.items():
            signal.signal(s, handler)

    def handler(signum, frame) -> None:
        stop["signal"] = signum
        restore()
        log.warning("%s: stopping after this step (send it again to stop at once)", signal.Signals(signum).name)

    for s in STOP_SIGNALS:
        signal.signal(s, handler)
    try:
        yield stop
    finally:
        restore()


__all__ = ["Driver", "Phase", "RunOptions", "TrainingStopped", "name_classes", "pick_device", "read_history", "STOP_SIGNALS"]
