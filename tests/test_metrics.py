"""aaclip.contract.metrics on constructed cases with known answers (computed by hand in the comments)."""
from __future__ import annotations

import math
import subprocess
import sys

import cv2
import numpy as np
import pytest
from aaclip.contract import metrics as M

# Six images, scores descending: 0.9 (1), 0.8 (0), 0.7 (1), 0.6 (1), 0.5 (0), 0.4 (0).
SIX_LABELS = [1, 0, 1, 1, 0, 0]
SIX_SCORES = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4]
# Pairs (anomalous, normal) ranked right: 0.9 beats 3, 0.7 and 0.6 beat 2 each -> 7 of 9.
SIX_AUROC = 7 / 9
# Thresholds from the top: (P, R) = (1, 1/3), (1/2, 1/3), (2/3, 2/3), (3/4, 1), then recall stays 1.
# AP = sum (R_n - R_n-1) P_n = 1/3 * 1 + 0 * 1/2 + 1/3 * 2/3 + 1/3 * 3/4 = 29/36.
SIX_AP = 29 / 36
# F1 = 2PR / (P + R): 1/2, 2/5, 2/3, 6/7, 3/4 (0.5: P 3/5), 2/3 (0.4: P 1/2) -> best 6/7 at 0.6.
SIX_F1 = 6 / 7


# ---------------------------------------------------------------------------------------------
# curve metrics


def test_perfect_reversed_and_tied_scores():
    labels = [0, 0, 0, 1, 1, 1]
    good = [0.1, 0.2, 0.3, 0.7, 0.8, 0.9]
    assert M.auroc(labels, good) == 1.0
    assert M.average_precision(labels, good) == 1.0
    assert M.best_f1(labels, good) == (0.7, 1.0)  # the lowest anomalous score catches all, no false alarm
    assert M.auroc(labels, good[::-1]) == 0.0
    # a full tie: AUROC 0.5, AP = precision at the single threshold = the anomalous fraction
    assert M.auroc([0, 1, 0, 1], [3, 3, 3, 3]) == 0.5
    assert M.average_precision([0, 1, 0, 0], [3, 3, 3, 3]) == 0.25
    assert M.f1_max([0, 1, 0, 0], [3, 3, 3, 3]) == pytest.approx(2 * 0.25 * 1 / 1.25)  # P 1/4, R 1 -> 0.4
    # a tie between one anomalous and one normal sample counts one half
    assert M.auroc([0, 0, 1], [0.1, 0.5, 0.5]) == 0.75


def test_six_labels_hand_computed():
    assert M.auroc(SIX_LABELS, SIX_SCORES) == pytest.approx(SIX_AUROC, abs=1e-12)
    assert M.average_precision(SIX_LABELS, SIX_SCORES) == pytest.approx(SIX_AP, abs=1e-12)
    threshold, f1 = M.best_f1(SIX_LABELS, SIX_SCORES)
    assert (threshold, f1) == (0.6, pytest.approx(SIX_F1, abs=1e-12))
    assert M.f1_max(SIX_LABELS, SIX_SCORES) == pytest.approx(SIX_F1, abs=1e-12)
    # bool labels and float 0/1 labels are the same labels
    assert M.auroc(np.array(SIX_LABELS, bool), SIX_SCORES) == pytest.approx(SIX_AUROC, abs=1e-12)
    assert M.auroc(np.array(SIX_LABELS, np.float32), SIX_SCORES) == pytest.approx(SIX_AUROC, abs=1e-12)


def test_best_f1_prefers_the_highest_of_equal_thresholds():
    normal = np.arange(10.0)  # 0..9
    anomalous = np.array([5.0, 8.0, 12.0, 15.0])
    labels = np.r_[np.zeros(10), np.ones(4)]
    # t = 12: tp 2, fp 0, fn 2 -> 2/3; t = 8: tp 3, fp 2, fn 1 -> 6/9 = 2/3 as well; t = 5: 8/13
    assert M.best_f1(labels, np.r_[normal, anomalous]) == (12.0, pytest.approx(2 / 3))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="only one class"):
        M.auroc([1, 1, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="no label 1"):
        M.auroc([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="no label 1"):
        M.average_precision([0, 0], [0.1, 0.2])
    with pytest.raises(ValueError, match="only 0 .normal. and 1"):
        M.auroc([0, 2, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="3 values but the labels have 2"):
        M.auroc([0, 1], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="NaN or inf"):
        M.f1_max([0, 1], [0.1, float("nan")])
    with pytest.raises(ValueError, match="no samples"):
        M.auroc([], [])
    with pytest.raises(ValueError, match="differ in shape"):
        M.aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 5)))
    with pytest.raises(ValueError, match=r"\(N, H, W\)"):
        M.pixel_metrics(np.zeros((4, 4)), np.zeros((4, 4)))
    with pytest.raises(ValueError, match="max_fpr"):
        M.aupro(np.zeros((1, 4, 4)), np.zeros((1, 4, 4)), max_fpr=0.0)


