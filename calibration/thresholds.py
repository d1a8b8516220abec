"""Score normalization constants and alarm thresholds estimated from NORMAL frames only.

A production line gives plenty of good parts and almost no defects, so everything here is fitted on
normal frames: the paper's test-set min-max normalization and label-based adaptive thresholds are not
available to a deployed engine (the latter flag everything when only normal images exist).

Conventions (docs/graph-contract.md, "Image score"):

- normalization: ``x_n = (x - lo) / (hi - lo)``, with ``lo`` the median of the normal frames and ``hi``
  their 0.99 quantile, so normal frames fall around [0, 1] and anomalies above 1 (never clipped);
- image score: ``map_weight * map_n + (1 - map_weight) * cls_n``;
- decision: ``score >= threshold`` is anomalous. A threshold is chosen so that the fraction of normal
  frames scoring ``>= threshold`` is at most ``far`` (the false-alarm rate per frame).

Threshold estimation (``threshold_at_far``), by the number of normal scores ``n``:

- ``quantile``: when ``floor(n * far) >= min_exceedances`` (default 10). The threshold is the smallest
  observed score ``t`` with ``#{s >= t} <= floor(n * far)``; the empirical false-alarm rate on the
  calibration set is therefore ``<= far``. Ten exceedances keep the binomial relative error of the
  realized rate near 1/sqrt(10) ~ 30%; fewer make the top order statistics too noisy to trust.
- ``tail-fit``: otherwise, peaks over threshold. The top ``max(5% of n, 20)`` scores (never more than
  half) are fitted with a generalized Pareto tail by probability-weighted moments (Hosking & Wallis
  1987). The exponential tail (xi = 0) is used unless the fitted shape is significantly heavy
  (xi > 2 standard errors), because it is far less noisy when extrapolating by 2-3 decades. A fitted
  light (bounded, xi < 0) tail is not trusted: on Gaussian-like scores it under-estimates the far
  quantile (2000 normal draws, far 1e-4, 200 seeds: median -2%, 5th percentile -19%, i.e. 12x the
  promised alarm rate), while the exponential tail errs the safe way (median +14%, 5th percentile +4%:
  fewer false alarms, a little less sensitivity). Heavy shapes are capped at 0.5, where the estimator
  stops being well behaved. A tail of identical (saturated) scores gives a threshold just above them.
- ``gaussian-fit``: fallback for tiny samples (fewer than 40 scores, too few for a tail): median +
  z(1 - far) * 1.4826 * MAD (a Gaussian fitted to the robustly standardized sample).

Why ``far = 0.001`` per frame by default: it is the lowest rate the empirical rule can estimate from a
recording a user can realistically make of good parts (10 / 0.001 = 10,000 frames, ~17 minutes at
10 fps); lower rates rest on tail extrapolation. Note that consecutive video frames are correlated,
so the effective sample is smaller than the frame count: record varied parts, not one part for long.

Fitting needs numpy and the standard library only (it runs on a bare Jetson); the information report on
labelled anomalies (``evaluate_threshold``) uses ``aaclip.contract.metrics``, i.e. scikit-learn.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
from aaclip.contract import metrics
from aaclip.contract import score as scoring
from aaclip.contract.errors import UserError
from aaclip.contract.score import ScoreParams

log = logging.getLogger(__name__)

DEFAULT_FAR = 0.001
"""Default false-alarm rate per normal frame (see the module docstring for why)."""
DEFAULT_PIXEL_FAR = 1e-4
"""Default false-alarm rate per normal pixel: ~27 stray pixels on a 518x518 map of a normal frame."""
DEFAULT_MIN_EXCEEDANCES = 10
"""Empirical quantile only when at least this many normal scores lie at or above the threshold."""
DEFAULT_LO_Q = 0.5
DEFAULT_HI_Q = 0.99
DEFAULT_TAIL_FRACTION = 0.05
MIN_TAIL_POINTS = 20
"""A tail fit needs at least this many exceedances; below 2x this many scores the Gaussian fit is used."""
SHAPE_SIGNIFICANCE = 2.0
"""A heavy tail shape (xi > 0) is used only when it exceeds this many standard errors; else exponential."""
MAX_SHAPE = 0.5
MAD_TO_SIGMA = 1.4826

METHODS = ("quantile", "tail-fit", "gaussian-fit")


# --------------------------------------------------------------------------------------------------
# input checks

def _as_scores(values: Any, name: str, min_count: int = 1) -> np.ndarray:
    """Flatten ``values`` to a finite float array (float32 kept as is, other types become float64)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "fiub":
        raise UserError(f"{name} must be numbers, got dtype {arr.dtype}; pass an array of raw scores")
    if arr.dtype != np.float32:
        arr = arr.astype(np.float64)
    arr = arr.ravel()
    if arr.size < min_count:
        raise UserError(f"{name} has {arr.size} values, at least {min_count} are needed; "
                        "record more normal frames")
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise UserError(f"{name} holds {bad} NaN/inf values; drop those frames (the model output is "
                        "broken for them) and calibrate again")
    return arr


