"""Checkpoint configs: a small JSON that fully describes a model, like OpenCLIP's model configs.

Every family's config has the common fields of ``ModelConfig`` (``method``, ``backbone``, ``image_size``,
``domain``, ``classes``, ``format_version``) and its own fields beside them (in its folder, e.g.
``families/aa_clip/config.py``). ``method`` names the model family
(``aaclip.train.families``); ``aaclip.train.checkpoint.load_config`` reads it into that family's config
class. The
trainable weights live beside the config in ``adapters.safetensors`` (see docs/checkpoint-format.md).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

from aaclip.contract.errors import UserError
from aaclip.contract.manifest import DEFAULT_METHOD

from aaclip.train.common import constants as C

CONFIG_FILE = "config.json"
ADAPTERS_FILE = "adapters.safetensors"  # the trainable weights of any family (AA-CLIP's adapters)
FORMAT_VERSION = 2  # 2: "method" and "backbone.pos_embed_resize"; version 1 reads as an aa-clip config
ACTIVATIONS = ("gelu", "quickgelu")
# Position-embedding resize from the weights' native grid to the configured one: (mode, antialias),
# both with align_corners=False and the class slot kept (OpenCLIP's resize_pos_embed).
POS_EMBED_RESIZE = {"bicubic-antialias": ("bicubic", True), "bicubic": ("bicubic", False),
                    "bilinear": ("bilinear", False)}
DEFAULT_IMAGE_SIZE = 518  # AA-CLIP's training/inference resolution (SPEC section 1)
TINY_BACKBONE = "aaclip-tiny"  # the random toy config of tests and demos (model_configs/aaclip-tiny.json)
TINY_IMAGE_SIZE = 64  # its resolution everywhere (8 x 8 patch grid): seconds per epoch on a CPU


def default_image_size(backbone: str) -> int:
    """The resolution a new checkpoint of ``backbone`` gets unless one is asked for: AA-CLIP's 518 px, the
    toy's 64 px (at 518 px it would run the toy at a real model's cost for nothing)."""
    return TINY_IMAGE_SIZE if backbone == TINY_BACKBONE else DEFAULT_IMAGE_SIZE


@dataclass
class BackboneConfig:
    """Which CLIP to build, how, and where its (frozen) weights come from.

    ``activation`` and ``pos_embed_resize`` differ between methods (SPEC-peers.md section 5); None means
    the family's default and is resolved when the model config is created, so a saved config always
    records both.
    """

    name: str = "ViT-L-14-336"
    pretrained: Optional[str] = None  # an OpenCLIP pretrained tag, e.g. "openai" (needs network once)
    weights: Optional[str] = None  # a local checkpoint file (relative paths: to the checkpoint dir)
    weights_sha256: Optional[str] = None  # recorded at training time, checked when loading
    activation: Optional[str] = None  # "gelu" (exact) or "quickgelu" (OpenAI training)
    init_seed: Optional[int] = None  # random initialization (tests/demo) when no weights are given
    pos_embed_resize: Optional[str] = None  # a key of POS_EMBED_RESIZE

    @property
    def resize_mode(self) -> tuple[str, bool]:
        """(interpolation, antialias) of the position-embedding resize."""
        return POS_EMBED_RESIZE[self.pos_embed_resize or "bicubic-antialias"]


@dataclass
class ModelConfig:
    """The fields every family's config has. A family subclasses it, sets the default of ``method`` to
    its name and adds its own fields; ``default_activation`` / ``default_pos_embed_resize`` are the
    backbone details its reference implementation uses."""

    default_activation: ClassVar[str] = "gelu"
    default_pos_embed_resize: ClassVar[str] = "bicubic-antialias"

    method: str = ""
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    image_size: int = DEFAULT_IMAGE_SIZE
    domain: str = "industrial"
    classes: dict[str, str] = field(default_factory=dict)  # class name -> object name for prompts
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        expected = type(self).__dataclass_fields__["method"].default
        if self.method != expected:
            raise UserError(f"a {type(self).__name__} describes method {expected!r}, not {self.method!r}")
        if isinstance(self.backbone, dict):
            self.backbone = BackboneConfig(**self.backbone)
        b = self.backbone
        b.activation = b.activation or self.default_activation
        b.pos_embed_resize = b.pos_embed_resize or self.default_pos_embed_resize
        if b.activation not in ACTIVATIONS:
            raise UserError(f"unknown activation {b.activation!r}: use 'gelu' or 'quickgelu'")
        if b.pos_embed_resize not in POS_EMBED_RESIZE:
            raise UserError(f"unknown position-embedding resize {b.pos_embed_resize!r}: use one of "
                            f"{', '.join(POS_EMBED_RESIZE)}")
        if self.domain not in C.DOMAINS:
            raise UserError(f"unknown domain {self.domain!r}: use one of {', '.join(C.DOMAINS)}")
        self.image_size = int(self.image_size)
        self.classes = dict(self.classes)
        self.format_version = FORMAT_VERSION  # a loaded older config is saved in the current format

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        version = data.get("format_version", 1)
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise UserError(f"checkpoint format {version} is newer than this aaclip-edge ({FORMAT_VERSION}): upgrade")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown config keys {unknown}: is this an aaclip-edge checkpoint config of method "
                            f"{cls.__dataclass_fields__['method'].default!r}?")
        data = dict(data)
        data.setdefault("method", DEFAULT_METHOD)  # format 1 had no method: it was always AA-CLIP
        return cls(**data)

    def save(self, path: Path) -> None:
        from aaclip.contract.files import atomic_write_json

        atomic_write_json(path, self.to_dict())


def read_config_data(path: Path) -> dict[str, Any]:
    """The raw JSON object of a checkpoint config (UserError when missing or not JSON)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"no checkpoint config at {path}: pass a checkpoint directory written by aaclip-train")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path} is not valid JSON ({exc}): the checkpoint is corrupt, re-run aaclip-train") from exc
    if not isinstance(data, dict):
        raise UserError(f"{path} is not a JSON object: the checkpoint is corrupt, re-run aaclip-train")
    return data


def config_method(data: dict[str, Any]) -> str:
    """The family of a config's JSON; configs written before families existed are AA-CLIP's."""
    method = data.get("method", DEFAULT_METHOD)
    if not isinstance(method, str) or not method:
        raise UserError(f"config 'method' must be a family name, got {method!r}")
    return method