# ---------------------------------------------------------------------------------------------
# Spearman


def test_spearman_known_answers():
    x = np.array([0.1, 0.5, 0.3, 0.9])
    assert M.spearman(x, x ** 3) == pytest.approx(1.0)
    assert M.spearman(x, -x) == pytest.approx(-1.0)
    assert M.spearman([1.0, 2.0, 3.0], [1.0, 3.0, 2.0]) == pytest.approx(0.5)  # 1 - 6 * 2 / (3 * 8)
    # ties get average ranks: [1, 2.5, 2.5, 4] vs [1, 2, 3, 4] -> 4.5 / sqrt(4.5 * 5) = 3 / sqrt(10)
    assert M.spearman([1.0, 2.0, 2.0, 3.0], [1.0, 2.0, 3.0, 4.0]) == pytest.approx(3 / math.sqrt(10))
    # constant inputs (the gate on saturated scores): both constant agree, one constant does not
    assert M.spearman([2.0, 2.0, 2.0], [5.0, 5.0, 5.0]) == 1.0
    assert M.spearman([2.0, 2.0, 2.0], [1.0, 2.0, 3.0]) == 0.0
    assert M.spearman([1.0, 2.0, 3.0], [7.0, 7.0, 7.0]) == 0.0
    with pytest.raises(ValueError, match="paired"):
        M.spearman([1.0, 2.0], [1.0, 2.0, 3.0])


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
def test_aupro_matches_its_definition_on_many_regions(seed):
    rng = np.random.default_rng(seed)
    masks = np.zeros((3, 16, 16), np.uint8)
    masks[0, 2:6, 3:9] = 1
    masks[0, 10:12, 10:16] = 1
    masks[1, 7, 7] = 1
    masks[1, 12:16, 0:2] = 1
    # image 2 has no region: it only adds normal pixels
    maps = np.round(rng.random(masks.shape) + 0.4 * masks, 2)  # ties
    for max_fpr in (0.05, 0.3, 1.0):
        assert M.aupro(masks, maps, max_fpr) == pytest.approx(_brute_force_aupro(masks, maps, max_fpr), abs=1e-9)


def test_aupro_undefined_without_regions_or_normal_pixels():
    maps = np.random.default_rng(0).random((2, 4, 4))
    assert math.isnan(M.aupro(np.zeros((2, 4, 4)), maps))
    assert math.isnan(M.aupro(np.ones((2, 4, 4)), maps))


# ---------------------------------------------------------------------------------------------
# per-class metric sets


def test_pixel_metrics_hand_computed():
    masks, maps = _one_region_case()
    got = M.pixel_metrics(masks, maps)
    assert list(got) == ["pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"]
    # anomalous 0.9 beats all 14 normal pixels, 0.5 beats the 13 at 0.1: 27 of 28 pairs
    assert got["pixel_auroc"] == pytest.approx(27 / 28, abs=1e-12)
    # (P, R): 0.9 -> (1, 1/2), 0.7 -> (1/2, 1/2), 0.5 -> (2/3, 1): AP = 1/2 + 1/2 * 2/3 = 5/6
    assert got["pixel_ap"] == pytest.approx(5 / 6, abs=1e-12)
    # F1: 2/3 at 0.9, 1/2 at 0.7, 4/5 at 0.5, 4/17 at 0.1 (P 2/16, R 1)
    assert got["pixel_f1_max"] == pytest.approx(0.8, abs=1e-12)
    assert got["aupro"] == pytest.approx((0.5 / 14 + (0.3 - 1 / 14)) / 0.3, abs=1e-12)


def test_pixel_metrics_nan_for_one_class():
    maps = np.random.default_rng(0).random((2, 4, 4))
    for masks in (np.zeros((2, 4, 4), bool), np.ones((2, 4, 4), bool)):
        got = M.pixel_metrics(masks, maps)
        assert list(got) == list(M.PIXEL_KEYS) and all(math.isnan(v) for v in got.values())


def test_image_metrics_values_and_missing_for_single_label():
    got = M.image_metrics(SIX_LABELS, SIX_SCORES)
    assert got == {"image_auroc": pytest.approx(SIX_AUROC), "image_ap": pytest.approx(SIX_AP),
                   "image_f1_max": pytest.approx(SIX_F1)}
    missing = {"image_auroc": None, "image_ap": None, "image_f1_max": None}
    assert M.image_metrics([1, 1, 1], [0.2, 0.5, 0.9]) == missing
    assert M.image_metrics([0, 0], [0.2, 0.5]) == missing


def _paper_case() -> dict:
    """Four 2x2 maps whose maxima 1..4 sit at pixel (0, 0), all other pixels 0; images 2, 3 anomalous there."""
    maps = np.zeros((4, 2, 2), np.float32)
    maps[:, 0, 0] = [1.0, 2.0, 3.0, 4.0]
    masks = np.zeros((4, 2, 2), bool)
    masks[2:, 0, 0] = True
    return {"maps": maps, "cls": np.array([2.0, 0.0, 1.0, 0.5]), "masks": masks, "labels": np.array([0, 0, 1, 1])}


