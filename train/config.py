"""The adapter checkpoint's config: a small JSON that fully describes an AA-CLIP model.

Like OpenCLIP's model configs, it is data: backbone name and weights, resolution, adapter depths,
blend weight, feature levels, projection activation, domain and the class table. The adapter weights
live beside it in ``adapters.safetensors`` (see docs/checkpoint-format.md).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from aaclip.contract.errors import UserError

from . import constants as C

CONFIG_FILE = "config.json"
ADAPTERS_FILE = "adapters.safetensors"
FORMAT_VERSION = 1


@dataclass
class BackboneConfig:
    """Which CLIP to build and where its (frozen) weights come from."""

    name: str = "ViT-L-14-336"
    pretrained: Optional[str] = None  # an OpenCLIP pretrained tag, e.g. "openai" (needs network once)
    weights: Optional[str] = None  # a local checkpoint file (relative paths: to the checkpoint dir)
    weights_sha256: Optional[str] = None  # recorded at training time, checked when loading
    activation: str = "gelu"  # "gelu" (exact; reproduces the paper) or "quickgelu" (OpenAI training)
    init_seed: Optional[int] = None  # random initialization (tests/demo) when no weights are given


@dataclass
class AAClipConfig:
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    image_size: int = 518
    text_adapter_depth: Optional[int] = None  # None: 1/4 of the text blocks (3 for ViT-L-14-336)
    image_adapter_depth: Optional[int] = None  # None: 1/4 of the visual blocks (6 for ViT-L-14-336)
    adapter_lambda: float = C.ADAPTER_LAMBDA
    levels: Optional[list[int]] = None  # 1-based visual block indices; None = quarter depths
    relu: bool = False  # LeakyReLU after the patch/detection projections (reference default: off)
    domain: str = "industrial"
    classes: dict[str, str] = field(default_factory=dict)  # class name -> object name for prompts
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if isinstance(self.backbone, dict):
            self.backbone = BackboneConfig(**self.backbone)
        if self.domain not in C.DOMAINS:
            raise UserError(f"unknown domain {self.domain!r}: use one of {', '.join(C.DOMAINS)}")
        if self.backbone.activation not in ("gelu", "quickgelu"):
            raise UserError(f"unknown activation {self.backbone.activation!r}: use 'gelu' or 'quickgelu'")
        if not 0.0 <= self.adapter_lambda <= 1.0:
            raise UserError(f"adapter_lambda must be in [0, 1], got {self.adapter_lambda}")
        if self.levels is not None:
            self.levels = [int(v) for v in self.levels]

    def resolved_levels(self, depth: int) -> tuple[int, ...]:
        levels = tuple(self.levels) if self.levels else C.default_levels(depth)
        if any(not 1 <= v <= depth for v in levels) or list(levels) != sorted(set(levels)):
            raise UserError(f"levels {list(levels)} must be increasing block indices in 1..{depth}")
        return levels

    def resolved_depths(self, text_blocks: int, visual_blocks: int) -> tuple[int, int]:
        k_t = self.text_adapter_depth or C.default_adapter_depth(text_blocks, 12, C.TEXT_ADAPTER_DEPTH)
        k_i = self.image_adapter_depth or C.default_adapter_depth(visual_blocks, 24, C.IMAGE_ADAPTER_DEPTH)
        if not (1 <= k_t <= text_blocks and 1 <= k_i <= visual_blocks):
            raise UserError(
                f"adapter depths text={k_t}, image={k_i} do not fit a backbone with {text_blocks} text and "
                f"{visual_blocks} visual blocks"
            )
        return k_t, k_i

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "AAClipConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown config keys {unknown}: is this an aaclip-edge checkpoint config?")
        version = data.get("format_version", FORMAT_VERSION)
        if version > FORMAT_VERSION:
            raise UserError(f"checkpoint format {version} is newer than this aaclip-edge ({FORMAT_VERSION}): upgrade")
        return cls(**data)

    def save(self, path: Path) -> None:
        from aaclip.contract.files import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path) -> "AAClipConfig":
        path = Path(path)
        if not path.is_file():
            raise UserError(f"no checkpoint config at {path}: pass a checkpoint directory written by aaclip-train")
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"{path} is not valid JSON ({exc}): the checkpoint is corrupt, re-run aaclip-train") from exc
        return cls.from_dict(data)