def _check_far(far: float, name: str = "far") -> float:
    far = float(far)
    if not (0.0 < far < 0.5):
        raise UserError(f"{name} must be a rate in (0, 0.5), got {far}; e.g. 0.001 = one false alarm "
                        "per 1000 normal frames")
    return far


# --------------------------------------------------------------------------------------------------
# normalization

def _robust_spread(values: np.ndarray, lo: float, hi_q: float, name: str) -> float:
    """``quantile(hi_q) - lo``, falling back to ``max - lo`` and then a small scale for constant input."""
    tol = 1e-6 * max(1.0, abs(lo))
    spread = float(np.quantile(values, hi_q)) - lo
    if spread > tol:
        return spread
    spread = float(values.max()) - lo
    if spread > tol:
        log.warning("%s: the %.3g quantile equals the median; using the maximum as the high end", name, hi_q)
        return spread
    spread = 1e-3 * max(1.0, abs(lo))
    log.warning("%s is constant over the normal frames (%.6g); using a nominal scale %.3g: any change "
                "will look anomalous. Check that the model output is not saturated.", name, lo, spread)
    return spread


def fit_normalization(map_max: Any, cls_score: Any, map_weight: float, lo_q: float = DEFAULT_LO_Q,
                      hi_q: float = DEFAULT_HI_Q) -> ScoreParams:
    """Score parameters whose ranges come from normal frames only: ``lo`` = ``lo_q`` quantile (median),
    ``hi`` = ``hi_q`` quantile (thresholds left at their defaults, fitted afterwards).

    Normal frames then map to about [0, 1] (median -> 0, hi quantile -> 1). ``hi > lo`` is guaranteed:
    for constant scores ``hi = lo + 1e-3 * max(1, |lo|)`` and a warning is logged.
    """
    if not (0.0 <= lo_q < hi_q <= 1.0):
        raise UserError(f"need 0 <= lo_q < hi_q <= 1, got lo_q={lo_q}, hi_q={hi_q}")
    if not (0.0 <= float(map_weight) <= 1.0):
        raise UserError(f"map_weight must be in [0, 1], got {map_weight} (0.5 industrial, 1.0 medical)")
    m = _as_scores(map_max, "map_max")
    c = _as_scores(cls_score, "cls_score")
    if m.size != c.size:
        raise UserError(f"map_max has {m.size} frames but cls_score has {c.size}; pass both outputs "
                        "of the same frames")
    map_lo = float(np.quantile(m, lo_q))
    cls_lo = float(np.quantile(c, lo_q))
    return ScoreParams(map_lo=map_lo, map_hi=map_lo + _robust_spread(m, map_lo, hi_q, "map_max"),
                       cls_lo=cls_lo, cls_hi=cls_lo + _robust_spread(c, cls_lo, hi_q, "cls_score"),
                       map_weight=float(map_weight))


