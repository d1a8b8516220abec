"""What a calibration histogram PNG shows, read from its pixels: its size, the dashed threshold line and the
coloured bars (matplotlib's tab:blue normal scores, tab:red anomalies)."""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np


def read_png(path: Path) -> np.ndarray:
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, f"{path} does not decode"
    return image


def dashed_columns(image: np.ndarray, min_dashes: int = 4) -> list[int]:
    """Columns holding a dashed dark vertical line through the middle of the plot (rows 30-75 % of the height,
    below the legend and above the axis labels): at least ``min_dashes`` separate dark runs covering 30-80 %
    of that band (an axis spine is one solid run, text and ticks are not there)."""
    h = image.shape[0]
    band = image[int(0.3 * h):int(0.75 * h)].max(axis=2) < 80
    starts = (np.diff(band.astype(np.int8), axis=0) == 1).sum(axis=0)
    fraction = band.mean(axis=0)
    return [int(x) for x in np.flatnonzero((starts >= min_dashes) & (fraction >= 0.3) & (fraction <= 0.8))]


def bar_pixels_mask(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(blue-ish, red-ish) pixel masks of the histogram bars (normal, anomalous), below the legend's swatches
    (rows 30-85 % of the height)."""
    b, g, r = (image[..., i].astype(int) for i in range(3))
    band = np.zeros(image.shape[:2], bool)
    band[int(0.3 * image.shape[0]):int(0.85 * image.shape[0])] = True
    return band & (b > r + 60) & (b > g + 20), band & (r > b + 60) & (r > g + 60)
