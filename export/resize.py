"""PIL's 8-bit bicubic resize, reproduced exactly: on the host (numpy) and inside the graph (MatMuls).

Training resizes 8-bit RGB images with ``PIL.Image.resize(..., BICUBIC)`` (SPEC section 1; every peer
method's reference code too). Pillow's 8-bit path (``Resample.c``) is a separable filter with cubic
coefficient a = -0.5 whose support widens by the scale factor when shrinking (antialiasing), truncated
at the borders and renormalized (``pil_bicubic_weights``); the weights are then rounded to fixed point
with 22 fractional bits (``pil_fixed_weights``), and each of the two passes rounds and clips to 8 bits:
``out = clip((sum(pixel * k) + 2**21) >> 22, 0, 255)``. Which pass runs first matters (the intermediate is
8-bit): Pillow 13 runs the vertical one first when it shrinks the height by more than twice what the
horizontal one takes off the width (``vertical_first``, measured on thousands of sizes); older releases
always went horizontal first. Both agree for frames at least as wide as high resized to a square, i.e.
every landscape camera.

- ``resize_uint8``: that integer arithmetic in numpy, equal to Pillow byte for byte (tested on many
  sizes). The host-side pre-processing of the reference runner and the verifier use it.
- ``PilResizeGraph``: the same arithmetic as float32 MatMuls that every runtime computes exactly, for
  the graph's ``--input-size`` resize. Each fixed-point weight matrix is split into signed digits of at
  most 8 bits (``digit_matrices``): every MatMul operand is then an integer exactly representable even in
  TF32 (10-bit mantissa; TensorRT may use it for FP32 MatMuls on Ampere and later), every partial sum
  an integer below 2**24 (exact in float32 whatever the summation order), and the digit sums are
  recombined with Floor in an order that keeps every intermediate exact (``combine_digits``). The
  result equals ``resize_uint8``.

MatMul is also the one op every ONNX consumer (TensorRT 10.3 included) runs alike, unlike ONNX ``Resize``
whose ``antialias`` attribute (opset 18) and cubic coefficient differ between runtimes. Depends only on
numpy (the graph part takes torch lazily).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BICUBIC_A = -0.5  # PIL's cubic coefficient (OpenCV and PyTorch use -0.75)
BICUBIC_SUPPORT = 2.0
PRECISION_BITS = 22  # Pillow: 32 - 8 - 2
MAX_DIGIT_BITS = 8  # signed digits |d| <= 2**(bits-1): exact in TF32 and float16 products
EXACT_SUM = 2 ** 21  # bound on |sum of pixel * digit| per digit: leaves headroom below 2**24


def _cubic(x: np.ndarray, a: float = BICUBIC_A) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = (((x - 5.0) * x + 8.0) * x - 4.0) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def pil_bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) float64 weights of PIL's ``precompute_coeffs`` for bicubic along one axis.

    Each row sums to 1. As Pillow: scale = in/out, support widened by max(scale, 1), taps centred at
    (i + 0.5) * scale, truncated at the image borders, weights divided by their sequential sum.
    """
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be positive, got {in_size} -> {out_size}")
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = BICUBIC_SUPPORT * filterscale
    inverse = 1.0 / filterscale  # Pillow multiplies by the reciprocal
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = np.arange(lo, hi)
        w = _cubic((taps - center + 0.5) * inverse)
        total = float(np.cumsum(w)[-1]) if len(w) else 0.0  # Pillow sums in order
        weights[i, lo:hi] = w / total if total != 0.0 else w
    return weights


def pil_fixed_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) int64: the weights in Pillow's 8-bit fixed point (``normalize_coeffs_8bpc``)."""
    w = pil_bicubic_weights(in_size, out_size) * float(1 << PRECISION_BITS)
    return np.where(w < 0, np.trunc(w - 0.5), np.trunc(w + 0.5)).astype(np.int64)


