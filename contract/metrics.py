"""Anomaly-detection metrics (SPEC section 7) and the statistics of calibration and the INT8 gate: the one
implementation every layer uses.

Per class: pixel AUROC, pixel AP, pixel F1-max, AUPRO (PRO integrated up to 30% FPR, normalized), image
AUROC, image AP, image F1-max; then the mean over classes (``class_report``, ``markdown_table``). Also the
F1-optimal threshold (``best_f1``) and Spearman's rank correlation (``spearman``).

scikit-learn computes every curve metric it has (``roc_auc_score``, ``average_precision_score``,
``precision_recall_curve``, ``roc_curve``) and scipy the rank correlation (``spearmanr``). Both are imported
inside the functions that need them, so this module imports with numpy and opencv only and the contract
layer still installs on a bare Jetson; the ``train`` and ``calibration`` extras install them.

AUPRO is written here because neither library has it: it needs the ground-truth regions (8-connected
components of each mask, found with OpenCV) and a per-region rather than per-pixel true-positive rate.
Weighting each anomalous pixel by ``1 / (number of regions * size of its region)`` turns that rate into
the weighted TPR of sklearn's ``roc_curve``; only the region weights and the integration up to
``max_fpr`` (sklearn's ``max_fpr`` applies the McClish correction, not the plain normalized area of MVTec
AUPRO) are our own code.

Conventions: labels are 0 (normal) / 1 (anomalous), a higher score means more anomalous, a sample is
predicted anomalous when ``score >= threshold``. Image metrics of a class with a single label are missing
(None), never 0; the mean over classes counts only the classes where a metric is defined.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence

import cv2
import numpy as np

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
F1_TIE = 1e-12  # F1 values this close to the best count as ties (the highest threshold wins)


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


def _check_pair(labels: Any, scores: Any, need_normal: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Validated (bool labels, float64 scores); both labels must occur (normals optional for AP/F1)."""
    y = _as_labels(labels)
    if y.size == 0:
        raise ValueError("no samples: metrics need at least one labelled score")
    s = _as_scores(scores, y.size)
    if not y.any():
        raise ValueError("the metric is undefined without anomalous samples (no label 1)")
    if need_normal and y.all():
        raise ValueError("AUROC is undefined when only one class is present (need normal and anomalous samples)")
    return y, s


# ---------------------------------------------------------------------------------------------
# curve metrics (scikit-learn)


def auroc(labels: Any, scores: Any) -> float:
    """Area under the ROC curve; a tie between a normal and an anomalous sample counts one half."""
    from sklearn.metrics import roc_auc_score

    y, s = _check_pair(labels, scores)
    return float(roc_auc_score(y, s))


def average_precision(labels: Any, scores: Any) -> float:
    """Step-wise average precision ``sum (R_n - R_n-1) P_n`` over the distinct thresholds (no interpolation)."""
    from sklearn.metrics import average_precision_score

    y, s = _check_pair(labels, scores, need_normal=False)
    return float(average_precision_score(y, s))


def best_f1(labels: Any, scores: Any) -> tuple[float, float]:
    """(threshold, F1): the best F1 = 2PR / (P + R) over thresholds at the observed scores.

    Among thresholds with the same F1 (within ``F1_TIE``) the highest wins: it raises the fewest alarms.
    """
    from sklearn.metrics import precision_recall_curve

    y, s = _check_pair(labels, scores, need_normal=False)
    precision, recall, thresholds = precision_recall_curve(y, s)
    precision, recall = precision[:-1], recall[:-1]  # the last point (P 1, R 0) has no threshold
    denom = precision + recall
    f1 = np.divide(2.0 * precision * recall, denom, out=np.zeros_like(denom), where=denom > 0)
    best = int(np.flatnonzero(f1 >= f1.max() - F1_TIE)[-1])  # thresholds increase: the last is the highest
    return float(thresholds[best]), float(f1[best])


