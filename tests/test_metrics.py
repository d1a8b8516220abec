"""aaclip.train.metrics against sklearn (the oracle) and hand-computed AUPRO cases."""
from __future__ import annotations

import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
from aaclip.train import metrics as M
from sklearn import metrics as skm


def _tied_data(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    # scores on a coarse grid (many ties), slightly shifted for positives so the metrics are not ~0.5
    scores = np.round(rng.random(n) * 0.8 + 0.2 * labels, 1)
    return labels, scores


def _sk_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    p, r, _ = skm.precision_recall_curve(labels, scores)
    denom = p + r
    f1 = np.where(denom > 0, 2 * p * r / np.where(denom > 0, denom, 1), 0.0)
    return float(f1.max())


# ---------------------------------------------------------------------------------------------
# curve metrics vs sklearn


@pytest.mark.parametrize("seed", range(6))
def test_curve_metrics_match_sklearn_with_ties(seed):
    labels, scores = _tied_data(seed)
    assert len(np.unique(scores)) < 15  # the data really has ties
    assert M.auroc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-9)
    assert M.average_precision(labels, scores) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-9
    )
    assert M.f1_max(labels, scores) == pytest.approx(_sk_f1_max(labels, scores), abs=1e-9)


@pytest.mark.parametrize("seed", range(3))
def test_curve_metrics_match_sklearn_continuous_and_imbalanced(seed):
    rng = np.random.default_rng(100 + seed)
    labels = (rng.random(1000) < 0.05).astype(np.int64)
    scores = rng.normal(size=1000) + labels
    assert M.auroc(labels, scores) == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-9)
    assert M.average_precision(labels, scores) == pytest.approx(
        skm.average_precision_score(labels, scores), abs=1e-9
    )
    assert M.f1_max(labels, scores) == pytest.approx(_sk_f1_max(labels, scores), abs=1e-9)


def test_curves_match_sklearn_curves():
    labels, scores = _tied_data(7)
    p, r, t = M.precision_recall_curve(labels, scores)
    sp, sr, st = skm.precision_recall_curve(labels, scores)
    np.testing.assert_allclose(p, sp, atol=1e-12)
    np.testing.assert_allclose(r, sr, atol=1e-12)
    np.testing.assert_array_equal(t, st)
    fpr, tpr, thr = M.roc_curve(labels, scores)
    sfpr, stpr, _ = skm.roc_curve(labels, scores, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sfpr, atol=1e-12)
    np.testing.assert_allclose(tpr, stpr, atol=1e-12)
    assert thr[0] == np.inf and np.all(np.diff(thr[1:]) < 0)


def test_known_small_values():
    # scores 0.1 0.4 0.35 0.8 with labels 0 0 1 1: 3 of 4 (pos, neg) pairs ranked right
    labels, scores = [0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]
    assert M.auroc(labels, scores) == pytest.approx(0.75)
    # AP: recall 0.5 at precision 1 (0.8), then recall 1 at precision 2/3 (0.35)
    assert M.average_precision(labels, scores) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # F1 at threshold 0.8: P=1, R=0.5 -> 2/3; at 0.35: P=2/3, R=1 -> 0.8
    assert M.f1_max(labels, scores) == pytest.approx(0.8)
    # a full tie: AUROC 0.5, AP = F1-precision = base rate
    assert M.auroc([0, 1, 0, 1], [3, 3, 3, 3]) == pytest.approx(0.5)
    assert M.average_precision([0, 1, 0, 0], [3, 3, 3, 3]) == pytest.approx(0.25)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="only one class"):
        M.auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="no label 1"):
        M.average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="only 0 .normal. and 1"):
        M.auroc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="3 values but the labels have 2"):
        M.auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN or inf"):
        M.auroc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="differ in shape"):
        M.aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        M.pixel_metrics(np.zeros((4, 4)), np.zeros((4, 4)))


# ---------------------------------------------------------------------------------------------
# AUPRO


def _one_region_case() -> tuple[np.ndarray, np.ndarray]:
    masks = np.zeros((1, 4, 4), np.uint8)
    masks[0, 0, 0] = masks[0, 0, 1] = 1  # one 2-pixel region, 14 normal pixels
    maps = np.full((1, 4, 4), 0.1)
    maps[0, 0, 0] = 0.9  # first region pixel
    maps[0, 0, 1] = 0.5  # second region pixel
    maps[0, 3, 3] = 0.7  # one normal pixel above the second region pixel
    return masks, maps