def _pass(x: np.ndarray, k: np.ndarray, axis: int) -> np.ndarray:
    """One 8-bit pass along ``axis`` of an int64 (H, W, C) array: round, shift, clip like Pillow's clip8."""
    nonzero = k != 0
    first = np.where(nonzero.any(axis=1), nonzero.argmax(axis=1), 0)
    width = int((k.shape[1] - np.argmax(nonzero[:, ::-1], axis=1) - first).max())  # widest band of taps
    shape = [1] * x.ndim
    shape[axis] = k.shape[0]
    out = np.zeros(x.shape[:axis] + (k.shape[0],) + x.shape[axis + 1:], dtype=np.int64)
    rows = np.arange(k.shape[0])
    for t in range(width):  # tap t of every output pixel at once (weights beyond a band are zero)
        idx = np.minimum(first + t, k.shape[1] - 1)
        out += np.take(x, idx, axis=axis) * k[rows, idx].reshape(shape) * (first + t < k.shape[1]).reshape(shape)
    return np.clip((out + (1 << (PRECISION_BITS - 1))) >> PRECISION_BITS, 0, 255)


def vertical_first(in_hw: tuple[int, int], out_hw: tuple[int, int]) -> bool:
    """Pillow's pass order: vertical first when the height shrinks by more than twice the width's shrink."""
    (h, w), (oh, ow) = in_hw, out_hw
    return oh < h and 2 * (w - ow) < h - oh


def resize_uint8(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """PIL's ``Image.fromarray(image).resize((width, height), BICUBIC)`` of a uint8 (H, W[, C]) array, exactly.

    Two passes in Pillow's order (``vertical_first``; a pass whose size does not change is skipped), each
    rounded and clipped to 8 bits.
    """
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"resize_uint8 takes uint8 images, got {image.dtype}")
    x = image.astype(np.int64)
    axes = (0, 1) if vertical_first(x.shape[:2], (height, width)) else (1, 0)
    for axis in axes:
        size = (height, width)[axis]
        if x.shape[axis] != size:
            x = _pass(x, pil_fixed_weights(x.shape[axis], size), axis=axis)
    return x.astype(np.uint8)


# ---- the graph's form: float32 MatMuls on signed digits -----------------------------------------------
@dataclass(frozen=True)
class DigitSplit:
    """Fixed-point weights (out, in) written as ``sum_d digits[d] * base**d``, ``base = 2**bits``."""

    digits: np.ndarray  # (D, out, in) int64, digit 0 least significant, |digit| <= 2**(bits-1)
    bits: int

    @property
    def count(self) -> int:
        return int(self.digits.shape[0])


