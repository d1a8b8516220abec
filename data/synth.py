"""Synthetic industrial images: procedurally drawn products, drawn-in defects with exact masks.

No real data set can be downloaded where this project is built and tested, so the demo, the training
tests and the runtime tests use images drawn here. Depends only on numpy and OpenCV (never torch): the
runtime tests draw defects into video frames with it.

Images are BGR uint8 (OpenCV order). Masks are uint8, 255 on exactly the pixels a defect changed, 0 on
pixels identical to the input.
"""
from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterable, Optional, Union

import cv2
import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.files import atomic_path, atomic_write_text

log = logging.getLogger(__name__)

CLASSES: tuple[str, ...] = ("disk", "capsule", "plate", "mesh", "wood")
"""Products: two objects on a conveyor belt, a brushed (anisotropic) surface, a regular woven texture
and a stochastic texture."""

OBJECT_NAMES: dict[str, str] = {
    "disk": "metal disk",
    "capsule": "capsule",
    "plate": "brushed metal plate",
    "mesh": "wire mesh",
    "wood": "wooden board",
}
"""Human-readable object names for text prompts."""

OBJECT_CLASSES: frozenset[str] = frozenset({"disk", "capsule"})
"""Classes drawn as one object on a background; the others fill the whole frame."""

DEFECTS: tuple[str, ...] = ("scratch", "crack", "hole", "stain", "missing")

MIN_IMAGE_SIZE = 32
MIN_DEFECT_AREA = 0.003
"""Smallest defect area as a fraction of the image."""
MAX_DEFECT_AREA = 0.08
"""Largest defect area as a fraction of the image."""

_MAX_TRIES = 40
_SPLITS = {"train": 0, "test": 1}
_VIDEO_TAG = 2

PathLike = Union[str, Path]


# ----------------------------------------------------------------------------------------------
# Drawing the products
# ----------------------------------------------------------------------------------------------

def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) of an n x n canvas, float32."""
    ax = np.arange(n, dtype=np.float32)
    return np.meshgrid(ax, ax)


def _lowfreq(rng: np.random.Generator, n: int, cells: int, cells_x: Optional[int] = None) -> np.ndarray:
    """Smooth noise of about unit amplitude over an n x n canvas, varying over ``cells`` cells
    (``cells_x`` along x when given)."""
    coarse = rng.standard_normal((cells, cells if cells_x is None else cells_x)).astype(np.float32)
    return cv2.resize(coarse, (n, n), interpolation=cv2.INTER_CUBIC)


def _conveyor(rng: np.random.Generator, n: int) -> np.ndarray:
    """Dark conveyor belt with a faint woven stripe pattern (float32 BGR)."""
    x, y = _grid(n)
    base = rng.uniform(36.0, 52.0)
    tint = np.array([rng.uniform(1.0, 1.08), 1.0, rng.uniform(0.92, 0.98)], np.float32)
    period = rng.uniform(3.0, 5.0)
    grey = base + 3.0 * _lowfreq(rng, n, 5) + 1.5 * np.sin(2 * np.pi * y / period)
    return grey[..., None] * tint


def _shadow(bg: np.ndarray, cover: np.ndarray, offset: int, strength: float) -> np.ndarray:
    """Darken the background under a soft, offset copy of the object's coverage."""
    shifted = np.roll(cover, (offset, offset), axis=(0, 1))
    soft = cv2.GaussianBlur(shifted, (0, 0), max(1.0, offset))
    return bg * (1.0 - strength * soft)[..., None]


