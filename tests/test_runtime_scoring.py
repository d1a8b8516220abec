"""Image score formula, pixel mask, debouncing, and the frame fitting resize."""
import cv2
import numpy as np
import pytest
from aaclip.contract.feeds import fit_frame
from aaclip.contract.score import ScoreParams, is_anomalous, pixel_mask
from aaclip.contract.score import image_score
from aaclip.runtime.decide import ALARM, ANOMALOUS, NORMAL, Debouncer

P = ScoreParams(map_lo=0.2, map_hi=0.6, cls_lo=0.5, cls_hi=0.7, map_weight=0.5, threshold=0.6, pixel_threshold=0.5)


def test_image_score_known_answers():
    # map_n = (0.5-0.2)/0.4 = 0.75; cls_n = (0.6-0.5)/0.2 = 0.5 -> 0.625. Second: 1.75 and 1.5 -> 1.625 (no clip).
    scores = image_score(np.array([0.5, 0.9], np.float32), np.array([0.6, 0.8], np.float32), P)
    np.testing.assert_allclose(scores, [0.625, 1.625], rtol=1e-6)
    assert is_anomalous(scores, P).tolist() == [True, True]
    assert is_anomalous(scores, P.with_threshold(0.7)).tolist() == [False, True]
    medical = ScoreParams(0.2, 0.6, 0.5, 0.7, 1.0, 0.6, 0.5)  # map only
    np.testing.assert_allclose(image_score(np.array([0.5]), np.array([99.0]), medical), [0.75], rtol=1e-6)


def test_pixel_mask():
    amap = np.array([[0.3, 0.4], [0.41, 0.6]], np.float32)  # normalized: 0.25, 0.5, 0.525, 1.0
    assert pixel_mask(amap, P).tolist() == [[False, True], [True, True]]


def test_debouncer_needs_n_consecutive():
    d = Debouncer(3)
    seq = [True, True, False, True, True, True, True, False, True]
    assert [d.update(a) for a in seq] == [ANOMALOUS, ANOMALOUS, NORMAL, ANOMALOUS, ANOMALOUS, ALARM, ALARM,
                                          NORMAL, ANOMALOUS]
    assert d.alarms == 1
    with pytest.raises(ValueError):
        Debouncer(0)


def test_fit_frame_interpolation_and_out_buffer():
    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    small = rng.integers(0, 256, (32, 40, 3), dtype=np.uint8)
    np.testing.assert_array_equal(fit_frame(big, 64, 64), cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA))
    np.testing.assert_array_equal(fit_frame(small, 64, 64),
                                  cv2.resize(small, (64, 64), interpolation=cv2.INTER_CUBIC))
    batch = np.zeros((2, 64, 64, 3), np.uint8)
    out = fit_frame(big, 64, 64, out=batch[1])
    assert np.shares_memory(out, batch[1])
    np.testing.assert_array_equal(batch[1], cv2.resize(big, (64, 64), interpolation=cv2.INTER_AREA))
    assert batch[0].max() == 0
    same = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    fit_frame(same, 64, 64, out=batch[0])
    np.testing.assert_array_equal(batch[0], same)
    grey = rng.integers(0, 256, (64, 64), dtype=np.uint8)
    np.testing.assert_array_equal(fit_frame(grey, 64, 64)[..., 2], grey)
