"""The score block and score arithmetic of the contract (aaclip.contract.score) and alarm debouncing
(aaclip.runtime.decide), as calibration, evaluation, benchmarks and the camera loop use them."""
import dataclasses
import math

import numpy as np
import pytest
from aaclip.contract.score import (
    SCORE_KEYS,
    ScoreError,
    ScoreParams,
    image_score,
    is_anomalous,
    normalize_cls,
    normalize_map,
    operator_score,
    pixel_mask,
)
from aaclip.runtime.decide import ALARM, ANOMALOUS, NORMAL, Debouncer

# Powers of two everywhere: every value below is exact in float32, so results compare exactly.
P = ScoreParams(map_lo=1.0, map_hi=5.0, cls_lo=0.5, cls_hi=0.75, map_weight=0.25, threshold=0.5, pixel_threshold=0.5)


# ---------------------------------------------------------------------------------------------
# ScoreParams: validation and the manifest block


@pytest.mark.parametrize("field, value, message", [
    ("map_lo", math.nan, "score.map_lo is nan; it must be a finite number"),
    ("threshold", math.inf, "score.threshold is inf; it must be a finite number"),
    ("pixel_threshold", -math.inf, "score.pixel_threshold is -inf"),
    ("map_hi", 1.0, r"score.map_lo \(1\) must be below score.map_hi \(1\)"),
    ("cls_hi", 0.25, r"score.cls_lo \(0.5\) must be below score.cls_hi \(0.25\)"),
    ("map_weight", -0.1, r"score.map_weight is -0.1; it must be in \[0, 1\]"),
    ("map_weight", 1.5, r"score.map_weight is 1.5; it must be in \[0, 1\]"),
    ("cls_lo", "0.5", "score.cls_lo must be a number, got '0.5'"),
    ("threshold", True, "score.threshold must be a number, got True"),
    ("map_lo", None, "score.map_lo must be a number, got None"),
])
def test_invalid_parameters_raise_score_error(field, value, message):
    values = dataclasses.asdict(P) | {field: value}
    with pytest.raises(ScoreError, match=message):
        ScoreParams(**values)


def test_valid_parameters_become_floats_and_stay_frozen():
    p = ScoreParams(np.float32(0), 2, np.int64(-1), 1, 0)  # weights 0 and 1 are the ends of [0, 1]
    assert [type(getattr(p, k)) for k in SCORE_KEYS] == [float] * 7
    assert (p.map_lo, p.map_hi, p.cls_lo, p.cls_hi, p.map_weight, p.threshold, p.pixel_threshold) == (
        0.0, 2.0, -1.0, 1.0, 0.0, 0.5, 0.5)
    assert ScoreParams(0, 1, 0, 1, 1).map_weight == 1.0
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.threshold = 0.9


def test_block_round_trip_and_errors():
    block = P.to_block(source="calibration", calibration={"frames": 10})
    assert block == {"map_lo": 1.0, "map_hi": 5.0, "cls_lo": 0.5, "cls_hi": 0.75, "map_weight": 0.25,
                     "threshold": 0.5, "pixel_threshold": 0.5, "source": "calibration", "calibration": {"frames": 10}}
    assert ScoreParams.from_block(block) == P
    assert P.to_block()["source"] == "default" and P.to_block()["calibration"] is None
    with pytest.raises(ScoreError, match="the score block lacks cls_hi, threshold"):
        ScoreParams.from_block({k: v for k, v in block.items() if k not in ("cls_hi", "threshold")})
    with pytest.raises(ScoreError, match="must be an object, got list"):
        ScoreParams.from_block([1.0, 2.0])
    with pytest.raises(ScoreError, match="score.map_weight is 2"):
        ScoreParams.from_block(block | {"map_weight": 2.0})


def test_with_threshold_and_with_ranges_keep_the_other_fields():
    assert P.with_threshold(None) is P
    q = P.with_threshold(0.75)
    assert q.threshold == 0.75 and dataclasses.replace(q, threshold=0.5) == P and P.threshold == 0.5
    r = P.with_ranges((2.0, 6.0), (0.0, 1.0))
    assert (r.map_lo, r.map_hi, r.cls_lo, r.cls_hi) == (2.0, 6.0, 0.0, 1.0)
    assert (r.map_weight, r.threshold, r.pixel_threshold) == (0.25, 0.5, 0.5)
    # equal ends (a constant test set) get a unit span instead of an invalid lo == hi
    flat = P.with_ranges((3.0, 3.0), (np.float32(0.5), np.float32(0.5)))
    assert (flat.map_lo, flat.map_hi, flat.cls_lo, flat.cls_hi) == (3.0, 4.0, 0.5, 1.5)


# ---------------------------------------------------------------------------------------------
# score arithmetic (float32, like the runtime)


def test_normalization_hand_computed():
    m = normalize_map(np.array([1.0, 3.0, 9.0, 0.0]), P)  # (x - 1) / 4
    assert m.dtype == np.float32
    np.testing.assert_array_equal(m, np.array([0.0, 0.5, 2.0, -0.25], np.float32))
    c = normalize_cls([0.625, 0.5, 1.0], P)  # (x - 0.5) / 0.25
    assert c.dtype == np.float32
    np.testing.assert_array_equal(c, np.array([0.5, 0.0, 2.0], np.float32))


