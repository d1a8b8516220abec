"""PIL-compatible bicubic resampling as two constant matrices (the in-graph resize of ``--input-size``).

Training resizes 8-bit RGB images with PIL bicubic (SPEC section 1): a separable filter with the cubic
coefficient a = -0.5 whose support is widened by the scale factor when down-scaling (antialiasing),
clipped at the borders and renormalized. The same weights, written as dense (out, in) matrices, turn
the resize into two MatMuls: ``out = Wh @ clip(image @ Ww^T, 0, 255)`` (PIL stores its first pass
as 8-bit, hence the clip; for camera frames it runs the horizontal pass first, as measured; its
rounding is not reproduced). MatMul is the one
op every ONNX consumer (TensorRT 10.3 included) runs exactly, unlike ONNX ``Resize`` whose ``antialias``
attribute (opset 18) and cubic coefficient differ between runtimes. Depends only on numpy.
"""
from __future__ import annotations

import numpy as np

BICUBIC_A = -0.5  # PIL's cubic coefficient (OpenCV and PyTorch use -0.75)
BICUBIC_SUPPORT = 2.0


def _cubic(x: np.ndarray, a: float = BICUBIC_A) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def pil_bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 weights reproducing PIL's ``Image.resize(..., BICUBIC)`` along one axis.

    Each row sums to 1. Follows PIL's ``precompute_coeffs``: scale = in/out, support widened by
    max(scale, 1), taps centred at (i + 0.5) * scale, truncated at the image borders.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filterscale
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        w = _cubic((taps - center + 0.5) / filterscale)
        total = w.sum()
        weights[i, lo:hi] = w / total if total != 0.0 else w
    return weights


def resize_float(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize a (H, W, C) array as the graph does: PIL bicubic weights, horizontal pass first, the
    intermediate clipped to [0, 255] like PIL's 8-bit intermediate image, float64, no rounding."""
    wh = pil_bicubic_weights(image.shape[0], height)
    ww = pil_bicubic_weights(image.shape[1], width)
    tmp = np.clip(np.einsum("hwc,pw->hpc", image.astype(np.float64), ww, optimize=True), 0.0, 255.0)
    return np.einsum("oh,hpc->opc", wh, tmp, optimize=True)


__all__ = [
    "BICUBIC_A",
    "pil_bicubic_weights",
    "resize_float",
]
