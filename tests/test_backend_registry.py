"""The backend registry: backends by name, auto selection by artifact format, runners that lend buffers,
and the loop rendering only what a sink asks to see."""
import numpy as np
import pytest
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import open_artifact
from aaclip.runtime import backends as B
from aaclip.runtime import loop as loop_module
from aaclip.runtime.backends import Backend, RunnerOptions, choose_backend, open_runner, register_backend
from aaclip.runtime.backends.base import Runner, infer_frames
from aaclip.runtime.capture import Backoff
from aaclip.runtime.decide import ALARM
from aaclip.runtime.loop import CameraLoop, LoopConfig
from aaclip.runtime.sinks import Sink
from aaclip.runtime.sources import open_source
from runtime_fixtures import CLEAN_LEVEL, frame_image, make_onnx_artifact, write_video


class ConstantRunner(Runner):
    """A backend of its own: every map is ``value``; remembers the buffers it lent."""

    name = "constant"

    def __init__(self, manifest, value):
        super().__init__()
        self.manifest, self.value, self.lent = manifest, value, {}

    def activate_impl(self):
        self.input_names = ("image",)
        self.output_names = ("anomaly_map", "map_max", "cls_score")

    def lend_input(self, name, shape, dtype):
        self.lent[name] = np.zeros(shape, dtype)
        return self.lent[name]

    def infer_impl(self, feeds, outputs):
        n, size = len(feeds["image"]), self.manifest.image_size
        self.seen = feeds["image"]
        out = {"anomaly_map": np.full((n, size, size), self.value, np.float32),
               "map_max": np.full(n, self.value, np.float32), "cls_score": np.full(n, self.value, np.float32)}
        return {k: out[k] for k in outputs}

    def deactivate_impl(self):
        pass


@pytest.fixture
def constant_backend():
    register_backend(Backend(name="constant", formats=("onnx",), installed=lambda: True, install_hint="-",
                             create=lambda m, o: ConstantRunner(m, o.extra.get("value", 0.25)), auto_rank=1000))
    yield
    B.registry._BACKENDS.pop("constant")


def test_registered_backend_runs_artifacts_of_its_format(tmp_path, constant_backend):
    m = open_artifact(make_onnx_artifact(tmp_path))
    assert "constant" in B.backend_names() and B.backend_names()[0] == "auto"
    assert choose_backend(m).name in ("onnxruntime", "openvino")  # auto_rank 1000: never chosen automatically
    frames = [frame_image(False, (96, 128), seed=i) for i in range(3)]
    with open_runner(m, "constant", RunnerOptions(extra={"value": 0.75})) as runner:
        out = infer_frames(runner, m, frames, batch=2)
        assert np.shares_memory(runner.seen, runner.lent["image"])  # the frames went into the lent buffer
    assert out["map_max"].tolist() == [0.75] * 3 and out["anomaly_map"].shape == (3, 64, 64)
    with open_runner(m, "onnxruntime") as ort:  # the real ONNX Runtime on the same frames: darkness of grey frames
        real = infer_frames(ort, m, frames, batch=2)
    np.testing.assert_allclose(real["cls_score"], CLEAN_LEVEL, atol=0.02)


def test_unknown_and_mismatched_backends_are_user_errors(tmp_path):
    m = open_artifact(make_onnx_artifact(tmp_path))
    with pytest.raises(UserError, match=r"unknown backend 'tvm'; choose one of auto, onnxruntime, openvino, tensorrt"):
        open_runner(m, "tvm")
    with pytest.raises(UserError, match="is an onnx artifact, which the tensorrt backend does not run; use "
                                        "--backend onnxruntime or openvino"):
        choose_backend(m, "tensorrt")


def test_pytorch_reference_registers_from_export():
    import aaclip.export.reference  # noqa: F401  (registers itself)

    backend = B.get_backend("pytorch")
    assert backend.formats == ("onnx", "engine") and backend.auto_rank >= 1000


class AlarmViews(Sink):
    """Wants pixels of alarm frames only; records which frames it was shown."""

    needs_maps = True

    def __init__(self):
        self.viewed, self.decisions = [], []

    def wants_view(self, decision):
        return decision.state == ALARM

    def emit(self, decision, view):
        self.decisions.append(decision.frame)
        if view is not None:
            self.viewed.append(decision.frame)


def test_loop_renders_only_the_decisions_a_sink_wants(tmp_path, monkeypatch):
    m = open_artifact(make_onnx_artifact(tmp_path))
    video = write_video(tmp_path / "v.avi", 8, defect_frames=[2, 3, 6])
    rendered = []
    real_render = loop_module.render
    monkeypatch.setattr(loop_module, "render", lambda *a: rendered.append(a[2].frame) or real_render(*a))
    sink = AlarmViews()
    with open_runner(m) as runner:
        loop = CameraLoop(runner, m, [open_source(str(video))], [0],
                          LoopConfig(drop=False, stats_every=0, backoff=Backoff(0.01, 0.01)), [sink])
        assert loop.lanes[0].wanted == ("map_max", "cls_score", "anomaly_map")
        summary = loop.run()
    assert sink.decisions == list(range(8)) and summary.frames == 8
    assert rendered == sink.viewed == [2, 3, 6] and summary.alarms == 2