# --------------------------------------------------------------------------------------------------
# tail fit (peaks over threshold)

@dataclass
class TailFit:
    """Generalized Pareto tail ``P(X >= x) = zeta * (1 + xi (x - u) / sigma) ** (-1 / xi)`` for x >= u."""

    u: float          # the tail starts here (the largest score below the fitted tail)
    sigma: float      # scale
    xi: float         # shape actually used (0 = exponential tail)
    xi_fitted: float  # PWM shape estimate before the significance test / clamping
    m: int            # number of tail scores fitted
    n: int            # number of scores

    @property
    def zeta(self) -> float:
        return self.m / self.n

    def quantile(self, p: float) -> float:
        """Score exceeded with probability ``p`` under the fitted tail."""
        ratio = self.zeta / p
        if self.xi == 0.0:
            return self.u + self.sigma * math.log(ratio)
        return self.u + self.sigma / self.xi * (ratio ** self.xi - 1.0)


def _top_sorted(values: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` largest values, ascending, as float64 (partition: linear time for pixel samples)."""
    n = values.size
    if count >= n:
        return np.sort(values).astype(np.float64)
    return np.sort(np.partition(values, n - count)[n - count:]).astype(np.float64)


def fit_tail(scores: Any, tail_fraction: float = DEFAULT_TAIL_FRACTION,
             min_tail: int = MIN_TAIL_POINTS) -> TailFit:
    """Fit a GPD tail to the top ``max(ceil(tail_fraction * n), min_tail)`` scores (at most half) by PWM."""
    s = _as_scores(scores, "scores", min_count=2 * min_tail)
    if not (0.0 < tail_fraction <= 0.5):
        raise UserError(f"tail_fraction must be in (0, 0.5], got {tail_fraction}")
    n = s.size
    m = min(max(math.ceil(tail_fraction * n), min_tail), n // 2)
    top = _top_sorted(s, m + 1)            # ascending; top[0] is the (m+1)-th largest
    u = float(top[0])
    y = top[1:] - u                        # m exceedances, ascending, >= 0
    a0 = float(y.mean())
    if a0 <= 0.0:
        return TailFit(u=u, sigma=0.0, xi=0.0, xi_fitted=0.0, m=m, n=n)
    i = np.arange(1, m + 1, dtype=np.float64)
    a1 = float(np.sum(y * (m - i)) / (m * (m - 1)))   # unbiased estimate of E[Y (1 - F(Y))]
    denom = a0 - 2.0 * a1
    xi_fitted = 2.0 - a0 / denom if denom > 0.0 else MAX_SHAPE
    se0 = math.sqrt(4.0 / (3.0 * m))                  # PWM standard error of xi at xi = 0
    # light tails (xi < 0) fall back to exponential: see the module docstring
    xi = min(xi_fitted, MAX_SHAPE) if xi_fitted > SHAPE_SIGNIFICANCE * se0 else 0.0
    sigma = a0 * (1.0 - xi)                           # GPD mean excess is sigma / (1 - xi)
    return TailFit(u=u, sigma=sigma, xi=xi, xi_fitted=xi_fitted, m=m, n=n)


def tail_fit_quantile(scores: Any, p: float, tail_fraction: float = DEFAULT_TAIL_FRACTION) -> float:
    """Peaks-over-threshold estimate of the score exceeded with probability ``p`` (e.g. 1e-4).

    Fits the tail with ``fit_tail``; needs at least 40 scores. Extrapolates beyond the sample maximum
    when ``p < 1 / n``.
    """
    p = _check_far(p, "p")
    s = _as_scores(scores, "scores", min_count=2 * MIN_TAIL_POINTS)
    # the tail must hold more than a fraction p of the scores, or the fit would extrapolate inwards
    fraction = min(max(tail_fraction, 2.0 * p), 0.5)
    return fit_tail(s, fraction).quantile(p)


# --------------------------------------------------------------------------------------------------
# thresholds

def _normal_upper_quantile(p: float) -> float:
    """z with P(Z >= z) = p for a standard normal Z (bisection on erfc; stdlib only)."""
    lo, hi = -40.0, 40.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if 0.5 * math.erfc(mid / math.sqrt(2.0)) > p:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


def _empirical_threshold(s: np.ndarray, k: int) -> float:
    """Smallest observed value t with #{s >= t} <= k; just above the maximum if ties prevent it."""
    top = _top_sorted(s, k + 1)[::-1]      # descending: top[j] is the (j+1)-th largest
    # top[k - 1] is the k-th largest; ties with the (k+1)-th largest would push the count above k
    for j in range(k - 1, -1, -1):
        if top[j] > top[j + 1]:
            return float(top[j])
    return float(np.nextafter(top[0], np.inf))


@dataclass
class Threshold:
    """An alarm threshold and how it was obtained.

    ``exceedances`` is the number of the ``n`` calibration scores at or above ``value``, i.e. the
    false alarms the threshold would have raised on the calibration set itself.
    """

    value: float
    method: str        # "quantile" | "tail-fit" | "gaussian-fit"
    n: int
    far: float
    exceedances: int


def threshold_at_far(scores: Any, far: float = DEFAULT_FAR,
                     min_exceedances: int = DEFAULT_MIN_EXCEEDANCES) -> Threshold:
    """Threshold with false-alarm rate ``far`` on normal ``scores`` (anomalous <=> score >= value).

    Empirical quantile when ``floor(n * far) >= min_exceedances``, else a peaks-over-threshold tail
    fit, else (fewer than 40 scores) a robust Gaussian fit. See the module docstring.
    """
    far = _check_far(far)
    if min_exceedances < 1:
        raise UserError(f"min_exceedances must be >= 1, got {min_exceedances}")
    s = _as_scores(scores, "scores", min_count=2)
    n = s.size
    k = int(math.floor(n * far + 1e-9))
    if k >= min_exceedances:
        method = "quantile"
        value = _empirical_threshold(s, k)
    elif n >= 2 * MIN_TAIL_POINTS:
        method = "tail-fit"
        fraction = min(max(DEFAULT_TAIL_FRACTION, 2.0 * far), 0.5)
        fit = fit_tail(s, fraction)
        value = fit.quantile(far)
        if fit.sigma == 0.0:
            log.warning("the top %d of %d normal scores are all equal (%.6g, saturated?); threshold set "
                        "just above them", fit.m, n, fit.u)
            value = float(np.nextafter(s.max(), np.inf))
        log.info("tail fit on the top %d of %d scores: u=%.6g sigma=%.4g xi=%.3f (fitted %.3f)",
                 fit.m, n, fit.u, fit.sigma, fit.xi, fit.xi_fitted)
    else:
        method = "gaussian-fit"
        med = float(np.median(s))
        scale = MAD_TO_SIGMA * float(np.median(np.abs(s - med)))
        if scale <= 0.0:
            scale = float(np.std(s, ddof=1))
        value = med + _normal_upper_quantile(far) * scale
        log.warning("only %d normal scores: threshold from a Gaussian fit (median %.6g, robust sigma "
                    "%.4g); record at least %d frames for a tail fit, %d for an empirical quantile",
                    n, med, scale, 2 * MIN_TAIL_POINTS, math.ceil(min_exceedances / far))
    s_max = float(s.max())
    if s_max == float(s.min()):
        log.warning("all %d normal scores equal %.6g; threshold set just above it", n, s_max)
        value = float(np.nextafter(s_max, np.inf))
    exceedances = int(np.count_nonzero(s >= value))
    return Threshold(value=float(value), method=method, n=n, far=far, exceedances=exceedances)


# --------------------------------------------------------------------------------------------------
# calibration result (the manifest's score block)

def calibrate(map_max: Any, cls_score: Any, map_weight: float, far: float = DEFAULT_FAR,
              pixel_values: Optional[Any] = None, pixel_far: float = DEFAULT_PIXEL_FAR) -> dict:
    """The manifest ``score`` block from raw ``map_max`` / ``cls_score`` of normal frames.

    ``pixel_values`` are raw anomaly-map values of normal frames (any shape; a subsample is fine). The
    pixel threshold is in normalized map units (``pixel_n >= pixel_threshold``). Without pixel samples
    it is the frame-level threshold of the normalized ``map_max`` at ``far`` (a pixel exceeds it only in
    frames whose maximum does, so it is conservative); ``pixel_method`` then reads ``"frame-max:<method>"``.
    The CLI adds the calibration set's sha256 and the date.
    """
    norm = fit_normalization(map_max, cls_score, map_weight)
    # the runtime's own float32 arithmetic, so thresholds are fitted on the values it will compare
    scores = scoring.image_score(map_max, cls_score, norm).astype(np.float64)
    image = threshold_at_far(scores, far)
    if pixel_values is not None:
        raw = _as_scores(pixel_values, "pixel_values", min_count=2)
        pix = threshold_at_far(raw, pixel_far)   # on raw values: the normalization is affine, increasing
        pixel_threshold = float(scoring.normalize_map(pix.value, norm))
        pixel_method = pix.method
    else:
        pix = threshold_at_far(scoring.normalize_map(np.ravel(map_max), norm).astype(np.float64), far)
        pixel_threshold = pix.value
        pixel_method = f"frame-max:{pix.method}"
    log.info("calibrated on %d normal frames: threshold %.4f (%s, %d exceedances), pixel threshold %.4f (%s)",
             image.n, image.value, image.method, image.exceedances, pixel_threshold, pixel_method)
    return {
        "map_lo": norm.map_lo, "map_hi": norm.map_hi, "cls_lo": norm.cls_lo, "cls_hi": norm.cls_hi,
        "map_weight": float(map_weight),
        "threshold": image.value,
        "pixel_threshold": pixel_threshold,
        "source": "calibration",
        "calibration": {"frames": image.n, "far": image.far, "method": image.method,
                        "exceedances": image.exceedances, "pixel_method": pixel_method},
    }


# --------------------------------------------------------------------------------------------------
# evaluation on labelled frames (information only)

def evaluate_threshold(normal_scores: Any, anomaly_scores: Any, threshold: float) -> dict:
    """How ``threshold`` does on labelled image scores, plus the F1-optimal threshold (never applied).

    Returns ``auroc``, ``threshold``, ``detection_rate`` (anomalies >= threshold), ``false_alarm_rate``
    (normals >= threshold), ``f1`` at the threshold, ``f1_optimal_threshold`` and ``f1_optimal``, and
    the counts ``n_normal`` / ``n_anomaly``. F1 depends on the defect prevalence of the labelled set.
    """
    neg = _as_scores(normal_scores, "normal_scores").astype(np.float64)
    pos = _as_scores(anomaly_scores, "anomaly_scores").astype(np.float64)
    threshold = float(threshold)
    tp = int(np.count_nonzero(pos >= threshold))
    fp = int(np.count_nonzero(neg >= threshold))
    f1 = 2.0 * tp / (2.0 * tp + fp + (pos.size - tp))
    labels = np.r_[np.zeros(neg.size, np.int8), np.ones(pos.size, np.int8)]
    values = np.r_[neg, pos]
    best_t, best_f1 = metrics.best_f1(labels, values)
    return {
        "auroc": metrics.auroc(labels, values),
        "threshold": threshold,
        "detection_rate": tp / pos.size,
        "false_alarm_rate": fp / neg.size,
        "f1": f1,
        "f1_optimal_threshold": best_t,
        "f1_optimal": best_f1,
        "n_normal": int(neg.size),
        "n_anomaly": int(pos.size),
    }
