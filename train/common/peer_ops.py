"""Post-processing operators of the peer methods (SPEC-peers.md), in plain ops that TensorRT builds.

- ``scipy_gaussian_blur``: ``scipy.ndimage.gaussian_filter(m, sigma)`` with its defaults (mode "reflect" =
  half-sample symmetric: the edge pixel is repeated; truncate 4: radius int(4 sigma + 0.5)), as CLIP-AD
  smooths its maps. ONNX ``Pad`` mode "reflect" omits the edge pixel, so the symmetric padding is a
  ``Gather`` with a constant index (any radius, also wider than the map), then two 1-D convolutions.
- ``zero_padded_blur``: Res2CLIP's 5x5 Gaussian (sigma 4, ``R2:utils/metrics.py``) as a Conv with zero
  padding 2.
- ``sparsemax``: Martins & Astudillo's sparsemax without a sort (TensorRT's TopK stops at K = 3840 and
  Res2CLIP sorts k * L similarities): bisection on tau for ``sum(max(0, z - tau)) = 1`` finds the
  support, then tau is the closed form over that support, as the sorted algorithm computes it
  (``sparsemax_sorted``, the reference in the tests).
- ``top_mean``: mean of the K largest values per row (Res2CLIP's top-1% image scores; TopK, K <= 3840).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

SCIPY_TRUNCATE = 4.0
SPARSEMAX_STEPS = 30  # bisection halvings of [max - 1, max]: below float32 resolution after ~24
TENSORRT_TOPK_MAX = 3840


# ---- Gaussian smoothing ---------------------------------------------------------------------------------
def scipy_gaussian_kernel(sigma: float, truncate: float = SCIPY_TRUNCATE) -> np.ndarray:
    """scipy's 1-D Gaussian (``_gaussian_kernel1d``, order 0): radius int(truncate * sigma + 0.5), normalized."""
    radius = int(truncate * float(sigma) + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    phi = np.exp(-0.5 / float(sigma) ** 2 * x ** 2)
    return phi / phi.sum()


def symmetric_index(size: int, radius: int) -> np.ndarray:
    """Source index of each position -radius .. size+radius-1 under scipy's "reflect" (period 2 * size)."""
    i = np.arange(-radius, size + radius) % (2 * size)
    return np.where(i < size, i, 2 * size - 1 - i).astype(np.int64)


def scipy_gaussian_blur(m: torch.Tensor, sigma: float, truncate: float = SCIPY_TRUNCATE) -> torch.Tensor:
    """``gaussian_filter(m[b], sigma)`` (mode reflect, truncate 4) of every (H, W) map of (B, H, W) ``m``."""
    k = torch.from_numpy(scipy_gaussian_kernel(sigma, truncate)).to(m.dtype)
    r = (len(k) - 1) // 2
    h, w = int(m.shape[-2]), int(m.shape[-1])
    x = torch.index_select(m.unsqueeze(1), 2, torch.from_numpy(symmetric_index(h, r)))
    x = F.conv2d(x, k.view(1, 1, -1, 1))
    x = torch.index_select(x, 3, torch.from_numpy(symmetric_index(w, r)))
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return x[:, 0]


def zero_padded_kernel(size: int = 5, sigma: float = 4.0) -> torch.Tensor:
    """Res2CLIP's ``get_gaussian_kernel(size, sigma)``: a normalized 2-D Gaussian, (1, 1, size, size)."""
    x = torch.arange(size, dtype=torch.float64)
    mean = (size - 1) / 2.0
    xy = (x.view(-1, 1) - mean) ** 2 + (x.view(1, -1) - mean) ** 2
    g = torch.exp(-xy / (2.0 * sigma ** 2)) / (2.0 * math.pi * sigma ** 2)
    return (g / g.sum()).float().view(1, 1, size, size)


def zero_padded_blur(m: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
    """Conv of (B, 1, H, W) maps with the (1, 1, k, k) ``kernel``, zero padding k // 2 (same size)."""
    return F.conv2d(m, kernel.to(m.dtype), padding=kernel.shape[-1] // 2)


# ---- sparsemax --------------------------------------------------------------------------------------------
def sparsemax_sorted(z: torch.Tensor) -> torch.Tensor:
    """Sparsemax over the last axis with a descending sort (the official ``sparsemax_lookup``)."""
    z = z - z.max(dim=-1, keepdim=True).values
    zs = torch.sort(z, dim=-1, descending=True).values
    rank = torch.arange(1, z.shape[-1] + 1, dtype=z.dtype, device=z.device)
    inside = (1.0 + rank * zs > torch.cumsum(zs, dim=-1)).to(z.dtype)
    k = (inside * rank).max(dim=-1, keepdim=True).values
    tau = ((inside * zs).sum(dim=-1, keepdim=True) - 1.0) / k
    return torch.clamp(z - tau, min=0.0)


def sparsemax(z: torch.Tensor, steps: int = SPARSEMAX_STEPS) -> torch.Tensor:
    """Sparsemax over the last axis without a sort (see the module docstring); ReLU, ReduceSum, Where only."""
    z = z - z.max(dim=-1, keepdim=True).values  # the threshold lies in [-1, 0]
    lo = torch.full_like(z[..., :1], -1.0)
    hi = torch.zeros_like(lo)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        above = torch.relu(z - mid).sum(dim=-1, keepdim=True) >= 1.0  # tau is at or above mid
        lo = torch.where(above, mid, lo)
        hi = torch.where(above, hi, mid)
    support = (z > lo).to(z.dtype)  # lo <= tau: every element above tau, none at or below lo's limit
    tau = ((support * z).sum(dim=-1, keepdim=True) - 1.0) / support.sum(dim=-1, keepdim=True)
    return torch.clamp(z - tau, min=0.0)


# ---- top-k mean -------------------------------------------------------------------------------------------
def top_mean(x: torch.Tensor, k: int) -> torch.Tensor:
    """Mean of the ``k`` largest values of each row of (B, M) ``x``."""
    return torch.topk(x, k, dim=1).values.mean(dim=1)


__all__ = ["scipy_gaussian_kernel", "symmetric_index", "scipy_gaussian_blur", "zero_padded_kernel", "zero_padded_blur",
           "sparsemax_sorted", "sparsemax", "top_mean", "SPARSEMAX_STEPS", "TENSORRT_TOPK_MAX"]
