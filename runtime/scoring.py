"""Image score, decisions and debouncing, exactly as the graph contract defines them (outside the graph)."""
from __future__ import annotations

import numpy as np

from .manifest import ScoreParams

# Decision names written to the event log.
NORMAL = "normal"
ANOMALOUS = "anomalous"  # above threshold, debounce not yet satisfied
ALARM = "alarm"          # above threshold for at least N consecutive frames


def normalize_map(values: np.ndarray, p: ScoreParams) -> np.ndarray:
    """``(x - map_lo) / (map_hi - map_lo)``; for ``map_max`` and, per pixel, for ``anomaly_map``."""
    return (np.asarray(values, dtype=np.float32) - np.float32(p.map_lo)) / np.float32(p.map_hi - p.map_lo)


def normalize_cls(values: np.ndarray, p: ScoreParams) -> np.ndarray:
    return (np.asarray(values, dtype=np.float32) - np.float32(p.cls_lo)) / np.float32(p.cls_hi - p.cls_lo)


def image_scores(map_max: np.ndarray, cls_score: np.ndarray, p: ScoreParams) -> np.ndarray:
    """``map_weight * map_n + (1 - map_weight) * cls_n`` per image; not clipped."""
    w = np.float32(p.map_weight)
    return w * normalize_map(map_max, p) + (np.float32(1.0) - w) * normalize_cls(cls_score, p)


def is_anomalous(scores: np.ndarray, p: ScoreParams) -> np.ndarray:
    return np.asarray(scores) >= p.threshold


def pixel_mask(anomaly_map: np.ndarray, p: ScoreParams) -> np.ndarray:
    """Pixels whose normalized value reaches ``pixel_threshold`` (for overlays and evidence masks)."""
    return normalize_map(anomaly_map, p) >= p.pixel_threshold


class Debouncer:
    """An alarm fires only after ``n`` consecutive anomalous frames, and lasts while they continue."""

    def __init__(self, n: int = 1):
        if n < 1:
            raise ValueError(f"debounce must be >= 1, got {n}")
        self.n = n
        self.streak = 0
        self.alarms = 0  # number of alarm onsets (rising edges)

    def update(self, anomalous: bool) -> str:
        """Feed one frame's raw decision; returns NORMAL, ANOMALOUS (not yet debounced) or ALARM."""
        if not anomalous:
            self.streak = 0
            return NORMAL
        self.streak += 1
        if self.streak < self.n:
            return ANOMALOUS
        if self.streak == self.n:
            self.alarms += 1
        return ALARM

    def reset(self) -> None:
        self.streak = 0
