"""Normalization constants and false-alarm thresholds from normal frames (aaclip.calibration.thresholds)."""
from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from aaclip.calibration.thresholds import (
    Threshold,
    calibrate,
    evaluate_threshold,
    fit_normalization,
    fit_tail,
    tail_fit_quantile,
    threshold_at_far,
)
from aaclip.contract.errors import UserError
from aaclip.contract.score import image_score, normalize_cls, normalize_map

Z_1E3 = 3.090232306167813    # standard normal upper 0.001 point
Z_1E4 = 3.719016485455709    # standard normal upper 1e-4 point


# ----------------------------------------------------------------------------------- empirical quantile

def test_quantile_exact_order_statistic():
    scores = np.random.default_rng(0).permutation(np.arange(10000, dtype=np.float64))
    t = threshold_at_far(scores, far=0.01)
    # at most floor(0.01 * 10000) = 100 normal scores may be >= the threshold: 9900..9999
    assert t == Threshold(value=9900.0, method="quantile", n=10000, far=0.01, exceedances=100)
    assert np.mean(scores >= t.value) <= 0.01
    t = threshold_at_far(scores, far=0.001)
    assert (t.value, t.method, t.exceedances) == (9990.0, "quantile", 10)


def test_quantile_rule_boundary_switches_to_tail_fit():
    scores = np.arange(10000, dtype=np.float64)
    assert threshold_at_far(scores, far=0.001, min_exceedances=10).method == "quantile"    # 10 >= 10
    assert threshold_at_far(scores, far=0.0009, min_exceedances=10).method == "tail-fit"   # 9 < 10
    assert threshold_at_far(scores, far=0.0009, min_exceedances=9).method == "quantile"


def test_quantile_with_ties_never_exceeds_far():
    base = np.arange(95, dtype=np.float64)
    # top values 97, 96, 95, 95, 95, 94, ...: k = 4 cannot stop inside the run of 95s -> 96
    scores = np.concatenate([base, [95.0, 95.0, 95.0, 96.0, 97.0]])
    t = threshold_at_far(scores, far=0.04, min_exceedances=1)
    assert (t.value, t.exceedances) == (96.0, 2)
    t = threshold_at_far(scores, far=0.05, min_exceedances=1)   # k = 5 takes the whole run
    assert (t.value, t.exceedances) == (95.0, 5)
    # the maximum itself is tied more than k times: just above it
    tied = np.concatenate([np.arange(90.0), np.full(10, 100.0)])
    t = threshold_at_far(tied, far=0.05, min_exceedances=1)
    assert t.value > 100.0 and t.value == np.nextafter(100.0, np.inf) and t.exceedances == 0


@pytest.mark.parametrize("seed", range(5))
def test_quantile_is_smallest_threshold_within_far(seed):
    rng = np.random.default_rng(seed)
    scores = np.round(rng.gamma(2.0, 1.0, 5000), 2)            # rounded: plenty of ties
    far = [0.002, 0.005, 0.01, 0.05, 0.2][seed]
    t = threshold_at_far(scores, far=far)
    k = math.floor(far * scores.size)
    assert t.method == "quantile"
    assert np.count_nonzero(scores >= t.value) == t.exceedances <= k
    lower = scores[scores < t.value].max()                     # the next observed value down
    assert np.count_nonzero(scores >= lower) > k


def test_float32_scores_keep_exact_values():
    scores = np.arange(2000, dtype=np.float32) / np.float32(7.0)
    t = threshold_at_far(scores, far=0.01)
    assert t.value == float(scores[1980]) and t.exceedances == 20
    assert isinstance(t.value, float)


# ----------------------------------------------------------------------------------- tail fit

