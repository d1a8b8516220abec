"""The files of a checkpoint folder that any family writes, without knowing the families: the trainable
weights and config (``save_checkpoint``), a trainer's resume state and its history. Loading a folder back
into its family's model is ``aaclip.train.checkpoint`` (it needs the registry)."""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Optional

import torch
from aaclip.contract.errors import UserError
from aaclip.contract.files import atomic_path

from aaclip.train.common.config import ADAPTERS_FILE, CONFIG_FILE

STATE_FILE = "train_state.pt"  # a trainer's resume state; its presence means "a run to continue"
HISTORY_FILE = "history.jsonl"  # one JSON line per finished epoch


def save_checkpoint(model, out_dir: Path) -> Path:
    """Write the trainable weights and the config atomically; returns the directory."""
    from safetensors.torch import save_file

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in model.trainable_state_dict().items()}
    with atomic_path(out_dir / ADAPTERS_FILE, suffix=".safetensors") as tmp:
        save_file(state, str(tmp), metadata={"format": "aaclip-adapters", "version": "1",
                                             "method": model.config.method})
    config = copy.deepcopy(model.config)
    if config.backbone.weights is not None:  # relative when the weights live inside the checkpoint
        weights = Path(config.backbone.weights).resolve()
        if weights.is_relative_to(out_dir.resolve()):
            config.backbone.weights = str(weights.relative_to(out_dir.resolve()))
    config.save(out_dir / CONFIG_FILE)
    return out_dir


def read_train_state(out_dir: Path) -> Optional[dict]:
    """The resume state of a training run in ``out_dir`` (None when there is none); a damaged file (empty,
    truncated by a kill or a full disk) is a clear error with the way out."""
    path = Path(out_dir) / STATE_FILE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, dict) or "epoch" not in state:
            raise ValueError("not a training state")
    except Exception as exc:  # noqa: BLE001 - torch raises many kinds for damaged files
        raise UserError(f"{path} is damaged ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
                        f"): delete it to restart training (the weights of the last finished epoch stay in "
                        f"{ADAPTERS_FILE}), or train into another --out") from None
    return state