def test_image_score_hand_computed_and_not_clipped():
    map_max = np.array([3.0, 9.0, 0.0])  # map_n = [0.5, 2, -0.25]
    cls = np.array([0.625, 0.5, 1.0])  # cls_n = [0.5, 0, 2]
    scores = image_score(map_max, cls, P)  # 0.25 * map_n + 0.75 * cls_n
    assert scores.dtype == np.float32
    np.testing.assert_array_equal(scores, np.array([0.5, 0.5, 1.4375], np.float32))
    assert is_anomalous(scores, P).tolist() == [True, True, True]  # score >= threshold
    assert is_anomalous(scores, P.with_threshold(0.75)).tolist() == [False, False, True]
    # map_weight 1 (medical): the cls score does not count at all, even when it is huge
    medical = dataclasses.replace(P, map_weight=1.0)
    np.testing.assert_array_equal(image_score(map_max, [99.0, -99.0, 0.0], medical), [0.5, 2.0, -0.25])


def test_image_score_is_float32_arithmetic():
    # 0.1 has no exact binary value: the float32 result differs from the float64 one, and the
    # contract (what the runtime compares with the threshold) is the float32 one
    p = ScoreParams(0.0, 0.3, 0.0, 1.0, 1.0)
    got = image_score(np.array([0.1]), np.array([0.0]), p)
    assert got[0] == (np.float32(0.1) - np.float32(0.0)) / np.float32(0.3)
    assert float(got[0]) != 0.1 / 0.3


def test_operator_score_puts_the_threshold_at_one_half_hand_computed():
    # calibrated: the median good part is raw 0; threshold 2 -> scale 2: raw 0 -> 0, 1 -> 0.25, 2 -> 0.5, 4 -> 1
    raw = np.array([-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 9.0, np.nan])
    np.testing.assert_array_equal(operator_score(raw, 2.0), [0.0, 0.0, 0.25, 0.5, 0.75, 1.0, 1.0, np.nan])
    # the export default (threshold 0.5) shows the raw score itself, clipped to [0, 1]
    np.testing.assert_array_equal(operator_score(np.array([-0.5, 0.0, 0.25, 0.5, 0.75, 1.5]), 0.5),
                                  [0.0, 0.0, 0.25, 0.5, 0.75, 1.0])
    # a threshold near or below the median good part keeps a scale of 0.25
    np.testing.assert_array_equal(operator_score(np.array([-0.25, 0.0, 0.1, 0.25]), 0.0), [0.0, 0.5, 0.7, 1.0])
    assert operator_score(-2.25, -2.0) == 0.0 and operator_score(-2.0, -2.0) == 0.5  # a hand threshold below 0
    assert isinstance(operator_score(0.25, 2.0), float) and operator_score(0.25, 2.0) == 0.0625
    # monotone, and at or above 0.5 exactly where the raw score reaches the threshold
    rng = np.random.default_rng(0)
    for threshold in (-1.0, 0.3, 1.0, 1.81, 40.0):
        x = np.sort(rng.normal(threshold, 3.0, 500))
        shown = operator_score(x, threshold)
        assert np.all(np.diff(shown) >= 0) and np.all((shown >= 0.5) == (x >= threshold))


def test_pixel_mask_hand_computed():
    amap = np.array([[1.0, 3.0], [2.99, 5.0]], np.float32)  # normalized: 0, 0.5, 0.4975, 1
    assert pixel_mask(amap, P).tolist() == [[False, True], [False, True]]
    assert pixel_mask(amap, dataclasses.replace(P, pixel_threshold=0.0)).all()
    assert not pixel_mask(amap, dataclasses.replace(P, pixel_threshold=1.25)).any()


# ---------------------------------------------------------------------------------------------
# Debouncer


def _run(d: Debouncer, frames: list) -> tuple[list, list]:
    states, onsets = [], []
    for anomalous in frames:
        states.append(d.update(anomalous))
        onsets.append(d.onset)
    return states, onsets


def test_debouncer_n1_every_anomalous_frame_alarms():
    d = Debouncer(1)
    states, onsets = _run(d, [False, True, True, False, True])
    assert states == [NORMAL, ALARM, ALARM, NORMAL, ALARM]
    assert onsets == [False, True, False, False, True]  # two rising edges
    assert d.alarms == 2


def test_debouncer_n3_needs_three_consecutive_frames():
    d = Debouncer(3)
    frames = [True, True, False, True, True, True, True, False, True, True, True]
    states, onsets = _run(d, frames)
    assert states == [ANOMALOUS, ANOMALOUS, NORMAL, ANOMALOUS, ANOMALOUS, ALARM, ALARM, NORMAL,
                      ANOMALOUS, ANOMALOUS, ALARM]
    assert [i for i, o in enumerate(onsets) if o] == [5, 10]  # the third frame of each streak
    assert d.alarms == 2  # a continuing alarm (frame 6) is not a new onset
    assert d.streak == 3


def test_debouncer_rejects_n_below_one():
    with pytest.raises(ValueError, match="debounce must be >= 1, got 0"):
        Debouncer(0)


def test_event_lines_mark_the_onset_of_each_alarm():
    """Every frame of an alarm says alarm: true; only its first says onset: true (what the counters count)."""
    from aaclip.runtime.capture import CapturedFrame
    from aaclip.runtime.decide import Decider

    params = ScoreParams(map_lo=0.0, map_hi=1.0, cls_lo=0.0, cls_hi=1.0, map_weight=0.0, threshold=0.5)  # score = cls
    decider = Decider(params, n_sources=1, debounce=2)
    cls = np.array([0.9, 0.9, 0.9, 0.1, 0.9, 0.9])
    frames = [CapturedFrame(0, "cam", i, np.zeros((1, 1, 3), np.uint8), 0.0, 0.0) for i in range(len(cls))]
    decisions = decider.decide(frames, ["c"] * len(cls), {"map_max": np.zeros(len(cls)), "cls_score": cls}, 0.0)
    events = [d.event() for d in decisions]
    assert [e["alarm"] for e in events] == [False, True, True, False, False, True]
    assert [e["onset"] for e in events] == [False, True, False, False, False, True]
    assert decider.alarms == sum(e["onset"] for e in events) == 2