def test_tail_fit_on_exponential_beats_naive_max():
    true = math.log(1e4)                                       # Exp(1) upper 1e-4 point: 9.21
    fit_err, max_err = [], []
    for seed in range(10):
        s = np.random.default_rng(seed).exponential(1.0, 2000)
        t = threshold_at_far(s, far=1e-4)
        assert (t.method, t.n, t.far) == ("tail-fit", 2000, 1e-4)
        assert t.value == pytest.approx(tail_fit_quantile(s, 1e-4))
        assert abs(t.value / true - 1.0) < 0.25
        assert t.exceedances == np.count_nonzero(s >= t.value)
        fit_err.append(abs(t.value - true))
        max_err.append(abs(s.max() - true))
    assert np.mean(fit_err) < 0.6 * np.mean(max_err)


def test_tail_fit_exponential_parameters():
    s = np.random.default_rng(1).exponential(2.0, 4000)
    fit = fit_tail(s, tail_fraction=0.05)
    assert fit.m == 200 and fit.n == 4000 and fit.zeta == 0.05
    assert fit.xi == 0.0                                       # not significantly heavy: exponential
    assert fit.sigma == pytest.approx(2.0, rel=0.2)            # memoryless: excess scale = 2
    assert fit.u == np.sort(s)[-201]


def test_tail_fit_gaussian_is_conservative():
    s = np.random.default_rng(3).normal(0.0, 1.0, 2000)
    t = threshold_at_far(s, far=1e-4)
    assert t.method == "tail-fit" and t.exceedances == 0
    # the exponential tail over-estimates a Gaussian's far quantile a little: fewer false alarms
    assert Z_1E4 <= t.value <= 1.3 * Z_1E4


def test_tail_fit_detects_heavy_tail():
    rng = np.random.default_rng(4)
    s = rng.pareto(2.0, 5000)                                  # GPD with xi = 0.5: P(X > x) = (1+x)^-2
    fit = fit_tail(s)
    assert fit.xi > 0.25
    true = 1e-4 ** -0.5 - 1.0                                  # 99
    exp_only = fit.u + (fit.sigma / (1 - fit.xi)) * math.log(fit.zeta / 1e-4)
    q = tail_fit_quantile(s, 1e-4)
    assert abs(q - true) < abs(exp_only - true)                # the heavy shape matters
    assert q == pytest.approx(true, rel=0.5)


def test_tail_fit_needs_enough_scores():
    with pytest.raises(UserError, match="at least 40"):
        tail_fit_quantile(np.arange(39.0), 0.01)


# ----------------------------------------------------------------------------------- tiny samples

def test_gaussian_fit_for_tiny_sample():
    s = np.arange(30, dtype=np.float64)                        # median 14.5, MAD 7.5
    t = threshold_at_far(s, far=0.001)
    assert (t.method, t.n, t.exceedances) == ("gaussian-fit", 30, 0)
    assert t.value == pytest.approx(14.5 + Z_1E3 * 1.4826 * 7.5, rel=1e-9)


def test_gaussian_fit_on_normal_draws():
    s = np.random.default_rng(5).normal(10.0, 2.0, 35)
    t = threshold_at_far(s, far=0.001)
    assert t.method == "gaussian-fit"
    assert t.value == pytest.approx(10.0 + 2.0 * Z_1E3, rel=0.2)


def test_constant_scores_threshold_just_above(caplog):
    with caplog.at_level(logging.WARNING):
        t = threshold_at_far(np.full(500, 0.25), far=0.001)
    assert t.value == np.nextafter(0.25, np.inf) and t.exceedances == 0
    assert "all 500 normal scores equal" in caplog.text


def test_saturated_tail_threshold_just_above(caplog):
    s = np.concatenate([np.linspace(0.0, 0.9, 900), np.ones(100)])     # top 10% saturated at 1.0
    with caplog.at_level(logging.WARNING):
        t = threshold_at_far(s, far=0.001)
    assert t.method == "tail-fit"
    assert t.value == np.nextafter(1.0, np.inf) and t.exceedances == 0
    assert "are all equal" in caplog.text


def test_threshold_bad_input():
    with pytest.raises(UserError, match="NaN/inf"):
        threshold_at_far([0.1, float("nan"), 0.3])
    with pytest.raises(UserError, match=r"far must be a rate in \(0, 0.5\)"):
        threshold_at_far(np.arange(100.0), far=0.0)
    with pytest.raises(UserError, match="at least 2"):
        threshold_at_far([1.0])


