"""The resize of camera frames reproduces training's PIL bicubic byte for byte: on the host (numpy) and in the
graph (float32 digit MatMuls, run by ONNX Runtime), for upscales, downscales and mixed cases."""
from __future__ import annotations

import numpy as np
import pytest
from aaclip.export.resize import (
    PRECISION_BITS,
    digit_matrices,
    graph_resize_numpy,
    pil_bicubic_weights,
    pil_fixed_weights,
    resize_uint8,
)
from PIL import Image

# (H, W) -> (H', W'): upscales, downscales (antialiased), one axis each way, odd and tiny sizes
SIZES = [(64, 80, 64, 64), (100, 150, 64, 64), (480, 640, 518, 518), (30, 40, 77, 91), (7, 5, 64, 64),
         (300, 200, 37, 200), (2, 300, 9, 20), (1, 1, 5, 5), (333, 97, 128, 128), (64, 64, 17, 240),
         (720, 1280, 336, 336), (45, 512, 45, 7)]


def _pil(rgb: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(Image.fromarray(rgb).resize((w, h), Image.BICUBIC))


def _frames(h: int, w: int, seed: int) -> list[np.ndarray]:
    """Random noise (every rounding case) and a natural-looking product with saturated highlights."""
    from aaclip.data import synth

    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    product = synth.draw_product("disk", rng, max(synth.MIN_IMAGE_SIZE, h, w))[:h, :w]
    return [noise, np.ascontiguousarray(product)]


def _agreement(ours: np.ndarray, pil: np.ndarray) -> tuple[float, int]:
    diff = np.abs(ours.astype(np.int64) - pil.astype(np.int64))
    return float((diff == 0).mean()), int(diff.max())


@pytest.mark.parametrize("shape", SIZES)
def test_host_and_graph_arithmetic_equal_pillow(shape):
    h, w, oh, ow = shape
    for i, rgb in enumerate(_frames(h, w, seed=sum(shape))):
        pil = _pil(rgb, oh, ow)
        host = resize_uint8(rgb, oh, ow)
        assert host.dtype == np.uint8 and host.shape == pil.shape
        assert np.array_equal(host, pil), (shape, i, _agreement(host, pil))  # byte for byte
        graph = graph_resize_numpy(rgb, oh, ow)  # the graph's float32 digit arithmetic
        assert _agreement(graph, pil) == (1.0, 0), (shape, i)


def test_onnx_graph_resize_equals_pillow():
    """The resize as exported (the same module code the deploy graph uses) run by ONNX Runtime."""
    torch = pytest.importorskip("torch")
    ort = pytest.importorskip("onnxruntime")
    from aaclip.export.resize import PilResizeGraph

    class Resize(torch.nn.Module):
        def __init__(self, in_hw, out_hw):
            super().__init__()
            self.resizer = PilResizeGraph(in_hw, out_hw)
            self.resizer.register(self)

        def forward(self, x):  # uint8 NHWC RGB -> float NCHW
            return self.resizer.apply(self, x.to(torch.float32).permute(0, 3, 1, 2))

    import tempfile
    from pathlib import Path

    total, equal, worst = 0, 0, 0
    for h, w, oh, ow in [(120, 200, 64, 64), (48, 40, 64, 96), (1080, 1920, 518, 518)]:
        frames = np.stack(_frames(h, w, seed=h))
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "resize.onnx"
            torch.onnx.export(Resize((h, w), (oh, ow)), (torch.from_numpy(frames),), str(path), dynamo=False,
                              opset_version=17, input_names=["image"], output_names=["out"])
            out = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"image": frames})[0]
        pil = np.stack([_pil(f, oh, ow) for f in frames]).transpose(0, 3, 1, 2)
        diff = np.abs(out.astype(np.int64) - pil)
        total, equal, worst = total + diff.size, equal + int((diff == 0).sum()), max(worst, int(diff.max()))
    assert equal / total >= 0.999 and worst <= 1  # the done criterion; measured: every pixel equal
    assert equal == total


def test_fixed_point_weights_and_digits():
    w = pil_bicubic_weights(1920, 518)
    np.testing.assert_allclose(w.sum(axis=1), 1.0, atol=1e-12)
    assert (w != 0).sum(axis=1).max() >= 14  # support 2 * 1920/518 on each side: PIL's antialiasing
    assert (pil_bicubic_weights(100, 150) != 0).sum(axis=1).max() == 4  # plain 4-tap bicubic when enlarging
    assert np.array_equal(pil_fixed_weights(64, 64), np.eye(64, dtype=np.int64) << PRECISION_BITS)
    k = pil_fixed_weights(1920, 518)
    assert np.abs(k.sum(axis=1) - (1 << PRECISION_BITS)).max() <= k.shape[1]  # rounding of each tap only
    for in_size, out_size in [(1920, 518), (64, 97), (4000, 37)]:
        split = digit_matrices(in_size, out_size)
        base = 2 ** split.bits
        assert split.bits <= 8 and np.abs(split.digits).max() <= base // 2  # exact even in TF32 products
        rebuilt = (split.digits * base ** np.arange(split.count)[:, None, None]).sum(axis=0)
        assert np.array_equal(rebuilt, pil_fixed_weights(in_size, out_size))
        taps = (split.digits != 0).any(axis=0).sum(axis=1).max()
        assert 255 * taps * base // 2 <= 2 ** 21  # every digit's row sum is an exact float32 integer
    assert digit_matrices(4000, 37).bits < 8  # a 108x shrink has wide rows: smaller digits, more of them
    with pytest.raises(ValueError):
        pil_bicubic_weights(0, 10)
    with pytest.raises(ValueError, match="uint8"):
        resize_uint8(np.zeros((4, 4, 3), np.float32), 2, 2)


def test_measure_ranks_the_graph_resize_exact():
    from aaclip.export.resize_check import markdown_table, measure, synthetic_full_hd

    frames = synthetic_full_hd(1, hw=(120, 200))
    rows = {r["candidate"]: r for r in measure(frames, 48)}
    default = rows["in-graph PIL 8-bit exact (aaclip-export default)"]
    assert default["max_abs"] == 0.0 and default["equal"] == 1.0
    assert rows["in-graph PIL-bicubic MatMul + clip (float weights, no rounding)"]["equal"] < 1.0
    assert rows["cv2 INTER_CUBIC (runtime fit_frame, enlarging)"]["mean_abs"] > default["mean_abs"]
    table = markdown_table(list(rows.values()), "1 frame")
    assert table.count("\n") == len(rows) + 1 and "| pixels equal |" in table and "| 100.00% |" in table
