"""Anomaly-detection metrics (SPEC section 7), pure numpy.

Pixel AUROC, pixel AP, pixel F1-max, AUPRO (PRO integrated up to 30% FPR, normalized), image AUROC,
image AP, image F1-max; per class, then the mean over classes.

The calibration package runs this on a bare Jetson, so it needs numpy (and cv2 for the connected
components of AUPRO, a base dependency) and nothing else: no torch, sklearn or scipy. The curve
functions follow sklearn's conventions exactly (tied scores grouped into one threshold, step-wise AP
without interpolation) and the tests use sklearn as the oracle.

Conventions: labels are 0 (normal) / 1 (anomalous), a higher score means more anomalous, a sample is
predicted anomalous when ``score >= threshold``.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np

from . import constants as C

PIXEL_KEYS = ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro")
IMAGE_KEYS = ("image_auroc", "image_ap", "image_f1_max")
METRIC_KEYS = PIXEL_KEYS + IMAGE_KEYS
METRIC_TITLES = {
    "pixel_auroc": "P-AUROC",
    "pixel_ap": "P-AP",
    "pixel_f1_max": "P-F1max",
    "aupro": "AUPRO",
    "image_auroc": "I-AUROC",
    "image_ap": "I-AP",
    "image_f1_max": "I-F1max",
}
MEAN_KEY = "mean"
COUNT_KEY = "n_classes"  # inside the mean entry: how many classes contributed to each metric's mean
MISSING = "\u2013"  # en dash shown for a missing metric in tables
AUPRO_MAX_FPR = 0.3


# ---------------------------------------------------------------------------------------------
# input checks


def _as_labels(labels: Any, name: str = "labels") -> np.ndarray:
    """Binary labels as a flat bool array; 0/1 (any numeric dtype) or bool accepted."""
    y = np.asarray(labels)
    if y.dtype == bool:
        return y.reshape(-1)
    if not (np.issubdtype(y.dtype, np.integer) or np.issubdtype(y.dtype, np.floating)):
        raise ValueError(f"{name} must be numeric 0/1 or bool, got dtype {y.dtype}")
    flat = y.reshape(-1)
    yb = flat != 0
    if not np.all(yb | (flat == 0)) or not np.all(flat[yb] == 1):
        raise ValueError(f"{name} must hold only 0 (normal) and 1 (anomalous); binarize masks with mask != 0 first")
    return yb


def _as_scores(scores: Any, n: int, name: str = "scores") -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64).reshape(-1)
    if s.size != n:
        raise ValueError(f"{name} has {s.size} values but the labels have {n}: pass one score per label")
    if not np.all(np.isfinite(s)):
        raise ValueError(f"{name} contain NaN or inf: check the model output before computing metrics")
    return s


def _check_pair(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = _as_labels(labels)
    if y.size == 0:
        raise ValueError("no samples: metrics need at least one labelled score")
    return y, _as_scores(scores, y.size)


# ---------------------------------------------------------------------------------------------
# curves (sklearn conventions)


def _descending(scores: np.ndarray) -> np.ndarray:
    """Indices sorting scores from high to low (ties in any order: they are grouped later)."""
    return np.argsort(scores, kind="stable")[::-1]


def _clf_curve(y_sorted: np.ndarray, s_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative false / true positives at each distinct threshold of descending-sorted scores."""
    last_of_group = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]
    tps = np.cumsum(y_sorted, dtype=np.int64)[last_of_group]
    fps = (last_of_group + 1) - tps
    return fps, tps, s_sorted[last_of_group]


def _binary_clf_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    y, s = _check_pair(labels, scores)
    order = _descending(s)
    return _clf_curve(y[order], s[order])