# ----------------------------------------------------------------------------------- normalization

def test_normalization_median_to_zero_hi_quantile_to_one():
    m = np.random.default_rng(6).permutation(np.arange(101, dtype=np.float64))   # median 50, q0.99 99
    c = 0.5 + m / 1000.0                                                         # median 0.55, q0.99 0.599
    norm = fit_normalization(m, c, 0.5)
    assert (norm.map_lo, norm.map_hi, norm.map_weight) == (50.0, 99.0, 0.5)
    assert norm.cls_lo == pytest.approx(0.55) and norm.cls_hi == pytest.approx(0.599)
    assert normalize_map([50.0, 99.0, 148.0], norm).tolist() == [0.0, 1.0, 2.0]
    assert normalize_cls([0.55, 0.599], norm) == pytest.approx([0.0, 1.0])
    norm = fit_normalization(m, c, 0.5, lo_q=0.0, hi_q=1.0)
    assert (norm.map_lo, norm.map_hi) == (0.0, 100.0)


def test_normalization_degenerate_inputs(caplog):
    m = np.arange(200, dtype=np.float64)
    c = np.full(200, 0.7)
    with caplog.at_level(logging.WARNING):
        norm = fit_normalization(m, c, 0.5)
    assert norm.cls_lo == 0.7 and norm.cls_hi == pytest.approx(0.7 + 1e-3)
    assert "cls_score is constant" in caplog.text
    # the 0.99 quantile equals the median, but one frame is higher: the maximum sets the scale
    spiky = np.concatenate([np.zeros(200), [5.0]])
    norm = fit_normalization(spiky, np.arange(201.0), 0.5)
    assert (norm.map_lo, norm.map_hi) == (0.0, 5.0)
    with pytest.raises(UserError, match="map_max has 3 frames but cls_score has 2"):
        fit_normalization([1.0, 2.0, 3.0], [1.0, 2.0], 0.5)
    with pytest.raises(UserError, match="map_weight must be in"):
        fit_normalization(m, c, 1.5)


# ----------------------------------------------------------------------------------- calibrate

def test_calibrate_returns_manifest_score_block():
    rng = np.random.default_rng(7)
    map_max = rng.gamma(4.0, 0.05, 12000) + 0.2
    cls = rng.normal(0.3, 0.02, 12000)
    pixels = np.random.default_rng(8).permutation(np.arange(100000, dtype=np.float32)) / 1e5   # 0 .. 0.99999
    block = calibrate(map_max, cls, map_weight=0.5, far=0.001, pixel_values=pixels)
    assert set(block) == {"map_lo", "map_hi", "cls_lo", "cls_hi", "map_weight", "threshold",
                          "pixel_threshold", "source", "calibration"}
    assert set(block["calibration"]) == {"frames", "far", "method", "exceedances", "pixel_method"}
    json.dumps(block)                                           # plain Python numbers only
    norm = fit_normalization(map_max, cls, 0.5)
    assert (block["map_lo"], block["map_hi"], block["cls_lo"], block["cls_hi"]) == (
        norm.map_lo, norm.map_hi, norm.cls_lo, norm.cls_hi)
    scores = image_score(map_max, cls, norm).astype(np.float64)
    assert block["threshold"] == threshold_at_far(scores, 0.001).value == np.sort(scores)[-12]
    assert block["source"] == "calibration" and block["map_weight"] == 0.5
    assert block["calibration"] == {"frames": 12000, "far": 0.001, "method": "quantile",
                                    "exceedances": 12, "pixel_method": "quantile"}
    # pixel_far 1e-4 on 100000 samples: 10 pixels may be >= the threshold -> raw 0.9999990, normalized
    # with the runtime's float32 arithmetic (the values its overlays compare against the threshold)
    raw = np.float32(99990) / np.float32(1e5)
    expected_pixel = (raw - np.float32(norm.map_lo)) / np.float32(norm.map_hi - norm.map_lo)
    assert block["pixel_threshold"] == float(expected_pixel)
    assert np.mean(scores >= block["threshold"]) <= 0.001


