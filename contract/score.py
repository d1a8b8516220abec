"""The image score (graph contract, "Image score"): its parameters and its one implementation.

    map_n   = (map_max   - map_lo) / (map_hi - map_lo)
    cls_n   = (cls_score - cls_lo) / (cls_hi - cls_lo)
    score   = map_weight * map_n + (1 - map_weight) * cls_n      anomalous <=> score >= threshold
    pixel_n = (anomaly_map - map_lo) / (map_hi - map_lo)          anomalous pixel <=> pixel_n >= pixel_threshold

Calibration fits the constants, evaluation normalizes with test-set ranges, benchmarks and the runtime
score frames: all of them call these functions, in float32 as the runtime does, so a threshold is fitted
on exactly the values it will be compared with.

The score shown to people (the line page, the banners of evidence and video, MQTT/webhook/event ``score``)
is the ``operator_score``: the raw score above mapped onto [0, 1] with the threshold at 0.5 (anomalib's
convention), so "0.5 and above is an alarm" holds for every artifact and line. Metrics, calibration and the
decisions themselves work on raw scores (events keep them as ``raw_score`` beside ``threshold``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Optional

import numpy as np

SCORE_KEYS = ("map_lo", "map_hi", "cls_lo", "cls_hi", "map_weight", "threshold", "pixel_threshold")
SCORE_SOURCES = ("default", "calibration")


class ScoreError(ValueError):
    """A score block that cannot be used (the message says which field and why)."""


@dataclass(frozen=True)
class ScoreParams:
    """Normalization constants and thresholds of the image score (the manifest's ``score`` block)."""

    map_lo: float
    map_hi: float
    cls_lo: float
    cls_hi: float
    map_weight: float
    threshold: float = 0.5
    pixel_threshold: float = 0.5

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise ScoreError(f"score.{f.name} must be a number, got {value!r}")
            if not math.isfinite(float(value)):
                raise ScoreError(f"score.{f.name} is {value!r}; it must be a finite number")
            object.__setattr__(self, f.name, float(value))
        if not self.map_lo < self.map_hi:
            raise ScoreError(f"score.map_lo ({self.map_lo:g}) must be below score.map_hi ({self.map_hi:g})")
        if not self.cls_lo < self.cls_hi:
            raise ScoreError(f"score.cls_lo ({self.cls_lo:g}) must be below score.cls_hi ({self.cls_hi:g})")
        if not 0.0 <= self.map_weight <= 1.0:
            raise ScoreError(f"score.map_weight is {self.map_weight:g}; it must be in [0, 1]")

    @classmethod
    def from_block(cls, block: Mapping[str, Any]) -> "ScoreParams":
        """Parse a manifest ``score`` block (extra keys such as ``source`` are ignored here)."""
        if not isinstance(block, Mapping):
            raise ScoreError(f"the score block must be an object, got {type(block).__name__}")
        missing = [k for k in SCORE_KEYS if k not in block]
        if missing:
            raise ScoreError(f"the score block lacks {', '.join(missing)}")
        return cls(**{k: block[k] for k in SCORE_KEYS})

    def to_block(self, source: str = "default", calibration: Optional[dict] = None) -> dict[str, Any]:
        """A manifest ``score`` block with these values."""
        block: dict[str, Any] = {k: getattr(self, k) for k in SCORE_KEYS}
        block.update(source=source, calibration=calibration)
        return block

    def with_threshold(self, threshold: Optional[float]) -> "ScoreParams":
        return self if threshold is None else replace(self, threshold=float(threshold))

    def with_ranges(self, map_range: tuple[float, float], cls_range: tuple[float, float]) -> "ScoreParams":
        """The same weights/thresholds with other normalization ranges (equal ends get a unit span)."""
        def span(lo: float, hi: float) -> tuple[float, float]:
            return (float(lo), float(hi)) if hi > lo else (float(lo), float(lo) + 1.0)

        (mlo, mhi), (clo, chi) = span(*map_range), span(*cls_range)
        return replace(self, map_lo=mlo, map_hi=mhi, cls_lo=clo, cls_hi=chi)


def normalize_map(values: Any, p: ScoreParams) -> np.ndarray:
    """``(x - map_lo) / (map_hi - map_lo)`` in float32; for ``map_max`` and, per pixel, for ``anomaly_map``."""
    return (np.asarray(values, dtype=np.float32) - np.float32(p.map_lo)) / np.float32(p.map_hi - p.map_lo)


def normalize_cls(values: Any, p: ScoreParams) -> np.ndarray:
    return (np.asarray(values, dtype=np.float32) - np.float32(p.cls_lo)) / np.float32(p.cls_hi - p.cls_lo)


def image_score(map_max: Any, cls_score: Any, p: ScoreParams) -> np.ndarray:
    """``map_weight * map_n + (1 - map_weight) * cls_n`` per image, float32, not clipped."""
    w = np.float32(p.map_weight)
    return w * normalize_map(map_max, p) + (np.float32(1.0) - w) * normalize_cls(cls_score, p)


def is_anomalous(scores: Any, p: ScoreParams) -> np.ndarray:
    return np.asarray(scores) >= p.threshold


def pixel_mask(anomaly_map: Any, p: ScoreParams) -> np.ndarray:
    """Pixels whose normalized value reaches ``pixel_threshold`` (overlays and evidence masks)."""
    return normalize_map(anomaly_map, p) >= p.pixel_threshold


SHOWN_THRESHOLD = 0.5
"""Where the calibrated threshold sits on the operator's [0, 1] scale."""
MIN_OPERATOR_SCALE = 0.25
"""The shortest raw distance from the threshold to the ends of the shown scale (a quarter of the normal frames'
spread): a hand-set threshold near or below the median good part still gets a usable scale."""


def operator_scale(threshold: float) -> float:
    """Raw score units from the threshold to the ends of the shown scale: the distance from the median good
    part (raw 0 after calibration, ``aaclip.calibration.thresholds.fit_normalization``) to the threshold, at
    least ``MIN_OPERATOR_SCALE``."""
    return max(float(threshold), MIN_OPERATOR_SCALE)


def operator_score(raw: Any, threshold: float) -> Any:
    """The score shown to people: ``clip(0.5 + 0.5 * (raw - threshold) / operator_scale(threshold), 0, 1)``.

    Monotone in ``raw``; ``raw == threshold`` shows 0.5, so shown >= 0.5 exactly when the raw score reaches
    the threshold; a calibrated artifact shows its median good part as 0 and ``2 x threshold`` as 1 (an
    uncalibrated one, threshold 0.5 on [0, 1]-normalized outputs, shows its raw score). NaN stays
    NaN (a broken output is not a score). A scalar in, a float out; an array in, a float64 array out."""
    values = np.asarray(raw, dtype=np.float64)
    shown = np.clip(SHOWN_THRESHOLD + SHOWN_THRESHOLD * (values - float(threshold)) / operator_scale(threshold),
                    0.0, 1.0)
    return float(shown) if shown.ndim == 0 else shown