def digit_matrices(in_size: int, out_size: int) -> DigitSplit:
    """Split Pillow's fixed-point weights of one axis into signed digits whose sums stay exact in float32.

    ``bits`` is the largest (at most 8) with ``255 * taps * 2**(bits-1) <= 2**21`` for the widest row,
    so that every digit's sum over a row is an integer of magnitude <= 2**21.
    """
    k = pil_fixed_weights(in_size, out_size)
    taps = int((k != 0).sum(axis=1).max())
    bits = MAX_DIGIT_BITS
    while bits > 1 and 255 * taps * 2 ** (bits - 1) > EXACT_SUM:
        bits -= 1
    count = -(-(PRECISION_BITS + 1) // bits)  # |k| <= 2**22: the top digit stays within 2**(bits-1)
    base, half = 1 << bits, 1 << (bits - 1)
    rest, digits = k.copy(), []
    for _ in range(count - 1):
        d = ((rest + half) % base) - half
        digits.append(d)
        rest = (rest - d) // base
    digits.append(rest)
    out = np.stack(digits)
    if np.abs(out).max() > half or not np.array_equal((out * base ** np.arange(count)[:, None, None]).sum(0), k):
        raise AssertionError("digit split of the resize weights failed")  # pragma: no cover - arithmetic
    return DigitSplit(out, bits)


def combine_digits(sums, bits: int, floor):
    """``clip(floor((sum_d sums[d] * 2**(bits*d) + 2**21) / 2**22), 0, 255)`` with every step exact in float32.

    ``sums`` are the per-digit row sums (least significant first; exact integers of magnitude <= 2**21);
    ``floor`` is the Floor of the array library (numpy or torch); the scale factors are powers of two (Python
    floats, exact in the sums' float32). From the top digit down, the integer
    part is split off before the next digit's finer fraction is added, so no intermediate needs more
    than 24 significant bits.
    """
    whole = 0.0
    frac = 0.0
    for d in range(len(sums) - 1, 0, -1):
        x = frac + sums[d] * 2.0 ** (bits * d - PRECISION_BITS)
        a = floor(x)
        frac = x - a
        whole = whole + a
    x = frac + (sums[0] + 2.0 ** (PRECISION_BITS - 1)) * 2.0 ** -PRECISION_BITS
    return whole + floor(x)


def graph_resize_numpy(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The graph's float32 digit arithmetic in numpy (a check of ``PilResizeGraph`` without torch)."""
    x = np.asarray(image, np.float32)
    axes = (0, 1) if vertical_first(x.shape[:2], (height, width)) else (1, 0)
    for axis in axes:
        size = (height, width)[axis]
        if x.shape[axis] == size:
            continue
        split = digit_matrices(x.shape[axis], size)
        digits = [d.astype(np.float32) for d in split.digits]
        if axis == 0:
            sums = [np.einsum("oh,hpc->opc", d, x) for d in digits]
        else:
            sums = [np.einsum("hwc,pw->hpc", x, d) for d in digits]
        x = np.clip(combine_digits(sums, split.bits, np.floor), 0, 255).astype(np.float32)
    return x


def resize_float(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """The float form without rounding (PIL's float weights, intermediate clipped): kept for comparisons
    (``resize_check``); the graph and the host use the exact 8-bit forms above."""
    wh = pil_bicubic_weights(image.shape[0], height)
    ww = pil_bicubic_weights(image.shape[1], width)
    tmp = np.clip(np.einsum("hwc,pw->hpc", image.astype(np.float64), ww, optimize=True), 0.0, 255.0)
    return np.einsum("oh,hpc->opc", wh, tmp, optimize=True)


class PilResizeGraph:
    """The in-graph resize's constants: per axis, the digit matrices as float32 tensors.

    ``register(module)`` adds them as buffers of ``module`` (the deploy graph, so the MatMuls sit at its top
    scope and INT8 quantization leaves them alone); ``apply(module, x)`` resizes float (B, C, H, W) images
    holding integers 0..255 and returns the same integers PIL would.
    """

    def __init__(self, in_hw: tuple[int, int], out_hw: tuple[int, int]):
        self.in_hw, self.out_hw = (int(in_hw[0]), int(in_hw[1])), (int(out_hw[0]), int(out_hw[1]))
        self.rows = digit_matrices(self.in_hw[0], self.out_hw[0])  # vertical: (D, Hout, Hin)
        self.cols = digit_matrices(self.in_hw[1], self.out_hw[1])  # horizontal: (D, Wout, Win)

    def register(self, module) -> None:
        import torch

        module.register_buffer("resize_rows", torch.from_numpy(self.rows.digits.astype(np.float32)))
        module.register_buffer("resize_cols_t", torch.from_numpy(
            np.ascontiguousarray(self.cols.digits.transpose(0, 2, 1)).astype(np.float32)))

    def apply(self, module, x):
        import torch

        cols, rows = module.resize_cols_t, module.resize_rows
        axes = (0, 1) if vertical_first(self.in_hw, self.out_hw) else (1, 0)
        for axis in axes:
            if self.in_hw[axis] == self.out_hw[axis]:
                continue
            if axis == 1:  # horizontal: (B, C, H, Win) @ (Win, Wout)
                sums = [torch.matmul(x, cols[d]) for d in range(self.cols.count)]
            else:  # vertical: (Hout, Hin) @ (B, C, Hin, W)
                sums = [torch.matmul(rows[d], x) for d in range(self.rows.count)]
            x = torch.clamp(combine_digits(sums, (self.rows, self.cols)[axis].bits, torch.floor), 0.0, 255.0)
        return x


__all__ = [
    "BICUBIC_A",
    "PRECISION_BITS",
    "pil_bicubic_weights",
    "pil_fixed_weights",
    "resize_uint8",
    "vertical_first",
    "digit_matrices",
    "combine_digits",
    "graph_resize_numpy",
    "resize_float",
    "PilResizeGraph",
]
