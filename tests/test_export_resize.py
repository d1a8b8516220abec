"""The in-graph resize reproduces PIL bicubic (training's resize); the measurement script ranks candidates."""
from __future__ import annotations

import numpy as np
import pytest
from aaclip.export.resize import pil_bicubic_weights, resize_float
from PIL import Image


def _pil(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC), dtype=np.float64)


@pytest.mark.parametrize("shape", [(64, 80, 64, 64), (64, 100, 64, 37), (80, 64, 50, 64), (40, 64, 64, 64),
                                   (64, 30, 64, 77)])
def test_one_axis_weights_equal_pil_exactly(shape):
    """Along one axis there is no intermediate image: rounding our float result gives PIL's bytes."""
    h, w, oh, ow = shape
    rgb = np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)
    ours = np.clip(np.floor(resize_float(rgb, oh, ow) + 0.5), 0, 255)
    assert np.abs(ours - _pil(rgb, oh, ow)).max() <= 1.0  # PIL's fixed-point coefficients: at most one level
    assert (ours != _pil(rgb, oh, ow)).mean() < 1e-3


def test_weights_are_normalized_and_antialiased():
    w = pil_bicubic_weights(1920, 518)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    taps = (w != 0).sum(axis=1)
    assert taps.max() >= 14  # support 2 * 1920/518 on each side: PIL's antialiasing when shrinking
    up = pil_bicubic_weights(100, 150)
    assert (up != 0).sum(axis=1).max() == 4  # plain 4-tap bicubic when enlarging
    assert pil_bicubic_weights(64, 64) == pytest.approx(np.eye(64))
    with pytest.raises(ValueError):
        pil_bicubic_weights(0, 10)


def test_two_axis_resize_within_one_level_of_pil_on_natural_frames():
    from aaclip.train import synth

    rng = np.random.default_rng(1)
    bgr = synth.draw_product("disk", rng, 300)[:200]  # 200 x 300, saturated highlights included
    rgb = np.ascontiguousarray(bgr[..., ::-1])
    diff = np.abs(resize_float(rgb, 64, 64) - _pil(rgb, 64, 64))
    assert diff.max() <= 1.05 and diff.mean() < 0.35  # PIL rounds its 8-bit intermediate and output


def test_measure_ranks_the_graph_resize_closest_to_pil():
    from aaclip.export.resize_check import markdown_table, measure, synthetic_full_hd

    frames = synthetic_full_hd(1, hw=(120, 200))
    rows = {r["candidate"]: r for r in measure(frames, 48)}
    default = rows["in-graph PIL-bicubic MatMul + clip (aaclip-export default)"]
    assert default["max_abs"] <= 1.05 / 255
    assert default["max_abs"] <= min(r["max_abs"] for r in rows.values()) + 1e-6
    assert rows["cv2 INTER_CUBIC (runtime fit_frame, enlarging)"]["mean_abs"] > default["mean_abs"]
    table = markdown_table(list(rows.values()), "1 frame")
    assert table.count("\n") == len(rows) + 1 and "| max abs | mean abs |" in table
