"""The deployable graph: uint8 BGR NHWC frames -> anomaly map, map maximum, classification score.

``DeployGraph`` wraps a loaded family model so that everything the graph contract puts inside the graph
happens here: uint8 -> float, BGR -> RGB, NHWC -> NCHW, the optional resize from the camera resolution
(PIL's 8-bit bicubic reproduced exactly with float32 MatMuls and Floor, see ``resize.py``), CLIP
mean/std, the selection of each image's per-class constants (computed once at export time, held as a
constant), and the family's deploy module (``Family.deploy``: for AA-CLIP the image tower with its
adapters and the post-processing of ``aaclip.train.common.maps``, the one source of truth for SPEC section 5).

The deploy module's ``predict`` is called as a method (not a module call), so its own arithmetic
(similarities, blur, up-sampling) sits at the graph's top scope while its submodules (blocks, adapters,
projections) keep their module scopes; INT8 quantization selects nodes by that (calibration/int8.py).
In FP32 the deploy copy is numerically the model (``aaclip.train.common.deploy``: exportable attention); FP16
runs the transformer blocks in half precision.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
from aaclip.train.common.constants import CLIP_MEAN, CLIP_STD
from aaclip.train.common.deploy import PRECISIONS, deploy_copy
from aaclip.train.families import get_family
from torch import nn

from .resize import PilResizeGraph, resize_uint8

__all__ = ["PRECISIONS", "DeployGraph", "deploy_module", "reference_preprocess"]


def deploy_module(model, precision: str = "fp32") -> nn.Module:
    """The family's deploy module of ``model`` (``Family.deploy``, default ``deploy_copy``)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    family = get_family(model.config.method)
    return (family.deploy or deploy_copy)(model, precision)


class DeployGraph(nn.Module):
    """uint8 (B, H, W, 3) BGR frames [+ int64 class ids (B,)] -> (anomaly_map, map_max, cls_score).

    ``constants`` (C, ...) are the per-class constants of the artifact's classes (``compute_anchors``;
    AA-CLIP: text anchors (C, E, 2)), in the order of the manifest. With one class the graph has no
    ``class_id`` input; with several, ``class_id`` selects each image's entry (a Gather). ``input_hw`` is
    the camera resolution baked into the graph (None: the model resolution, no resize).
    """

    def __init__(self, model, constants: torch.Tensor, input_hw: Optional[Sequence[int]] = None,
                 precision: str = "fp32"):
        super().__init__()
        if constants.dim() < 1 or constants.shape[0] < 1:
            raise ValueError(f"constants must be (C, ...) with C >= 1, got {tuple(constants.shape)}")
        self.model = deploy_module(model, precision)
        self.precision = precision
        self.size = int(model.config.image_size)
        self.num_classes = int(constants.shape[0])
        self.register_buffer("constants", constants.detach().float().clone())
        self.input_hw = (self.size, self.size) if input_hw is None else (int(input_hw[0]), int(input_hw[1]))
        mean = torch.tensor(CLIP_MEAN, dtype=torch.float32).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, dtype=torch.float32).view(1, 3, 1, 1)
        # x/255 then (x - mean)/std folded into one multiply-add per channel (RGB order).
        self.register_buffer("pixel_scale", 1.0 / (255.0 * std))
        self.register_buffer("pixel_shift", -mean / std)
        self.register_buffer("bgr_to_rgb", torch.tensor([2, 1, 0], dtype=torch.int64))
        self.resize = self.input_hw != (self.size, self.size)
        self.resizer = PilResizeGraph(self.input_hw, (self.size, self.size)) if self.resize else None
        if self.resizer is not None:
            self.resizer.register(self)  # buffers of this module: the MatMuls stay at the graph's top scope

    @property
    def has_class_input(self) -> bool:
        return self.num_classes > 1

    def preprocess(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC BGR -> normalized float32 NCHW RGB at the model resolution."""
        x = image.to(torch.float32).permute(0, 3, 1, 2)  # (B, 3, H, W), BGR
        x = torch.index_select(x, 1, self.bgr_to_rgb)  # RGB (a Gather on the channel axis)
        if self.resizer is not None:
            x = self.resizer.apply(self, x)  # PIL's 8-bit bicubic, exactly (see resize.py)
        return x * self.pixel_scale + self.pixel_shift

    def select_constants(self, class_id: Optional[torch.Tensor]) -> torch.Tensor:
        if self.num_classes == 1:
            return self.constants[0]  # one class's entry, e.g. (E, 2)
        if class_id is None:
            raise ValueError("this graph holds several classes: pass class_id (B,) int64")
        return torch.index_select(self.constants, 0, class_id)  # one entry per image, e.g. (B, E, 2)

    def forward(self, image: torch.Tensor, class_id: Optional[torch.Tensor] = None):
        x = self.preprocess(image)
        amap, cls = self.model.predict(x, self.select_constants(class_id))
        amap = amap.reshape(-1, self.size, self.size)  # static spatial dims in the graph's output type
        map_max = torch.amax(amap.flatten(1), dim=1)
        return amap, map_max, cls


def reference_preprocess(frames_bgr: np.ndarray, input_hw: Sequence[int], size: int) -> torch.Tensor:
    """The training pre-processing applied to graph inputs, in float64 then float32 (for parity checks).

    Frames (B, H, W, 3) uint8 BGR at ``input_hw``; resized with PIL's 8-bit bicubic (``resize.resize_uint8``,
    equal to Pillow's bytes and to the graph's resize) when ``input_hw`` differs from the model size, then
    /255 and CLIP mean/std.
    """
    rgb = np.ascontiguousarray(frames_bgr[..., ::-1])
    if tuple(input_hw) != (size, size):
        rgb = np.stack([resize_uint8(f, size, size) for f in rgb])
    x = rgb.astype(np.float64)
    x = (x / 255.0 - np.asarray(CLIP_MEAN)) / np.asarray(CLIP_STD)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)).astype(np.float32))