def test_aupro_hand_computed_step_function():
    masks, maps = _one_region_case()
    # Thresholds 0.9, 0.7, 0.5, 0.1 give the curve points (FPR, PRO):
    #   (0, 0) -> (0, 1/2) -> (1/14, 1/2) -> (1/14, 1) -> (1, 1)
    # so PRO is 1/2 on [0, 1/14) and 1 on [1/14, 0.3]:
    expected = (0.5 * (1 / 14) + 1.0 * (0.3 - 1 / 14)) / 0.3
    assert M.aupro(masks, maps) == pytest.approx(expected, abs=1e-12)
    assert M.pixel_metrics(masks, maps)["aupro"] == pytest.approx(expected, abs=1e-12)
    # a smaller max_fpr that falls inside the first step: PRO = 1/2 on all of [0, 0.05]
    assert M.aupro(masks, maps, max_fpr=0.05) == pytest.approx(0.5, abs=1e-12)


def test_aupro_interpolates_at_max_fpr_across_a_tie():
    masks, maps = _one_region_case()
    maps[:] = 0.1
    maps[0, 0, 0] = 0.9  # the second region pixel ties with all 14 normal pixels at 0.1
    # Curve: (0, 0) -> (0, 1/2) -> (1, 1): a straight line, PRO(0.3) = 0.5 + 0.5 * 0.3 = 0.65
    expected = 0.3 * (0.5 + 0.65) / 2 / 0.3
    assert M.aupro(masks, maps) == pytest.approx(expected, abs=1e-12)


def test_aupro_perfect_and_inverse_maps():
    rng = np.random.default_rng(3)
    masks = np.zeros((3, 32, 32), np.uint8)
    masks[0, 4:10, 5:12] = 1
    masks[1, 20:30, 1:4] = 1
    masks[1, 2:5, 25:30] = 1
    perfect = masks * 1.0 + rng.random(masks.shape) * 0.5  # every anomalous pixel above every normal one
    assert M.aupro(masks, perfect) == pytest.approx(1.0, abs=1e-12)
    assert M.aupro(masks, masks.astype(float)) == pytest.approx(1.0, abs=1e-12)
    assert M.aupro(masks, 1.0 - masks) == pytest.approx(0.0, abs=1e-12)
    assert M.aupro(masks, -perfect) == pytest.approx(0.0, abs=1e-12)


def test_aupro_averages_regions_not_pixels():
    masks = np.zeros((2, 4, 4), np.uint8)
    masks[0, 0, 0] = 1  # region A: 1 pixel, image 0
    masks[1, 1:4, 3] = 1  # region B: 3 pixels, image 1
    maps = np.full((2, 4, 4), 0.5)  # all 28 normal pixels tied at 0.5
    maps[0, 0, 0] = 1.0  # A found before any false positive
    maps[1, 1:4, 3] = 0.0  # B found only after every normal pixel
    # Curve: (0, 0) -> (0, 1/2) [A covered, B not] -> (1, 1/2) -> (1, 1): PRO = 1/2 on [0, 0.3].
    # Pixel recall at FPR 0 would be 1/4 (1 of 4 anomalous pixels): a pixel-weighted curve gives 0.25.
    assert M.aupro(masks, maps) == pytest.approx(0.5, abs=1e-12)
    assert M.pixel_metrics(masks, maps)["aupro"] == pytest.approx(0.5, abs=1e-12)


def test_aupro_regions_are_8_connected():
    masks = np.zeros((1, 5, 5), np.uint8)
    masks[0, 0, 0] = masks[0, 1, 1] = masks[0, 1, 2] = 1  # one region with 8-connectivity, two with 4
    maps = np.zeros((1, 5, 5))
    maps[0, 0, 0] = 1.0  # only the corner pixel found before the normal pixels (all at 0)
    maps[0, 1, 1] = maps[0, 1, 2] = -1.0
    # 8-connected: one 3-pixel region, 1/3 covered over [0, 0.3] (4-connected would give 1/2)
    assert M.aupro(masks, maps) == pytest.approx(1 / 3, abs=1e-12)