def f1_max(labels: Any, scores: Any) -> float:
    """Best F1 over all thresholds of the precision/recall curve (0 where P + R = 0)."""
    return best_f1(labels, scores)[1]


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation (average ranks for ties); 1.0 when both are constant, 0.0 when one is."""
    a = np.asarray(x, np.float64).reshape(-1)
    b = np.asarray(y, np.float64).reshape(-1)
    if a.size != b.size:
        raise ValueError(f"spearman needs paired values, got {a.size} and {b.size}")
    const_a, const_b = (v.size < 2 or bool(np.all(v == v[0])) for v in (a, b))
    if const_a or const_b:  # scipy returns NaN here; a constant pair keeps its (trivial) order
        return 1.0 if const_a and const_b else 0.0
    from scipy.stats import spearmanr

    return float(spearmanr(a, b)[0])


# ---------------------------------------------------------------------------------------------
# AUPRO (no library has it: see the module docstring)


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


def _region_weights(masks: np.ndarray) -> np.ndarray:
    """Per-pixel weight ``1 / (num_regions * region_size)`` for anomalous pixels, 1 for normal pixels.

    Regions are the 8-connected components of each image's mask (at least one must exist). The weights
    of the anomalous pixels at or above a threshold sum to the PRO there (the mean over regions of the
    covered fraction), and the weights of all anomalous pixels sum to 1.
    """
    region_size = np.zeros(masks.shape, dtype=np.float64)
    num_regions = 0
    for i in range(masks.shape[0]):
        if masks[i].any():
            count, components = cv2.connectedComponents(masks[i].astype(np.uint8), connectivity=8)
            sizes = np.bincount(components.reshape(-1), minlength=count).astype(np.float64)
            sizes[0] = 0.0  # background
            region_size[i] = sizes[components]
            num_regions += count - 1
    weights = np.ones(masks.shape, dtype=np.float64)
    inside = region_size > 0
    weights[inside] = 1.0 / (num_regions * region_size[inside])
    return weights


def _area_up_to(x: np.ndarray, y: np.ndarray, x_max: float) -> float:
    """Trapezoid area under the curve (x non-decreasing, from x[0]) up to ``x_max``, interpolated there."""
    from sklearn.metrics import auc

    inside = int(np.searchsorted(x, x_max, side="right"))  # points with x <= x_max
    xs, ys = x[:inside], y[:inside]
    if inside < x.size and xs[-1] < x_max:
        x0, x1, y0, y1 = x[inside - 1], x[inside], y[inside - 1], y[inside]
        xs, ys = np.r_[xs, x_max], np.r_[ys, y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)]
    return float(auc(xs, ys)) if xs.size >= 2 else 0.0


def _aupro(y: np.ndarray, s: np.ndarray, max_fpr: float) -> float:
    from sklearn.metrics import roc_curve

    if not y.any() or y.all():
        return math.nan
    weights = _region_weights(y)
    # the weighted TPR of these weights is the PRO; normal pixels weigh 1, so the FPR is a pixel count
    fpr, pro, _ = roc_curve(y.reshape(-1), s.reshape(-1), sample_weight=weights.reshape(-1),
                            drop_intermediate=False)
    return _area_up_to(fpr, np.minimum(pro, 1.0), max_fpr) / max_fpr


def aupro(masks: Any, maps: Any, max_fpr: float = AUPRO_MAX_FPR) -> float:
    """Area under the per-region-overlap curve up to ``max_fpr``, divided by ``max_fpr`` (MVTec AUPRO).

    masks: (N, H, W) 0/1; maps: (N, H, W) scores. For a threshold t, FPR = normal pixels with score >= t
    over all normal pixels of all images; PRO = mean over all ground-truth regions (8-connected
    components per image) of the fraction of the region with score >= t. The curve (FPR, PRO), one point
    per distinct score, starts at (0, 0), is interpolated linearly at ``max_fpr`` and integrated with the
    trapezoid rule. NaN when there is no anomalous region or no normal pixel.
    """
    if not 0 < max_fpr <= 1:
        raise ValueError(f"max_fpr must be in (0, 1], got {max_fpr}")
    y, s = _as_masks_and_maps(masks, maps)
    return _aupro(y, s, max_fpr)


# ---------------------------------------------------------------------------------------------
# per-class metric sets


def pixel_metrics(masks: Any, maps: Any, max_fpr: float = AUPRO_MAX_FPR) -> dict[str, float]:
    """pixel_auroc, pixel_ap, pixel_f1_max and aupro of one class; all NaN when the pixels hold one class."""
    y, s = _as_masks_and_maps(masks, maps)
    flat_y, flat_s = y.reshape(-1), s.reshape(-1)
    if not flat_y.any() or flat_y.all():
        return {key: math.nan for key in PIXEL_KEYS}
    return {
        "pixel_auroc": auroc(flat_y, flat_s),
        "pixel_ap": average_precision(flat_y, flat_s),
        "pixel_f1_max": f1_max(flat_y, flat_s),
        "aupro": _aupro(y, s, max_fpr),
    }


def image_metrics(labels: Any, scores: Any) -> dict[str, Optional[float]]:
    """image_auroc, image_ap, image_f1_max of one class; all None (missing, not 0) with a single label."""
    y = _as_labels(labels)
    s = _as_scores(scores, y.size)
    if y.all() or not y.any():
        return {key: None for key in IMAGE_KEYS}
    return {"image_auroc": auroc(y, s), "image_ap": average_precision(y, s), "image_f1_max": f1_max(y, s)}


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