def test_class_metrics_normalize_with_the_test_set_and_the_domain_weight():
    from aaclip.train.evaluate import class_metrics

    # the whole maps span [0, 4] -> map_n = [1/4, 1/2, 3/4, 1]; cls spans [0, 2] -> cls_n = [1, 0, 1/2, 1/4]
    # industrial 0.5/0.5: scores [5/8, 1/4, 5/8, 5/8]: each anomaly ties one normal and beats one -> 3/4.
    # (Normalizing the maxima by their own range [1, 4] would give [1/2, 1/6, 7/12, 5/8]: AUROC 1.)
    industrial = class_metrics(_paper_case(), "industrial")
    assert industrial["image_auroc"] == pytest.approx(0.75)
    # AP: the tie at 5/8 holds 2 anomalies and 1 normal: P 2/3 at R 1 -> 2/3; F1 = 2 * 2/3 / (5/3) = 4/5
    assert industrial["image_ap"] == pytest.approx(2 / 3)
    assert industrial["image_f1_max"] == pytest.approx(0.8)
    # medical: the map only, already in the right order
    medical = class_metrics(_paper_case(), "medical")
    assert (medical["image_auroc"], medical["image_ap"], medical["image_f1_max"]) == (1.0, 1.0, 1.0)
    # pixels: the anomalous pixels (3, 4) lie above every normal one (0, 1, 2)
    assert {k: medical[k] for k in M.PIXEL_KEYS} == {k: 1.0 for k in M.PIXEL_KEYS}
    assert (medical["n_images"], medical["n_anomalous"]) == (4, 2)


# ---------------------------------------------------------------------------------------------
# reports


def _per_class() -> dict:
    return {
        "bottle": M.pixel_metrics(*_one_region_case()) | M.image_metrics(SIX_LABELS, SIX_SCORES),
        # a class without anomalous test images: no pixel AUPRO (NaN), image metrics missing (None)
        "cable": {"pixel_auroc": 0.8, "pixel_ap": 0.3, "pixel_f1_max": 0.2, "aupro": float("nan"),
                  **M.image_metrics([0, 0, 0], [0.1, 0.2, 0.3])},
    }


def test_class_report_mean_counts_only_defined_classes():
    report = M.class_report(_per_class())
    assert list(report) == ["bottle", "cable", "mean"]
    mean = report["mean"]
    assert mean["pixel_auroc"] == pytest.approx((27 / 28 + 0.8) / 2)
    assert mean["pixel_ap"] == pytest.approx((5 / 6 + 0.3) / 2)
    assert mean["aupro"] == pytest.approx(report["bottle"]["aupro"])  # cable's NaN ignored
    assert mean["image_auroc"] == pytest.approx(SIX_AUROC)  # cable's None ignored, not counted as 0
    assert mean["image_ap"] == pytest.approx(SIX_AP) and mean["image_f1_max"] == pytest.approx(SIX_F1)
    assert mean["n_classes"] == {"pixel_auroc": 2, "pixel_ap": 2, "pixel_f1_max": 2, "aupro": 1,
                                 "image_auroc": 1, "image_ap": 1, "image_f1_max": 1}
    assert report["cable"]["aupro"] is None and report["cable"]["image_auroc"] is None  # valid JSON
    all_missing = M.class_report({"a": {"image_auroc": None}, "b": {"image_auroc": float("nan")}})
    assert all_missing["mean"]["image_auroc"] is None and all_missing["mean"]["n_classes"]["image_auroc"] == 0
    with pytest.raises(ValueError, match="reserved"):
        M.class_report({"mean": {}})


def test_markdown_table_contents():
    table = M.markdown_table(M.class_report(_per_class()))
    lines = table.strip().split("\n")
    assert lines[0] == "| class | P-AUROC | P-AP | P-F1max | AUPRO | I-AUROC | I-AP | I-F1max |"
    assert lines[1] == "|---|---:|---:|---:|---:|---:|---:|---:|"
    # 27/28 = 96.4%, 5/6 = 83.3%, 0.8, AUPRO 0.5/14 + 0.3 - 1/14 over 0.3 = 88.1%, 7/9, 29/36, 6/7
    assert lines[2] == "| bottle | 96.4 | 83.3 | 80.0 | 88.1 | 77.8 | 80.6 | 85.7 |"
    assert lines[3] == "| cable | 80.0 | 30.0 | 20.0 | \u2013 | \u2013 | \u2013 | \u2013 |"
    assert lines[4] == "| mean | 88.2 | 56.7 | 50.0 | 88.1 | 77.8 | 80.6 | 85.7 |"
    assert len(lines) == 5
    assert M.markdown_table({"a": {"aupro": 0.5}}, keys=("aupro",)) == "| class | AUPRO |\n|---|---:|\n| a | 50.0 |\n"


def test_module_imports_without_torch_sklearn_scipy():
    code = (
        "import sys, aaclip.contract.metrics; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('torch', 'sklearn', 'scipy')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