def _roc_from_counts(fps: np.ndarray, tps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if tps[-1] == 0 or fps[-1] == 0:
        raise ValueError("AUROC is undefined when only one class is present (need normal and anomalous samples)")
    fpr = np.r_[0.0, fps / fps[-1]]
    tpr = np.r_[0.0, tps / tps[-1]]
    return fpr, tpr


def _pr_from_counts(fps: np.ndarray, tps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall, ordered like sklearn: recall decreasing, ending at (precision 1, recall 0)."""
    if tps[-1] == 0:
        raise ValueError("precision/recall are undefined without anomalous samples (no label 1)")
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    return np.r_[precision[::-1], 1.0], np.r_[recall[::-1], 0.0]


def _trapezoid(y: np.ndarray, x: np.ndarray) -> float:
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) * 0.5))


def _auroc_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    fpr, tpr = _roc_from_counts(fps, tps)
    return _trapezoid(tpr, fpr)


def _ap_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    precision, recall = _pr_from_counts(fps, tps)
    return float(-np.sum(np.diff(recall) * precision[:-1]))


def _f1_max_from_counts(fps: np.ndarray, tps: np.ndarray) -> float:
    precision, recall = _pr_from_counts(fps, tps)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    return float(f1.max())


def roc_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(fpr, tpr, thresholds), one point per distinct score plus the (0, 0) start (threshold +inf)."""
    fps, tps, thresholds = _binary_clf_curve(labels, scores)
    fpr, tpr = _roc_from_counts(fps, tps)
    return fpr, tpr, np.r_[np.inf, thresholds]


def precision_recall_curve(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(precision, recall, thresholds) in sklearn's order: thresholds increasing, a last (1, 0) point."""
    fps, tps, thresholds = _binary_clf_curve(labels, scores)
    precision, recall = _pr_from_counts(fps, tps)
    return precision, recall, thresholds[::-1]


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve (tied scores form one step, like sklearn.metrics.roc_auc_score)."""
    return _auroc_from_counts(*_binary_clf_curve(labels, scores)[:2])


def average_precision(labels: Any, scores: Any) -> float:
    """Step-wise average precision sum (R_n - R_n-1) P_n, like sklearn.metrics.average_precision_score."""
    return _ap_from_counts(*_binary_clf_curve(labels, scores)[:2])


def f1_max(labels: Any, scores: Any) -> float:
    """Best F1 = 2PR / (P + R) over all thresholds of the precision/recall curve (0 where P + R = 0)."""
    return _f1_max_from_counts(*_binary_clf_curve(labels, scores)[:2])


# ---------------------------------------------------------------------------------------------
# AUPRO


def _as_masks_and_maps(masks: Any, maps: Any) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(masks)
    a = np.asarray(maps)
    if m.ndim != 3 or a.ndim != 3:
        raise ValueError(
            f"masks and maps must be (N, H, W) arrays, got shapes {m.shape} and {a.shape}: "
            "stack the images and drop channel axes"
        )
    if m.shape != a.shape:
        raise ValueError(
            f"masks {m.shape} and maps {a.shape} differ in shape: resize the maps to the mask size first"
        )
    y = _as_labels(m, "masks").reshape(m.shape)
    s = _as_scores(a, a.size, "maps").reshape(a.shape)
    return y, s


def _region_weights(masks: np.ndarray) -> tuple[np.ndarray, int]:
    """Per-pixel weight 1 / (num_regions * region_size) (0 for normal pixels), and num_regions.

    Regions are the 8-connected components of each image's mask. With these weights the PRO at a
    threshold (mean over regions of the covered fraction) is the sum of the weights of the pixels at or
    above the threshold, so one sorted sweep gives the exact curve.
    """
    n = masks.shape[0]
    sizes: list[np.ndarray] = []
    per_pixel_size = np.zeros(masks.shape, dtype=np.float64)
    for i in range(n):
        if not masks[i].any():
            continue
        count, components = cv2.connectedComponents(masks[i].astype(np.uint8), connectivity=8)
        region_sizes = np.bincount(components.reshape(-1), minlength=count)
        region_sizes[0] = 0  # background
        sizes.append(region_sizes[1:])
        per_pixel_size[i] = region_sizes[components]
    num_regions = int(sum(s.size for s in sizes))
    weights = np.zeros(masks.shape, dtype=np.float64)
    if num_regions:
        inside = per_pixel_size > 0
        weights[inside] = 1.0 / (num_regions * per_pixel_size[inside])
    return weights, num_regions


def _integrate_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under the curve (x non-decreasing) from x[0] to x_max, interpolating at x_max."""
    inside = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    xs, ys = x[:inside], y[:inside]
    if inside < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        y_at = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        xs, ys = np.r_[xs, x_max], np.r_[ys, y_at]
    return _trapezoid(ys, xs)


def _aupro_sorted(
    s_sorted: np.ndarray,
    normal_sorted: np.ndarray,
    weight_sorted: np.ndarray,
    max_fpr: float,
    num_thresholds: Optional[int],
) -> float:
    n_normal = int(normal_sorted.sum())
    if n_normal == 0:
        return math.nan
    cum_fp = np.cumsum(normal_sorted, dtype=np.int64)
    cum_pro = np.cumsum(weight_sorted)
    if num_thresholds is None:
        ends = np.r_[np.flatnonzero(np.diff(s_sorted)), s_sorted.size - 1]  # every distinct threshold
    else:
        thresholds = np.linspace(s_sorted[0], s_sorted[-1], int(num_thresholds))
        counts = np.searchsorted(-s_sorted, -thresholds, side="right")  # pixels with score >= t
        ends = np.unique(counts[counts > 0]) - 1
    fpr = np.r_[0.0, cum_fp[ends] / n_normal]
    pro = np.r_[0.0, np.minimum(cum_pro[ends], 1.0)]
    return _integrate_to(fpr, pro, max_fpr) / max_fpr


def aupro(masks: Any, maps: Any, max_fpr: float = AUPRO_MAX_FPR, num_thresholds: Optional[int] = None) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, divided by ``max_fpr`` (MVTec AUPRO).

    masks: (N, H, W) 0/1; maps: (N, H, W) scores. For a threshold t, FPR = normal pixels with score >= t
    over all normal pixels of all images; PRO = mean over all ground-truth regions (8-connected
    components per image) of the fraction of the region with score >= t. The curve (FPR, PRO) starts at
    (0, 0), is interpolated linearly at ``max_fpr`` and integrated with the trapezoid rule.

    ``num_thresholds=None`` evaluates every distinct score (exact); an integer uses that many evenly
    spaced thresholds between the largest and smallest score (an approximation, as in some reference
    code). Returns NaN when there is no anomalous region or no normal pixel.
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    if num_thresholds is not None and int(num_thresholds) < 2:
        raise ValueError(f"num_thresholds must be at least 2 (or None for exact), got {num_thresholds}")
    y, s = _as_masks_and_maps(masks, maps)
    weights, num_regions = _region_weights(y)
    if num_regions == 0:
        return math.nan
    flat_s = s.reshape(-1)
    order = _descending(flat_s)
    return _aupro_sorted(flat_s[order], ~y.reshape(-1)[order], weights.reshape(-1)[order], max_fpr, num_thresholds)


# ---------------------------------------------------------------------------------------------
# per-class metric sets


def pixel_metrics(masks: Any, maps: Any, max_fpr: float = AUPRO_MAX_FPR) -> dict[str, float]:
    """pixel_auroc, pixel_ap, pixel_f1_max and aupro of one class; all NaN when the pixels hold one class.

    All pixels are sorted once and shared by the four metrics.
    """
    y, s = _as_masks_and_maps(masks, maps)
    flat_y, flat_s = y.reshape(-1), s.reshape(-1)
    n_anomalous = int(flat_y.sum())
    if n_anomalous == 0 or n_anomalous == flat_y.size:
        return {key: math.nan for key in PIXEL_KEYS}
    order = _descending(flat_s)
    y_sorted, s_sorted = flat_y[order], flat_s[order]
    fps, tps, _ = _clf_curve(y_sorted, s_sorted)
    weights, _ = _region_weights(y)
    return {
        "pixel_auroc": _auroc_from_counts(fps, tps),
        "pixel_ap": _ap_from_counts(fps, tps),
        "pixel_f1_max": _f1_max_from_counts(fps, tps),
        "aupro": _aupro_sorted(s_sorted, ~y_sorted, weights.reshape(-1)[order], max_fpr, None),
    }


def image_metrics(labels: Any, scores: Any) -> dict[str, Optional[float]]:
    """image_auroc, image_ap, image_f1_max of one class; all None (missing, not 0) with a single label."""
    y, s = _check_pair(labels, scores)
    if y.all() or not y.any():
        return {key: None for key in IMAGE_KEYS}
    order = _descending(s)
    fps, tps, _ = _clf_curve(y[order], s[order])
    return {
        "image_auroc": _auroc_from_counts(fps, tps),
        "image_ap": _ap_from_counts(fps, tps),
        "image_f1_max": _f1_max_from_counts(fps, tps),
    }


# ---------------------------------------------------------------------------------------------
# score normalization (SPEC section 5)


def minmax_normalize(x: Any, value_range: Optional[tuple[float, float]] = None) -> np.ndarray:
    """(x - lo) / (hi - lo) with (lo, hi) = value_range or x's own min and max; constant -> zeros."""
    a = np.asarray(x, dtype=np.float64)
    if a.size == 0:
        return a.copy()
    if not np.all(np.isfinite(a)):
        raise ValueError("cannot min-max normalize values containing NaN or inf")
    lo, hi = (float(a.min()), float(a.max())) if value_range is None else map(float, value_range)
    if hi == lo:
        return np.zeros_like(a)
    return (a - lo) / (hi - lo)


def image_scores(
    map_max: Any,
    cls_score: Any,
    domain: str,
    map_range: Optional[tuple[float, float]] = None,
    cls_range: Optional[tuple[float, float]] = None,
) -> np.ndarray:
    """Image score: w * norm(map_max) + (1 - w) * norm(cls_score), w = MAP_WEIGHT[domain] (0.5 / 1.0).

    ``map_range`` / ``cls_range`` are the (lo, hi) used for normalization; None means the min and max
    of the given values (test-set min-max). The reference evaluation normalizes the whole maps before
    taking the maximum, i.e. map_range = (maps.min(), maps.max()) over the class's test set; pass that
    to reproduce its numbers (with the weights 0.5/0.5 the ranges change the ranking).
    """
    if domain not in C.MAP_WEIGHT:
        raise ValueError(f"unknown domain {domain!r}: use one of {', '.join(C.DOMAINS)}")
    mx = np.asarray(map_max, dtype=np.float64).reshape(-1)
    cls = np.asarray(cls_score, dtype=np.float64).reshape(-1)
    if mx.shape != cls.shape:
        raise ValueError(f"map_max has {mx.size} values but cls_score has {cls.size}: pass one of each per image")
    w = C.MAP_WEIGHT[domain]
    score = w * minmax_normalize(mx, map_range)
    if w != 1.0:
        score = score + (1.0 - w) * minmax_normalize(cls, cls_range)
    return score


# ---------------------------------------------------------------------------------------------
# reports


def _present(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


def _clean(value: Any) -> Optional[float]:
    return float(value) if _present(value) else None


def class_report(per_class: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-class metrics plus a "mean" entry: the mean over classes of each metric, ignoring missing ones.

    Missing (None or NaN) values are stored as None so the report is valid JSON. The mean entry holds
    None for a metric missing in every class, and under "n_classes" how many classes contributed.
    """
    if MEAN_KEY in per_class:
        raise ValueError(f"a class may not be named {MEAN_KEY!r}: it is reserved for the mean row")
    report: dict[str, dict[str, Any]] = {}
    for name, metrics in per_class.items():
        entry = dict(metrics)
        for key in METRIC_KEYS:
            if key in entry:
                entry[key] = _clean(entry[key])
        report[name] = entry
    mean: dict[str, Any] = {}
    counts: dict[str, int] = {}
    for key in METRIC_KEYS:
        values = [m[key] for m in report.values() if m.get(key) is not None]
        counts[key] = len(values)
        mean[key] = float(np.mean(values)) if values else None
    mean[COUNT_KEY] = counts
    report[MEAN_KEY] = mean
    return report


def _cell(value: Any) -> str:
    return f"{100.0 * value:.1f}" if _present(value) else MISSING


def markdown_table(report: Mapping[str, Mapping[str, Any]], keys: Sequence[str] = METRIC_KEYS) -> str:
    """A markdown table: one row per class (then the mean), metrics in percent with one decimal."""
    header = "| class | " + " | ".join(METRIC_TITLES.get(k, k) for k in keys) + " |"
    rule = "|---|" + "---:|" * len(keys)
    names = [n for n in report if n != MEAN_KEY] + ([MEAN_KEY] if MEAN_KEY in report else [])
    rows = ["| " + " | ".join([name] + [_cell(report[name].get(k)) for k in keys]) + " |" for name in names]
    return "\n".join([header, rule, *rows]) + "\n"