def _draw_disk(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """A turned metal disk with a centre bore, four bolt holes and a rim notch, on a conveyor."""
    x, y = _grid(n)
    bg = _conveyor(rng, n)
    cx = n / 2 + rng.uniform(-0.04, 0.04) * size
    cy = n / 2 + rng.uniform(-0.04, 0.04) * size
    radius = rng.uniform(0.30, 0.34) * size
    theta = rng.uniform(0, 2 * np.pi)
    light = rng.uniform(0, 2 * np.pi)
    dx, dy = x - cx, y - cy
    r = np.hypot(dx, dy)
    phi = np.arctan2(dy, dx)

    cover = np.clip(radius - r + 0.5, 0, 1)
    cover *= np.clip(r - 0.17 * radius + 0.5, 0, 1)
    for k in range(4):
        a = theta + np.pi / 4 + k * np.pi / 2
        bx, by = cx + 0.62 * radius * np.cos(a), cy + 0.62 * radius * np.sin(a)
        cover *= np.clip(np.hypot(x - bx, y - by) - 0.09 * radius + 0.5, 0, 1)
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    notch = np.clip(u - 0.87 * radius + 0.5, 0, 1) * np.clip(0.08 * radius - np.abs(v) + 0.5, 0, 1)
    cover *= 1.0 - notch

    shade = rng.uniform(165, 190) + 20.0 * np.cos(phi - light) * (r / radius)
    shade += 8.0 * np.cos(2 * (phi - light))
    shade += 3.0 * np.sin(r * 2.3)  # turning marks
    for ring in (0.42, 0.80):
        shade -= 45.0 * np.exp(-(((r - ring * radius) / 1.1) ** 2))
    rim = np.clip((r - 0.93 * radius) / (0.07 * radius), 0, 1)
    shade += 18.0 * rim * np.cos(phi - light)
    metal = shade[..., None] * np.array([1.02, 1.0, 0.96], np.float32)

    bg = _shadow(bg, cover, max(1, size // 40), 0.35)
    return bg * (1 - cover[..., None]) + metal * cover[..., None]


def _draw_capsule(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """A two-coloured gelatin capsule (red-orange cap, ivory body) lying on a conveyor."""
    x, y = _grid(n)
    bg = _conveyor(rng, n)
    cx = n / 2 + rng.uniform(-0.04, 0.04) * size
    cy = n / 2 + rng.uniform(-0.04, 0.04) * size
    length = rng.uniform(0.58, 0.64) * size
    width = rng.uniform(0.24, 0.27) * size
    theta = rng.uniform(-0.5, 0.5) + (np.pi if rng.random() < 0.5 else 0.0)
    dx, dy = x - cx, y - cy
    u = dx * np.cos(theta) + dy * np.sin(theta)
    v = -dx * np.sin(theta) + dy * np.cos(theta)
    half = width / 2
    du = np.maximum(np.abs(u) - (length / 2 - half), 0)
    dist = np.hypot(du, v) - half
    cover = np.clip(0.5 - dist, 0, 1)

    q = np.clip(-dist / half, 0, 1)
    shade = 0.55 + 0.45 * np.sqrt(1 - (1 - q) ** 2)
    seam = -0.06 * length
    shade *= 1 - 0.35 * np.exp(-(((u - seam) / 0.9) ** 2))
    cap = np.array([45, 65, 205], np.float32) + rng.uniform(-10, 10, 3).astype(np.float32)
    body = np.array([205, 220, 228], np.float32) + rng.uniform(-6, 6, 3).astype(np.float32)
    colour = np.where((u > seam)[..., None], cap, body) * shade[..., None]
    spec = 70.0 * np.exp(-(((v + 0.35 * half) / (0.12 * half)) ** 2)) * (q > 0.05)
    colour = colour + spec[..., None]

    bg = _shadow(bg, cover, max(1, size // 40), 0.35)
    return bg * (1 - cover[..., None]) + colour * cover[..., None]


def _draw_plate(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Brushed stainless steel: fine streaks along x, a broad diagonal sheen."""
    x, y = _grid(n)
    base = rng.uniform(140, 168)
    streaks = cv2.resize(rng.standard_normal((n, max(2, n // 24))).astype(np.float32), (n, n),
                         interpolation=cv2.INTER_LINEAR)
    fine = cv2.blur(rng.standard_normal((n, n)).astype(np.float32), (11, 1))
    alpha = rng.uniform(0, np.pi)
    sheen = np.cos(2 * np.pi * (x * np.cos(alpha) + y * np.sin(alpha)) / (size * rng.uniform(0.9, 1.5))
                   + rng.uniform(0, 2 * np.pi))
    grey = base + 9.0 * streaks + 10.0 * fine + 16.0 * sheen
    return grey[..., None] * np.array([1.05, 1.0, 0.96], np.float32)


def _draw_mesh(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Plain-woven steel wire mesh in front of a bright diffuse backing."""
    x, y = _grid(n)
    angle = np.deg2rad(rng.uniform(-4, 4))
    period = rng.uniform(0.12, 0.14) * size
    xr = x * np.cos(angle) + y * np.sin(angle) + rng.uniform(0, period)
    yr = -x * np.sin(angle) + y * np.cos(angle) + rng.uniform(0, period)
    ix, iy = np.floor(xr / period), np.floor(yr / period)
    tx = xr / period - ix - 0.5  # position across the vertical wire, -0.5..0.5 periods
    ty = yr / period - iy - 0.5
    hw = 0.21 * period
    cov_v = np.clip(hw - np.abs(tx) * period + 0.5, 0, 1)
    cov_h = np.clip(hw - np.abs(ty) * period + 0.5, 0, 1)
    v_on_top = ((ix + iy) % 2) == 0
    sign = np.where(v_on_top, 1.0, -1.0)

    steel = rng.uniform(110, 135)
    cyl_v = 0.55 + 0.45 * np.sqrt(np.clip(1 - (tx * period / hw) ** 2, 0, 1))
    cyl_h = 0.55 + 0.45 * np.sqrt(np.clip(1 - (ty * period / hw) ** 2, 0, 1))
    wire_v = steel * cyl_v * (0.85 + 0.15 * sign * np.cos(np.pi * ty))
    wire_h = steel * cyl_h * (0.85 - 0.15 * sign * np.cos(np.pi * tx))

    gap = np.minimum(np.abs(tx), np.abs(ty)) * period - hw
    backing = rng.uniform(195, 215) + 4.0 * _lowfreq(rng, n, 4)
    backing = backing * (0.8 + 0.2 * np.clip(gap / (0.12 * period), 0, 1))

    v_then_h = backing * (1 - cov_v) + wire_v * cov_v
    v_then_h = v_then_h * (1 - cov_h) + wire_h * cov_h
    h_then_v = backing * (1 - cov_h) + wire_h * cov_h
    h_then_v = h_then_v * (1 - cov_v) + wire_v * cov_v
    grey = np.where(v_on_top, h_then_v, v_then_h)
    is_wire = np.maximum(cov_v, cov_h)
    tint = np.array([1.0, 0.99, 0.97], np.float32) * is_wire[..., None] \
        + np.array([0.94, 1.0, 1.03], np.float32) * (1 - is_wire[..., None])
    return grey[..., None] * tint


def _draw_wood(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Planed wood: warped growth rings along x, fibres, sometimes a knot."""
    x, y = _grid(n)
    angle = np.deg2rad(rng.uniform(-8, 8))
    period = rng.uniform(0.06, 0.10) * size
    yr = -x * np.sin(angle) + y * np.cos(angle)
    warp = 1.2 * period * _lowfreq(rng, n, 3, 2) + 0.3 * period * _lowfreq(rng, n, 6, 4)
    knot_dark = np.zeros((n, n), np.float32)
    if rng.random() < 0.4:
        kx, ky = rng.uniform(0.2, 0.8) * n, rng.uniform(0.2, 0.8) * n
        kr = rng.uniform(0.04, 0.08) * size
        d2 = ((x - kx) ** 2 + (y - ky) ** 2) / (kr * kr)
        warp += 1.5 * period * np.exp(-d2 / 6.0)
        knot_dark = 0.5 * np.exp(-d2) * (0.8 + 0.2 * np.cos(2 * np.pi * np.sqrt(d2) * kr / period))
    rings = 0.5 + 0.5 * np.sin(2 * np.pi * (yr + warp) / period)
    late = rings ** 4
    fibres = cv2.blur(rng.standard_normal((n, n)).astype(np.float32), (17, 1))
    light = np.array([95, 145, 195], np.float32) * rng.uniform(0.9, 1.08)
    dark = np.array([50, 85, 135], np.float32) * rng.uniform(0.9, 1.08)
    wood = light * (1 - 0.85 * late[..., None]) + dark * 0.85 * late[..., None]
    wood = wood + 10.0 * fibres[..., None]
    return wood * (1 - knot_dark[..., None])


_DRAWERS: dict[str, Callable[[np.random.Generator, int, int], np.ndarray]] = {
    "disk": _draw_disk,
    "capsule": _draw_capsule,
    "plate": _draw_plate,
    "mesh": _draw_mesh,
    "wood": _draw_wood,
}
assert set(_DRAWERS) == set(CLASSES)


def _margin(size: int) -> int:
    """Extra canvas on each side, so frames can be cropped from shifted windows (conveyor motion)."""
    return max(2, size // 8)


def _render(class_name: str, param_rng: np.random.Generator, noise_rng: np.random.Generator,
            size: int, shift: tuple[int, int] = (0, 0)) -> np.ndarray:
    """Draw the product on a padded canvas, crop the window at ``shift`` (dx, dy), light and add noise."""
    m = _margin(size)
    canvas = _DRAWERS[class_name](param_rng, size + 2 * m, size)
    dx, dy = shift
    img = canvas[m + dy:m + dy + size, m + dx:m + dx + size]
    # Lighting fixed to the camera: gain with a gentle gradient.
    x, y = _grid(size)
    g0 = param_rng.uniform(0.9, 1.1)
    gx, gy = param_rng.uniform(-0.12, 0.12, 2)
    gain = g0 + gx * (x / size - 0.5) + gy * (y / size - 0.5)
    img = img * gain[..., None]
    sigma = noise_rng.uniform(1.5, 3.0)
    img = img + sigma * noise_rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _check_class(class_name: str) -> None:
    if class_name not in CLASSES:
        raise UserError(f"unknown synthetic class {class_name!r}; available: {', '.join(CLASSES)}")


def _check_size(size: int) -> None:
    if not isinstance(size, (int, np.integer)) or size < MIN_IMAGE_SIZE:
        raise UserError(f"image size must be an integer >= {MIN_IMAGE_SIZE}, got {size!r}; "
                        f"pass a larger size")


def draw_product(class_name: str, rng: np.random.Generator, size: int) -> np.ndarray:
    """A normal (defect-free) sample of ``class_name``: uint8 ``size`` x ``size`` x 3, BGR.

    Position, rotation, lighting, texture phase and sensor noise all vary with ``rng``.
    """
    _check_class(class_name)
    _check_size(size)
    return _render(class_name, rng, rng, int(size))


# ----------------------------------------------------------------------------------------------
# Drawing the defects
# ----------------------------------------------------------------------------------------------

@dataclass
class _Placement:
    """Where defects may go on one image."""
    support: np.ndarray       # bool HxW: pixels a defect may change (the object, or everything)
    centres: np.ndarray       # (N, 2) int (x, y): candidate defect centres
    edge: np.ndarray          # (M, 2) int (x, y): candidate centres for 'missing' chunks
    fill: np.ndarray          # BGR float32: colour of what lies behind the product


_BACKING = np.array([40.0, 38.0, 36.0], np.float32)  # behind a texture: a dark belt


def _texture_placement(h: int, w: int) -> _Placement:
    my, mx = max(1, int(0.12 * h)), max(1, int(0.12 * w))
    ys, xs = np.mgrid[my:h - my, mx:w - mx]
    centres = np.stack([xs.ravel(), ys.ravel()], axis=1)
    return _Placement(np.ones((h, w), bool), centres, centres, _BACKING)


def _object_placement(image: np.ndarray) -> Optional[_Placement]:
    """Segment a bright object from its dark, even background (the border pixels); None if none found."""
    h, w = image.shape[:2]
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    bg = np.median(border, axis=0).astype(np.float32)
    diff = np.abs(image.astype(np.float32) - bg).max(axis=2)
    diff = cv2.medianBlur(np.clip(diff, 0, 255).astype(np.uint8), 3)
    fg = (diff > 25).astype(np.uint8)
    fg = cv2.morphologyEx(fg, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    count, labels, stats, _ = cv2.connectedComponentsWithStats(fg, connectivity=8)
    if count < 2:
        return None
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    fg = (labels == best).astype(np.uint8)
    if fg.sum() < 0.03 * h * w:
        return None
    k = max(1, min(h, w) // 32)
    inner = cv2.erode(fg, np.ones((2 * k + 1, 2 * k + 1), np.uint8))
    ys, xs = np.nonzero(inner if inner.any() else fg)
    centres = np.stack([xs, ys], axis=1)
    contours, _ = cv2.findContours(fg, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    edge = max(contours, key=len).reshape(-1, 2)
    return _Placement(fg.astype(bool), centres, edge, bg)


def _placement(image: np.ndarray, class_name: Optional[str]) -> _Placement:
    h, w = image.shape[:2]
    if class_name in OBJECT_CLASSES:
        found = _object_placement(image)
        if found is not None:
            return found
        log.debug("no %s found in the image; placing the defect anywhere", class_name)
    return _texture_placement(h, w)


def _pick(rng: np.random.Generator, points: np.ndarray) -> tuple[float, float]:
    x, y = points[rng.integers(len(points))]
    return float(x), float(y)


def _contrast(img: np.ndarray, shape: np.ndarray, candidates: Iterable[np.ndarray]) -> np.ndarray:
    """The candidate colour that differs most from the image over ``shape``."""
    region = img[shape]
    return max(candidates, key=lambda c: float(np.abs(region - c).mean()) if len(region) else 0.0)


def _noisy(rng: np.random.Generator, colour: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    return colour + sigma * rng.standard_normal((*shape, 1)).astype(np.float32)


def _scratch(img: np.ndarray, rng: np.random.Generator, where: _Placement) -> tuple[np.ndarray, np.ndarray]:
    """A thin, slightly bent line, bright (polished) or dark (scored), whichever contrasts more."""
    h, w = img.shape[:2]
    size = min(h, w)
    cx, cy = _pick(rng, where.centres)
    length = rng.uniform(0.25, 0.5) * size
    a = rng.uniform(0, np.pi)
    ux, uy = np.cos(a), np.sin(a)
    bend = rng.uniform(-0.08, 0.08) * length
    pts = np.array([[cx - ux * length / 2, cy - uy * length / 2],
                    [cx - uy * bend, cy + ux * bend],
                    [cx + ux * length / 2, cy + uy * length / 2]])
    mask = np.zeros((h, w), np.uint8)
    cv2.polylines(mask, [np.rint(pts).astype(np.int32)], False, 255, max(2, round(size / 64)), cv2.LINE_8)
    shape = (mask > 0) & where.support
    colour = _contrast(img, shape, [np.full(3, rng.uniform(225, 245), np.float32),
                                    np.full(3, rng.uniform(25, 45), np.float32)])
    return shape, _noisy(rng, colour, (h, w), 6.0)


def _crack(img: np.ndarray, rng: np.random.Generator, where: _Placement) -> tuple[np.ndarray, np.ndarray]:
    """A dark jagged polyline (random walk), sometimes with a branch."""
    h, w = img.shape[:2]
    size = min(h, w)
    cx, cy = _pick(rng, where.centres)
    mask = np.zeros((h, w), np.uint8)
    thickness = max(1, round(size / 80))

    def walk(x: float, y: float, a: float, steps: int) -> np.ndarray:
        pts = [(x, y)]
        for _ in range(steps):
            a += rng.uniform(-0.7, 0.7)
            step = rng.uniform(0.035, 0.065) * size
            x, y = x + step * np.cos(a), y + step * np.sin(a)
            pts.append((x, y))
        return np.array(pts)

    a0 = rng.uniform(0, 2 * np.pi)
    n = int(rng.integers(4, 7))
    main = np.concatenate([walk(cx, cy, a0, n)[::-1], walk(cx, cy, a0 + np.pi, n)[1:]])
    cv2.polylines(mask, [np.rint(main).astype(np.int32)], False, 255, thickness, cv2.LINE_8)
    if rng.random() < 0.5:
        bx, by = main[rng.integers(len(main))]
        branch = walk(bx, by, a0 + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2), int(rng.integers(2, 4)))
        cv2.polylines(mask, [np.rint(branch).astype(np.int32)], False, 255, max(1, thickness - 1), cv2.LINE_8)
    shape = (mask > 0) & where.support
    return shape, _noisy(rng, np.full(3, rng.uniform(12, 28), np.float32), (h, w), 4.0)


def _hole(img: np.ndarray, rng: np.random.Generator, where: _Placement) -> tuple[np.ndarray, np.ndarray]:
    """A dark ellipse, darkest in the middle (a bore or puncture)."""
    h, w = img.shape[:2]
    size = min(h, w)
    cx, cy = _pick(rng, where.centres)
    ax, ay = rng.uniform(0.035, 0.075) * size, rng.uniform(0.03, 0.065) * size
    angle = rng.uniform(0, 180)
    mask = np.zeros((h, w), np.uint8)
    centre = (int(round(cx)), int(round(cy)))
    axes = (max(2, int(round(ax))), max(2, int(round(ay))))
    cv2.ellipse(mask, centre, axes, angle, 0, 360, 255, -1, cv2.LINE_8)
    shape = (mask > 0) & where.support
    x, y = _grid(max(h, w))
    x, y = x[:h, :w] - cx, y[:h, :w] - cy
    t = np.deg2rad(angle)
    u = (x * np.cos(t) + y * np.sin(t)) / axes[0]
    v = (-x * np.sin(t) + y * np.cos(t)) / axes[1]
    rr = np.clip(u * u + v * v, 0, 1)
    value = rng.uniform(8, 18) + 45.0 * rr
    grey = value[..., None] + 2.0 * rng.standard_normal((h, w, 1)).astype(np.float32)
    return shape, np.repeat(grey, 3, axis=2)  # BGR like every drawer: add_defect's fix-up of unchanged pixels needs it


_STAIN_COLOURS = (
    np.array([25, 65, 150], np.float32),    # rust
    np.array([30, 36, 32], np.float32),     # oil
    np.array([215, 225, 232], np.float32),  # dried residue
    np.array([60, 125, 70], np.float32),    # green contamination
)


def _stain(img: np.ndarray, rng: np.random.Generator, where: _Placement) -> tuple[np.ndarray, np.ndarray]:
    """A blurred, semi-transparent colour blob (a few merged discs)."""
    h, w = img.shape[:2]
    size = min(h, w)
    cx, cy = _pick(rng, where.centres)
    r0 = rng.uniform(0.035, 0.06) * size
    blob = np.zeros((h, w), np.float32)
    for _ in range(int(rng.integers(2, 5))):
        ox, oy = rng.uniform(-1, 1, 2) * r0
        r = max(2, int(round(r0 * rng.uniform(0.6, 1.0))))
        cv2.circle(blob, (int(round(cx + ox)), int(round(cy + oy))), r, 1.0, -1, cv2.LINE_8)
    alpha = cv2.GaussianBlur(blob, (0, 0), max(1.0, 0.4 * r0)) * rng.uniform(0.75, 0.9)
    shape = (alpha > 0.2) & where.support
    colour = _contrast(img, shape, _STAIN_COLOURS)
    a = alpha[..., None]
    return shape, img * (1 - a) + colour * a


def _missing(img: np.ndarray, rng: np.random.Generator, where: _Placement) -> tuple[np.ndarray, np.ndarray]:
    """An irregular chunk of the product gone, showing what lies behind it."""
    h, w = img.shape[:2]
    size = min(h, w)
    cx, cy = _pick(rng, where.edge)
    r0 = rng.uniform(0.07, 0.11) * size
    k = int(rng.integers(7, 11))
    angles = np.sort(rng.uniform(0, 2 * np.pi, k))
    radii = r0 * rng.uniform(0.6, 1.2, k)
    pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.rint(pts).astype(np.int32)], 255, cv2.LINE_8)
    shape = (mask > 0) & where.support
    return shape, _noisy(rng, where.fill, (h, w), 2.5) + 2.0 * rng.standard_normal((h, w, 3)).astype(np.float32)


_DEFECT_DRAWERS = {
    "scratch": _scratch,
    "crack": _crack,
    "hole": _hole,
    "stain": _stain,
    "missing": _missing,
}
assert set(_DEFECT_DRAWERS) == set(DEFECTS)


def add_defect(image: np.ndarray, rng: np.random.Generator, kind: Optional[str] = None,
               class_name: Optional[str] = None) -> tuple[np.ndarray, np.ndarray]:
    """Draw one defect into a copy of ``image`` (BGR uint8).

    ``kind`` is one of DEFECTS (random when None). With an object ``class_name`` ('disk', 'capsule') the
    defect is placed on the object and a 'missing' chunk is cut from its outline; otherwise anywhere.
    Returns (defective copy, mask): the mask is 255 on exactly the pixels that changed and 0 where the
    copy equals the input; its area is between MIN_DEFECT_AREA and MAX_DEFECT_AREA of the image.
    """
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise UserError("add_defect needs a uint8 H x W x 3 (BGR) image; got "
                        f"{getattr(image, 'dtype', type(image))} {getattr(image, 'shape', '')}")
    if min(image.shape[:2]) < MIN_IMAGE_SIZE:
        raise UserError(f"image is too small for a defect ({image.shape[1]}x{image.shape[0]}); "
                        f"use at least {MIN_IMAGE_SIZE}x{MIN_IMAGE_SIZE}")
    if kind is None:
        kind = DEFECTS[int(rng.integers(len(DEFECTS)))]
    elif kind not in DEFECTS:
        raise UserError(f"unknown defect kind {kind!r}; available: {', '.join(DEFECTS)}")
    if class_name is not None:
        _check_class(class_name)

    h, w = image.shape[:2]
    where = _placement(image, class_name)
    img = image.astype(np.float32)
    for _ in range(_MAX_TRIES):
        shape, drawn = _DEFECT_DRAWERS[kind](img, rng, where)
        if MIN_DEFECT_AREA <= shape.mean() <= MAX_DEFECT_AREA:
            break
    else:
        raise RuntimeError(f"could not place a {kind} of a sensible size on this {w}x{h} image")

    old = image[shape]
    new = np.clip(np.rint(drawn[shape]), 0, 255).astype(np.uint8)
    same = (new == old).all(axis=1)
    if same.any():  # keep the mask exact: every masked pixel must change
        o = old[same].astype(np.int16)
        new[same] = np.where(o >= 128, o - 40, o + 40).astype(np.uint8)
    out = image.copy()
    out[shape] = new
    return out, shape.astype(np.uint8) * 255


# ----------------------------------------------------------------------------------------------
# Data sets and videos
# ----------------------------------------------------------------------------------------------

def _class_key(class_name: str) -> int:
    """A stable number for a class name (independent of its position in CLASSES)."""
    return zlib.crc32(class_name.encode("utf-8"))


def _image_rng(seed: int, split: str, class_name: str, label: int, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, _SPLITS[split], _class_key(class_name), label, index]))


def _check_classes(classes: Optional[Iterable[str]]) -> list[str]:
    names = list(CLASSES) if classes is None else [str(c) for c in classes]
    unknown = [c for c in names if c not in CLASSES]
    if unknown:
        raise UserError(f"unknown synthetic class(es) {', '.join(map(repr, unknown))}; "
                        f"available: {', '.join(CLASSES)}")
    if not names:
        raise UserError(f"no classes given; choose from: {', '.join(CLASSES)}")
    return list(dict.fromkeys(names))


def _write_png(path: Path, image: np.ndarray) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        if not cv2.imwrite(str(tmp), image):
            raise OSError(f"could not write image {path}")


@dataclass(frozen=True)
class DatasetSpec:
    """What ``generate_dataset`` draws: the classes (None: all of CLASSES), the image size, how many normal
    and anomalous images per class and split, the seed, and whether anomalies are ``paired`` with normals."""

    classes: Optional[Iterable[str]] = None
    image_size: int = 128
    n_train_normal: int = 4
    n_train_anomalous: int = 4
    n_test_normal: int = 8
    n_test_anomalous: int = 8
    seed: int = 0
    paired: bool = False


def generate_dataset(out_dir: PathLike, spec: Optional[DatasetSpec] = None, **changes) -> dict[str, Path]:
    """Write the synthetic data set of ``spec`` (``DatasetSpec`` with ``changes`` applied, e.g.
    ``image_size=64, seed=3``) under ``out_dir`` and return {"train": jsonl path, "test": jsonl path}.

    Layout: ``images/<split>/<class>/<idx>.png``, ``masks/<split>/<class>/<idx>_mask.png`` (anomalies
    only), ``train.jsonl`` and ``test.jsonl`` with one ``{"image_path", "label", "class_name",
    "mask_path"}`` object per line (paths relative to ``out_dir``; mask_path null for normals). Normal
    images are named ``good_<i>``, anomalies ``bad_<i>_<defect>``; anomaly i has defect
    DEFECTS[i % len(DEFECTS)]. Every image has its own random stream derived from (seed, split, class,
    label, i), so a seed always gives byte-identical files and changing a count changes no other image.

    ``paired``: anomaly i is normal image ``i % n_normal`` of its split with the defect drawn on it (the
    same product, so only the defect tells the two apart: no global difference between the normal and
    the defective images for a model to learn instead); it needs at least one normal image per split.
    """
    spec = replace(spec or DatasetSpec(), **changes)
    names = _check_classes(spec.classes)
    image_size, seed, paired = spec.image_size, spec.seed, spec.paired
    _check_size(image_size)
    counts = {"n_train_normal": spec.n_train_normal, "n_train_anomalous": spec.n_train_anomalous,
              "n_test_normal": spec.n_test_normal, "n_test_anomalous": spec.n_test_anomalous}
    for key, value in counts.items():
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise UserError(f"{key} must be a non-negative integer, got {value!r}")
    if not isinstance(seed, (int, np.integer)) or seed < 0:
        raise UserError(f"seed must be a non-negative integer, got {seed!r}")
    n_train_normal, n_train_anomalous, n_test_normal, n_test_anomalous = counts.values()
    if paired and ((n_train_anomalous and not n_train_normal) or (n_test_anomalous and not n_test_normal)):
        raise UserError("paired anomalies are drawn on normal images: give at least one normal image per split")

    out = Path(out_dir)
    result: dict[str, Path] = {}
    for split, n_normal, n_anomalous in (("train", n_train_normal, n_train_anomalous),
                                         ("test", n_test_normal, n_test_anomalous)):
        lines = []
        for class_name in names:
            for label, count in ((0, n_normal), (1, n_anomalous)):
                for i in range(int(count)):
                    rng = _image_rng(int(seed), split, class_name, label, i)
                    if paired and label == 1:  # the product of normal image i % n_normal
                        product_rng = _image_rng(int(seed), split, class_name, 0, i % int(n_normal))
                        image = draw_product(class_name, product_rng, int(image_size))
                    else:
                        image = draw_product(class_name, rng, int(image_size))
                    mask_rel = None
                    if label == 0:
                        stem = f"good_{i:03d}"
                    else:
                        kind = DEFECTS[i % len(DEFECTS)]
                        stem = f"bad_{i:03d}_{kind}"
                        image, mask = add_defect(image, rng, kind, class_name)
                        mask_rel = f"masks/{split}/{class_name}/{stem}_mask.png"
                        _write_png(out / mask_rel, mask)
                    image_rel = f"images/{split}/{class_name}/{stem}.png"
                    _write_png(out / image_rel, image)
                    lines.append(json.dumps({"image_path": image_rel, "label": label,
                                             "class_name": class_name, "mask_path": mask_rel}))
        path = out / f"{split}.jsonl"
        atomic_write_text(path, "".join(line + "\n" for line in lines))
        log.info("wrote %d %s images (%s) to %s", len(lines), split, ", ".join(names), path)
        result[split] = path
    return result


def synthetic_video_frames(class_name: str, n_frames: int, defect_frames: set[int], size: int,
                           seed: int = 0) -> tuple[list[np.ndarray], list[Optional[np.ndarray]]]:
    """Frames (BGR uint8) of one product moving along a conveyor, defects drawn into ``defect_frames``.

    The product drifts along x a few pixels per frame (wrapping around after about a fifth of the frame
    width) with a small vertical jitter; sensor noise changes every frame. Returns (frames, masks) with
    masks[i] the defect mask of frame i (uint8, 255 = defect) or None for clean frames.
    """
    _check_class(class_name)
    _check_size(size)
    if not isinstance(n_frames, (int, np.integer)) or n_frames < 1:
        raise UserError(f"n_frames must be a positive integer, got {n_frames!r}")
    bad = sorted(i for i in defect_frames if not 0 <= i < n_frames)
    if bad:
        raise UserError(f"defect frame indices {bad} are outside 0..{n_frames - 1}; "
                        f"pass indices below n_frames={n_frames}")
    key = _class_key(class_name)
    travel = max(1, size // 10)
    step = max(1, size // 64)
    frames: list[np.ndarray] = []
    masks: list[Optional[np.ndarray]] = []
    for t in range(int(n_frames)):
        params = np.random.default_rng(np.random.SeedSequence([seed, _VIDEO_TAG, key]))
        noise = np.random.default_rng(np.random.SeedSequence([seed, _VIDEO_TAG, key, t, 0]))
        dx = (t * step) % (2 * travel + 1) - travel
        dy = int(round(np.sin(0.7 * t)))
        frame = _render(class_name, params, noise, int(size), (dx, dy))
        mask = None
        if t in defect_frames:
            defect_rng = np.random.default_rng(np.random.SeedSequence([seed, _VIDEO_TAG, key, t, 1]))
            frame, mask = add_defect(frame, defect_rng, DEFECTS[t % len(DEFECTS)], class_name)
        frames.append(frame)
        masks.append(mask)
    return frames, masks
