"""Checkpoint folders of every model family: ``config.json`` + ``adapters.safetensors`` (no CLIP weights).

``config.json``'s ``method`` picks the family (``aaclip.train.families``); ``load_checkpoint`` builds the
frozen OpenCLIP backbone the config describes, the family's model on it, and loads its trainable
weights. ``init_checkpoint`` writes the folder of a model that is not trained (a training-free family,
or a trainable one before training) and ``random_checkpoint`` the one source of random tiny checkpoints
for tests, the demo, calibration measurements and benchmarks. The format is documented in
docs/checkpoint-format.md.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import torch
from aaclip.contract.errors import UserError
from aaclip.contract.files import atomic_write_json
from aaclip.contract.manifest import DEFAULT_METHOD

from aaclip.train.common.backbone import build_on_backbone
from aaclip.train.common.checkpoint_files import save_checkpoint
from aaclip.train.common.config import (ADAPTERS_FILE, CONFIG_FILE, TINY_BACKBONE, TINY_IMAGE_SIZE, BackboneConfig, ModelConfig,
                                        config_method, read_config_data)
from aaclip.train.families import get_family

log = logging.getLogger(__name__)


def build_model(config: ModelConfig, base_dir: Optional[Path] = None, check_hash: bool = True):
    """The family model of ``config`` on its frozen backbone (trainable weights: fresh initialization)."""
    return build_on_backbone(config, get_family(config.method).build, base_dir=base_dir, check_hash=check_hash)


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


def load_config(path: Path) -> ModelConfig:
    """Read a checkpoint's ``config.json`` into its family's config class (dispatch on ``method``)."""
    data = read_config_data(path)
    return get_family(config_method(data)).config_class.from_dict(data)


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