def _brute_force_aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = 0.3) -> float:
    """Direct definition: one pass over the images per distinct threshold."""
    regions = []
    for i in range(masks.shape[0]):
        n, comp = cv2.connectedComponents(masks[i].astype(np.uint8), connectivity=8)
        regions += [(i, comp == r) for r in range(1, n)]
    normal = masks == 0
    fprs, pros = [0.0], [0.0]
    for t in np.unique(maps)[::-1]:
        hit = maps >= t
        fprs.append((hit & normal).sum() / normal.sum())
        pros.append(np.mean([(hit[i] & reg).sum() / reg.sum() for i, reg in regions]))
    fprs, pros = np.array(fprs), np.array(pros)
    keep = fprs <= max_fpr
    x, y = list(fprs[keep]), list(pros[keep])
    if x[-1] < max_fpr:
        j = int(np.argmax(fprs > max_fpr))
        y.append(pros[j - 1] + (pros[j] - pros[j - 1]) * (max_fpr - fprs[j - 1]) / (fprs[j] - fprs[j - 1]))
        x.append(max_fpr)
    area = sum((x[k + 1] - x[k]) * (y[k + 1] + y[k]) / 2 for k in range(len(x) - 1))
    return area / max_fpr


@pytest.mark.parametrize("seed", range(3))
def test_aupro_matches_brute_force_definition(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 16, 16), np.uint8)
    masks[0, 2:6, 3:9] = 1
    masks[0, 10:12, 10:16] = 1
    masks[1, 7, 7] = 1
    masks[1, 12:16, 0:2] = 1
    # image 2 has no region: it only adds normal pixels
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 2)  # ties
    assert M.aupro(masks, maps) == pytest.approx(_brute_force_aupro(masks, maps), abs=1e-9)
    # sampled thresholds approximate the exact value
    assert M.aupro(masks, maps, num_thresholds=500) == pytest.approx(M.aupro(masks, maps), abs=0.02)


def test_aupro_undefined_without_regions():
    assert math.isnan(M.aupro(np.zeros((2, 4, 4)), np.random.default_rng(0).random((2, 4, 4))))


# ---------------------------------------------------------------------------------------------
# per-class metric sets


def test_pixel_metrics_match_flat_sklearn():
    rng = np.random.default_rng(11)
    masks = np.zeros((4, 20, 20), np.uint8)
    masks[0, 3:8, 3:8] = 1
    masks[2, 10:18, 12:15] = 1
    maps = np.round(rng.random(masks.shape) + 0.5 * masks, 2)
    got = M.pixel_metrics(masks, maps)
    assert set(got) == {"pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"}
    y, s = masks.ravel(), maps.ravel()
    assert got["pixel_auroc"] == pytest.approx(skm.roc_auc_score(y, s), abs=1e-9)
    assert got["pixel_ap"] == pytest.approx(skm.average_precision_score(y, s), abs=1e-9)
    assert got["pixel_f1_max"] == pytest.approx(_sk_f1_max(y, s), abs=1e-9)
    assert got["aupro"] == pytest.approx(M.aupro(masks, maps), abs=1e-12)


def test_pixel_metrics_nan_for_one_class():
    got = M.pixel_metrics(np.zeros((2, 4, 4), bool), np.random.default_rng(0).random((2, 4, 4)))
    assert all(math.isnan(v) for v in got.values()) and len(got) == 4


def test_image_metrics_values_and_missing_for_single_label():
    labels, scores = _tied_data(5, n=60)
    got = M.image_metrics(labels, scores)
    assert got["image_auroc"] == pytest.approx(skm.roc_auc_score(labels, scores), abs=1e-9)
    assert got["image_ap"] == pytest.approx(skm.average_precision_score(labels, scores), abs=1e-9)
    assert got["image_f1_max"] == pytest.approx(_sk_f1_max(labels, scores), abs=1e-9)
    assert M.image_metrics([1, 1, 1], [0.2, 0.5, 0.9]) == {
        "image_auroc": None, "image_ap": None, "image_f1_max": None,
    }
    assert M.image_metrics([0, 0], [0.2, 0.5]) == {"image_auroc": None, "image_ap": None, "image_f1_max": None}


