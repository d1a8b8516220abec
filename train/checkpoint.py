"""Checkpoint folders of every model family: ``config.json`` + ``adapters.safetensors`` (no CLIP weights).

``config.json``'s ``method`` picks the family (``aaclip.train.families``); ``load_checkpoint`` builds the
frozen OpenCLIP backbone the config describes, the family's model on it, and loads its trainable
weights. ``init_checkpoint`` writes the folder of a model that is not trained (a training-free family,
or a trainable one before training) and ``random_checkpoint`` the one source of random tiny checkpoints
for tests, the demo, calibration measurements and benchmarks. The format is documented in
docs/checkpoint-format.md.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch
from aaclip.contract.errors import UserError
from aaclip.contract.files import atomic_path, atomic_write_json
from aaclip.contract.manifest import DEFAULT_METHOD

from aaclip.train.common.backbone import build_clip, resolve_weights
from aaclip.train.common.config import ADAPTERS_FILE, CONFIG_FILE, TINY_BACKBONE, TINY_IMAGE_SIZE, BackboneConfig, ModelConfig, load_config
from aaclip.train.families import get_family

log = logging.getLogger(__name__)

STATE_FILE = "train_state.pt"  # a trainer's resume state; its presence means "a run to continue"
HISTORY_FILE = "history.jsonl"  # one JSON line per finished epoch


def build_model(config: ModelConfig, base_dir: Optional[Path] = None, check_hash: bool = True):
    """The family model of ``config`` on its frozen backbone (trainable weights: fresh initialization)."""
    family = get_family(config.method)
    clip, tokenizer = build_clip(config, base_dir=base_dir, check_hash=check_hash)
    weights = resolve_weights(config.backbone, base_dir)
    if weights is not None:  # absolute from here on, so the config can be saved anywhere
        config.backbone.weights = str(weights.resolve())
    return family.build(clip, tokenizer, config)


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


RUN_FILE = "run.json"


def check_same_run(out_dir: Path, run: dict) -> None:
    """Refuse to continue the run in ``out_dir`` when it was started on other data or another model config
    (``run``: what identifies this one); record ``run`` for a new one."""
    path = Path(out_dir) / RUN_FILE
    if path.exists():
        try:
            previous = json.loads(path.read_text())
        except (OSError, ValueError):
            previous = None
        if previous is not None and previous != run:
            differs = sorted(k for k in set(run) | set(previous) if run.get(k) != previous.get(k))
            raise UserError(f"{out_dir} holds another training run (different {', '.join(differs)}); it would be "
                            "resumed with the wrong data or model: choose another --out, or delete that folder to "
                            "start over")
        if previous is not None:
            return
    atomic_write_json(path, run)


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


def read_adapters(ckpt_dir: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(ckpt_dir) / ADAPTERS_FILE
    if not path.is_file():
        raise UserError(f"no {ADAPTERS_FILE} in {ckpt_dir}: pass a checkpoint directory written by aaclip-train")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path} is corrupt ({exc}): re-run training or re-import the checkpoint") from exc


def checkpoint_config(ckpt_dir: Path) -> ModelConfig:
    """The config of a checkpoint directory (its family's config class), without building anything."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        raise UserError(f"checkpoint directory not found: {ckpt_dir}")
    return load_config(ckpt_dir / CONFIG_FILE)


def load_checkpoint(ckpt_dir: Path, clip_weights: Optional[Path] = None, check_hash: bool = True):
    """The model of a checkpoint directory (the family its config's ``method`` names), eval mode, CPU."""
    ckpt_dir = Path(ckpt_dir)
    config = checkpoint_config(ckpt_dir)
    if clip_weights is not None:
        config.backbone.weights = str(Path(clip_weights).resolve())
    model = build_model(config, base_dir=ckpt_dir, check_hash=check_hash)
    try:
        model.load_trainable_state_dict(read_adapters(ckpt_dir))
    except ValueError as exc:
        raise UserError(f"{ckpt_dir}: {exc}") from exc
    return model.eval()


def checkpoint_sha256(ckpt_dir: Path) -> str:
    """One hash over the config and the trainable weights (what the manifest records as the source)."""
    h = hashlib.sha256()
    for name in (CONFIG_FILE, ADAPTERS_FILE):
        h.update((Path(ckpt_dir) / name).read_bytes())
    return h.hexdigest()


# ---- checkpoints of models that are not trained ------------------------------------------------------
def init_checkpoint(out_dir: Path, config: ModelConfig, seed: int = 0,
                    references: Optional[dict[str, list[Path]]] = None) -> Path:
    """Build ``config``'s model and write its checkpoint folder (``aaclip-train init``).

    The torch RNG is seeded with ``seed`` before the backbone is built, so the family's trainable weights
    are reproducible (a backbone with ``init_seed`` re-seeds with that first). ``references`` ({class: image
    paths}) are built into the model of a family that keeps references (Res2CLIP's banks) before saving.
    """
    from aaclip.train.common.backbone import vision_geometry

    torch.manual_seed(seed)
    model = build_model(config, base_dir=Path(out_dir))
    _, patch, grid = vision_geometry(model.clip)
    if patch * grid != config.image_size:
        raise UserError(f"image size {config.image_size} is not a multiple of {config.backbone.name}'s patch "
                        f"size {patch}")
    if references:
        from aaclip.train.families.res2clip.bank import add_references

        add_references(model, references, dict(config.classes))
    return save_checkpoint(model, out_dir)


@dataclass
class RandomSpec:
    """A checkpoint with random CLIP weights (tests, demo, measurements; it detects nothing real).

    ``weights_file``: where the random CLIP weights are written (relative: inside the checkpoint folder;
    absolute: anywhere) and referenced by the config; None: the config records ``init_seed`` and loading
    re-creates the same weights (nothing written). ``trainable_seed`` seeds the family's trainable weights
    (None: ``seed + 1``); without a weights file the backbone's ``init_seed`` re-seeds the RNG before
    they are drawn, so they follow ``seed`` alone (see ``init_checkpoint``). ``fields``: family-specific config fields (e.g. ``{"relu": True}``).
    """

    method: str = DEFAULT_METHOD
    backbone: str = TINY_BACKBONE
    image_size: int = TINY_IMAGE_SIZE
    classes: dict[str, str] = field(default_factory=lambda: {"disk": "metal disk"})
    domain: str = "industrial"
    seed: int = 0
    trainable_seed: Optional[int] = None
    weights_file: Optional[str] = "clip.safetensors"
    fields: dict[str, Any] = field(default_factory=dict)


def random_checkpoint(out_dir: Path, spec: Optional[RandomSpec] = None, **changes: Any) -> Path:
    """Write a random checkpoint of ``spec`` (with ``changes`` applied) into ``out_dir``; returns it."""
    from aaclip.train.common.backbone import write_random_weights

    spec = replace(spec or RandomSpec(), **changes)
    out_dir = Path(out_dir)
    family = get_family(spec.method)
    backbone = BackboneConfig(name=spec.backbone)
    if spec.weights_file is None:
        backbone.init_seed = spec.seed
    else:
        path = Path(spec.weights_file)
        path = path if path.is_absolute() else out_dir / path
        write_random_weights(spec.backbone, path, seed=spec.seed)
        backbone.weights = str(path)
    config = family.config_class(backbone=backbone, image_size=spec.image_size, domain=spec.domain,
                                 classes=dict(spec.classes), **spec.fields)
    seed = spec.seed + 1 if spec.trainable_seed is None else spec.trainable_seed
    return init_checkpoint(out_dir, config, seed)