def test_calibrate_small_set_and_no_pixels():
    rng = np.random.default_rng(9)
    map_max = rng.exponential(0.1, 500) + 0.3
    cls = rng.exponential(0.01, 500) + 0.2
    block = calibrate(map_max, cls, map_weight=1.0)
    assert block["calibration"]["method"] == "tail-fit"       # 500 * 0.001 < 10
    assert block["calibration"]["frames"] == 500
    assert block["calibration"]["pixel_method"] == "frame-max:tail-fit"
    # medical weighting: the image score is the normalized map maximum, so both thresholds agree
    assert block["pixel_threshold"] == pytest.approx(block["threshold"])
    assert block["threshold"] > normalize_map(map_max, fit_normalization(map_max, cls, 1.0)).max()


# ----------------------------------------------------------------------------------- evaluation

def test_evaluate_threshold_constructed_case():
    normal = np.arange(10, dtype=np.float64)                   # 0..9
    anomaly = np.array([5.0, 8.0, 12.0, 15.0])
    r = evaluate_threshold(normal, anomaly, threshold=8.0)
    assert r["detection_rate"] == 0.75                         # 8, 12, 15
    assert r["false_alarm_rate"] == 0.2                        # 8, 9
    # pairs won: 5 -> 5 + tie 0.5, 8 -> 8 + 0.5, 12 -> 10, 15 -> 10: 34 of 40
    assert r["auroc"] == pytest.approx(0.85)
    assert r["f1"] == pytest.approx(2 * 3 / (2 * 3 + 2 + 1))
    # F1 over all thresholds: t = 12 gives tp 2, fp 0, fn 2 -> 2/3; t = 8 gives 2/3 too; t = 5 gives
    # tp 4, fp 5 -> 8/13; the best is F1 = 2/3, first reached from the top at t = 12
    assert r["f1_optimal"] == pytest.approx(2 / 3)
    assert r["f1_optimal_threshold"] == 12.0
    assert (r["n_normal"], r["n_anomaly"], r["threshold"]) == (10, 4, 8.0)


def test_evaluation_auroc_matches_brute_force_with_ties():
    rng = np.random.default_rng(10)
    neg = np.round(rng.normal(0, 1, 300), 1)
    pos = np.round(rng.normal(1, 1, 50), 1)
    diff = pos[:, None] - neg[None, :]
    brute = (np.count_nonzero(diff > 0) + 0.5 * np.count_nonzero(diff == 0)) / diff.size
    assert evaluate_threshold(neg, pos, 0.0)["auroc"] == pytest.approx(brute, abs=1e-12)
    assert evaluate_threshold([0.0, 1.0], [2.0, 3.0], 1.5)["auroc"] == 1.0
    assert evaluate_threshold([2.0, 3.0], [0.0, 1.0], 1.5)["auroc"] == 0.0


def test_evaluation_best_f1_matches_brute_force():
    rng = np.random.default_rng(11)
    neg = np.round(rng.normal(0, 1, 200), 1)
    pos = np.round(rng.normal(1.5, 1, 40), 1)
    r = evaluate_threshold(neg, pos, threshold=1.0)
    best = max(2 * np.sum(pos >= t) / (np.sum(pos >= t) + np.sum(neg >= t) + pos.size)
               for t in np.unique(np.concatenate([neg, pos])))
    assert r["f1_optimal"] == pytest.approx(best)
    t = r["f1_optimal_threshold"]
    assert 2 * np.sum(pos >= t) / (np.sum(pos >= t) + np.sum(neg >= t) + pos.size) == pytest.approx(best)


# ----------------------------------------------------------------------------------- deployability

def test_module_imports_without_scipy_or_torch():
    code = ("import sys; import aaclip.calibration.thresholds; "
            "print(sorted(m for m in ('scipy', 'torch', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=dict(os.environ))
    assert out.stdout.strip() == "[]"
