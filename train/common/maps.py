"""Anomaly-map and score math of SPEC section 5, shared by evaluation, training and the export graph.

Shapes: V (B, L, E) L2-normalized patch features of one level, T (E, 2) or (B, E, 2) text anchors
(column 0 normal, column 1 abnormal), d (B, E) detection feature. All functions are plain tensor ops
that export to ONNX opset 17 without custom operators.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from aaclip.train.common.constants import BLUR, LOGIT_SCALE


def similarity(V: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """S = 100 * V T, (B, L, 2)."""
    return LOGIT_SCALE * torch.matmul(V, T)


def to_grid(S: torch.Tensor, grid: int) -> torch.Tensor:
    """(B, L, 2) tokens in row-major order -> (B, 2, G, G)."""
    return S.transpose(1, 2).reshape(S.shape[0], 2, grid, grid)


def gaussian_kernel1d(size: int, sigma: float) -> torch.Tensor:
    half = (size - 1) / 2.0
    x = torch.tensor([i - half for i in range(size)], dtype=torch.float64)
    k = torch.exp(-(x**2) / (2.0 * sigma**2))
    return (k / k.sum()).float()


def gaussian_blur(m: torch.Tensor, size: int, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, H, W) maps with reflect padding (a fixed convolution)."""
    k = gaussian_kernel1d(size, sigma).to(m.dtype).to(m.device)
    pad = size // 2
    x = F.pad(m.unsqueeze(1), (pad, pad, pad, pad), mode="reflect")
    x = F.conv2d(x, k.view(1, 1, 1, size))
    x = F.conv2d(x, k.view(1, 1, size, 1))
    return x[:, 0]  # indexing, not squeeze: squeeze exports as a data-dependent If node


def upsample(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Bilinear up-sampling with align_corners=True of (B, C, h, w) or (B, h, w) tensors."""
    single = x.dim() == 3
    y = F.interpolate(x.unsqueeze(1) if single else x, size=size, mode="bilinear", align_corners=True)
    return y[:, 0] if single else y


def level_map(V: torch.Tensor, T: torch.Tensor, grid: int) -> torch.Tensor:
    """Un-blurred level map m_i = (S[:,1] + 1 - S[:,0]) / 2 on the patch grid, (B, G, G)."""
    S = to_grid(similarity(V, T), grid)
    return (S[:, 1] + 1.0 - S[:, 0]) / 2.0


def anomaly_map(levels: list[torch.Tensor], T: torch.Tensor, grid: int, size: tuple[int, int], domain: str) -> torch.Tensor:
    """Inference map M (B, H, W): per level blur on the grid, up-sample, then sum over levels."""
    k, sigma = BLUR[domain]
    total = None
    for V in levels:
        m = upsample(gaussian_blur(level_map(V, T, grid), k, sigma), size)
        total = m if total is None else total + m
    return total


def cls_score(d: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """Classification score c = (s[:,1] + 1) / 2 with s = d T, (B,)."""
    s = cls_logits(d, T)
    return (s[:, 1] + 1.0) / 2.0


def cls_logits(d: torch.Tensor, T: torch.Tensor) -> torch.Tensor:
    """s = d T, (B, 2): the logits of the stage-2 cross-entropy."""
    return torch.matmul(d.unsqueeze(1), T)[:, 0]


def train_probabilities(V: torch.Tensor, T: torch.Tensor, grid: int, size: tuple[int, int]) -> torch.Tensor:
    """Training-time map: softmax over the 2 channels of the up-sampled 100 V T, (B, 2, H, W); no blur."""
    return torch.softmax(upsample(to_grid(similarity(V, T), grid), size), dim=1)