# ---------------------------------------------------------------------------------------------
# normalization and image scores


def test_minmax_normalize():
    np.testing.assert_allclose(M.minmax_normalize([2.0, 4.0, 3.0]), [0.0, 1.0, 0.5])
    np.testing.assert_array_equal(M.minmax_normalize([7.0, 7.0]), [0.0, 0.0])
    np.testing.assert_allclose(M.minmax_normalize([2.0, 6.0], value_range=(0.0, 4.0)), [0.5, 1.5])


def test_image_scores_per_domain():
    map_max = np.array([10.0, 20.0, 30.0])
    cls = np.array([0.6, 0.5, 0.4])
    # industrial: 0.5 * [0, 0.5, 1] + 0.5 * [1, 0.5, 0]
    np.testing.assert_allclose(M.image_scores(map_max, cls, "industrial"), [0.5, 0.5, 0.5])
    np.testing.assert_allclose(M.image_scores(map_max, cls, "medical"), [0.0, 0.5, 1.0])
    # the reference normalizes whole maps: the range of the maps, not of their maxima
    np.testing.assert_allclose(
        M.image_scores(map_max, cls, "industrial", map_range=(0.0, 40.0)),
        0.5 * np.array([0.25, 0.5, 0.75]) + 0.5 * np.array([1.0, 0.5, 0.0]),
    )
    with pytest.raises(ValueError, match="unknown domain 'xray': use one of industrial, medical"):
        M.image_scores(map_max, cls, "xray")


# ---------------------------------------------------------------------------------------------
# reports


def _per_class() -> dict:
    return {
        "bottle": {"pixel_auroc": 0.9, "pixel_ap": 0.5, "pixel_f1_max": 0.4, "aupro": 0.8,
                   "image_auroc": 0.95, "image_ap": 0.9, "image_f1_max": 0.85},
        "cable": {"pixel_auroc": 0.8, "pixel_ap": 0.3, "pixel_f1_max": 0.2, "aupro": float("nan"),
                  "image_auroc": None, "image_ap": None, "image_f1_max": None},
    }


def test_class_report_mean_ignores_missing():
    report = M.class_report(_per_class())
    assert list(report) == ["bottle", "cable", "mean"]
    mean = report["mean"]
    assert mean["pixel_auroc"] == pytest.approx(0.85)
    assert mean["pixel_ap"] == pytest.approx(0.4)
    assert mean["aupro"] == pytest.approx(0.8)  # cable's NaN ignored
    assert mean["image_auroc"] == pytest.approx(0.95)  # cable's None ignored, not counted as 0
    assert mean["n_classes"] == {"pixel_auroc": 2, "pixel_ap": 2, "pixel_f1_max": 2, "aupro": 1,
                                 "image_auroc": 1, "image_ap": 1, "image_f1_max": 1}
    assert report["cable"]["aupro"] is None  # NaN stored as None (valid JSON)
    all_missing = M.class_report({"a": {"image_auroc": None}, "b": {"image_auroc": float("nan")}})
    assert all_missing["mean"]["image_auroc"] is None and all_missing["mean"]["n_classes"]["image_auroc"] == 0
    with pytest.raises(ValueError, match="reserved"):
        M.class_report({"mean": {}})


def test_markdown_table_contents():
    table = M.markdown_table(M.class_report(_per_class()))
    lines = table.strip().split("\n")
    assert lines[0] == "| class | P-AUROC | P-AP | P-F1max | AUPRO | I-AUROC | I-AP | I-F1max |"
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|---:|"
    assert lines[2] == "| bottle | 90.0 | 50.0 | 40.0 | 80.0 | 95.0 | 90.0 | 85.0 |"
    assert lines[3] == "| cable | 80.0 | 30.0 | 20.0 | \u2013 | \u2013 | \u2013 | \u2013 |"
    assert lines[4] == "| mean | 85.0 | 40.0 | 30.0 | 80.0 | 95.0 | 90.0 | 85.0 |"
    assert len(lines) == 5


def test_module_imports_no_torch_sklearn_scipy():
    code = (
        "import sys, aaclip.train.metrics; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn', 'scipy')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
