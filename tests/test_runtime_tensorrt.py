"""TensorRT backend buffer/shape logic with a fake ``tensorrt`` module and a numpy-backed CUDA adapter."""
import json
import sys
import types

import numpy as np
import pytest
from aaclip.contract.errors import ArtifactError, UserError
from aaclip.contract.manifest import load_manifest, write_manifest
from aaclip.runtime.backends import RunnerOptions, choose_backend, open_runner
from aaclip.runtime.backends.cuda_memory import CudaMemory
from aaclip.runtime.backends.tensorrt import TensorRTRunner
from aaclip.runtime.capture import Backoff
from aaclip.runtime.loop import CameraLoop, LoopConfig
from aaclip.runtime.sources import open_source
from runtime_fixtures import CLEAN_LEVEL, frame_image, manifest_dict, write_video


class FakeCuda(CudaMemory):
    """Device memory = numpy byte arrays keyed by fake pointers; records every copy."""

    def __init__(self, cc="8.7"):
        self.mem, self.copies, self.freed, self._next, self.cc = {}, [], [], 0x1000, cc

    def host_empty(self, shape, dtype):
        return np.empty(shape, dtype)

    def free_host(self, array):
        pass

    def device_alloc(self, nbytes):
        ptr, self._next = self._next, self._next + nbytes + 256
        self.mem[ptr] = np.zeros(nbytes, np.uint8)
        return ptr

    def device_free(self, ptr):
        self.freed.append(ptr)
        del self.mem[ptr]

    def create_stream(self):
        return 7

    def destroy_stream(self, stream):
        pass

    def htod_async(self, dst, src, stream):
        assert stream == 7 and src.flags.c_contiguous
        self.mem[dst][: src.nbytes] = src.reshape(-1).view(np.uint8)
        self.copies.append(("htod", dst, src.nbytes))

    def dtoh_async(self, dst, src, stream):
        assert stream == 7 and dst.flags.c_contiguous
        dst.reshape(-1).view(np.uint8)[:] = self.mem[src][: dst.nbytes]
        self.copies.append(("dtoh", src, dst.nbytes))

    def synchronize(self, stream):
        pass

    def compute_capability(self):
        return self.cc

    def device_name(self):
        return "Fake Orin"


def fake_tensorrt(cuda: FakeCuda, version="10.3.0", name="tensorrt"):
    """A module with the TensorRT 10 name-based API; the engine computes the darkness graph."""
    trt = types.ModuleType(name)
    trt.__version__ = version
    trt.calls = []

    class Logger:
        WARNING = 2

        def __init__(self, level):
            self.level = level

    class TensorIOMode:
        INPUT, OUTPUT = "INPUT", "OUTPUT"

    class DataType:
        UINT8, INT64, FLOAT = "UINT8", "INT64", "FLOAT"

    np_types = {"UINT8": np.uint8, "INT64": np.int64, "FLOAT": np.float32}

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            shape = tuple(shape)
            trt.calls.append(("set_input_shape", name, shape))
            lo, _, hi = self.engine.profile[name]
            if not all(a <= s <= b for a, s, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name):
            t = self.engine.tensors[name]
            if t["mode"] == "INPUT":
                return self.shapes.get(name, tuple(t["shape"]))
            return (self.shapes["image"][0],) + tuple(t["shape"][1:])

        def set_tensor_address(self, name, ptr):
            trt.calls.append(("set_tensor_address", name, ptr))
            self.addresses[name] = ptr
            return True

        def _array(self, name):
            shape = self.get_tensor_shape(name)
            dtype = np.dtype(np_types[self.engine.tensors[name]["dtype"]])
            n = int(np.prod(shape)) * dtype.itemsize
            return cuda.mem[self.addresses[name]][:n].view(dtype).reshape(shape)

        def execute_async_v3(self, stream):
            trt.calls.append(("execute_async_v3", stream))
            image = self._array("image").astype(np.float32)
            amap = (255.0 - image.mean(axis=3)) / 255.0
            if "class_id" in self.engine.tensors:
                amap = amap + np.float32(0.5) * self._array("class_id")[:, None, None]
            self._array("anomaly_map")[:] = amap
            self._array("map_max")[:] = amap.max(axis=(1, 2))
            self._array("cls_score")[:] = amap.mean(axis=(1, 2))
            return True

    class Engine:
        def __init__(self, spec):
            self.tensors = {t["name"]: t for t in spec["tensors"]}
            self.order = [t["name"] for t in spec["tensors"]]
            self.profile = {k: [tuple(s) for s in v] for k, v in spec["profile"].items()}
            self.num_io_tensors = len(self.order)

        def get_tensor_name(self, i):
            return self.order[i]

        def get_tensor_mode(self, name):
            return self.tensors[name]["mode"]

        def get_tensor_dtype(self, name):
            return self.tensors[name]["dtype"]

        def get_tensor_shape(self, name):
            return tuple(self.tensors[name]["shape"])

        def get_tensor_profile_shape(self, name, index):
            assert index == 0
            return self.profile[name]

        def create_execution_context(self):
            trt.context = Context(self)
            return trt.context

    class Runtime:
        def __init__(self, logger):
            self.logger = logger

        def deserialize_cuda_engine(self, data):
            try:
                return Engine(json.loads(data))
            except ValueError:
                return None

    trt.Logger, trt.Runtime, trt.TensorIOMode, trt.DataType = Logger, Runtime, TensorIOMode, DataType
    trt.nptype = lambda dt: np_types[dt]
    return trt


def write_fake_engine(path, max_batch=4, multi_class=False, size=64):
    tensors = [{"name": "image", "mode": "INPUT", "dtype": "UINT8", "shape": [-1, size, size, 3]}]
    profile = {"image": [[1, size, size, 3], [1, size, size, 3], [max_batch, size, size, 3]]}
    if multi_class:
        tensors.append({"name": "class_id", "mode": "INPUT", "dtype": "INT64", "shape": [-1]})
        profile["class_id"] = [[1], [1], [max_batch]]
    tensors += [{"name": "anomaly_map", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1, size, size]},
                {"name": "map_max", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1]},
                {"name": "cls_score", "mode": "OUTPUT", "dtype": "FLOAT", "shape": [-1]}]
    path.write_text(json.dumps({"tensors": tensors, "profile": profile}))
    return path


def engine_artifact(tmp_path, flavour="tensorrt", version="10.3.0", cc="8.7", multi_class=False):
    art = write_fake_engine(tmp_path / "model.engine", multi_class=multi_class)
    info = {"flavour": flavour, "version": version, "gpu_name": "Orin", "compute_capability": cc}
    classes = ("bottle", "cable") if multi_class else ("bottle",)
    write_manifest(art, manifest_dict(art, tensorrt=info, batch={"min": 1, "opt": 1, "max": 4},
                                      classes=classes, multi_class=multi_class))
    return art


def darkness(images):
    amap = (255.0 - images.astype(np.float32).mean(axis=3)) / 255.0
    return amap, amap.max(axis=(1, 2)), amap.mean(axis=(1, 2))


def test_buffers_preallocated_for_profile_max_and_bound_once(tmp_path):
    cuda = FakeCuda()
    trt = fake_tensorrt(cuda)
    runner = TensorRTRunner(write_fake_engine(tmp_path / "m.engine"), trt=trt, cuda=cuda)
    with runner:
        assert runner.max_batch == 4  # from get_tensor_profile_shape
        assert runner.input_names == ("image",)
        assert runner.output_names == ("anomaly_map", "map_max", "cls_score")
        assert runner.host["image"].shape == (4, 64, 64, 3) and runner.host["image"].dtype == np.uint8
        assert runner.host["anomaly_map"].shape == (4, 64, 64) and runner.host["map_max"].shape == (4,)
        assert {n: cuda.mem[p].size for n, p in runner.device.items()} == {
            "image": 4 * 64 * 64 * 3, "anomaly_map": 4 * 64 * 64 * 4, "map_max": 16, "cls_score": 16}
        bound = [c for c in trt.calls if c[0] == "set_tensor_address"]
        assert sorted((n, p) for _, n, p in bound) == sorted(runner.device.items())
        trt.calls.clear()

        images = np.stack([frame_image(i == 1, (64, 64), seed=i) for i in range(3)])
        out = runner.infer({"image": images})
        amap, mmax, cls = darkness(images)
        assert out["anomaly_map"].shape == (3, 64, 64)
        np.testing.assert_allclose(out["anomaly_map"], amap, rtol=1e-6)
        np.testing.assert_allclose(out["map_max"], mmax, rtol=1e-6)
        np.testing.assert_allclose(out["cls_score"], cls, rtol=1e-6)
        assert out["map_max"][1] == pytest.approx(1.0) and out["map_max"][0] < CLEAN_LEVEL + 1e-6
        assert ("set_input_shape", "image", (3, 64, 64, 3)) in trt.calls
        assert not [c for c in trt.calls if c[0] == "set_tensor_address"]  # addresses never rebound
        assert ("htod", runner.device["image"], 3 * 64 * 64 * 3) in cuda.copies  # only the live batch

        # Same batch again: no new set_input_shape; decisions only: maps are not copied back.
        trt.calls.clear()
        cuda.copies.clear()
        out = runner.infer({"image": images}, outputs=("map_max", "cls_score"))
        assert set(out) == {"map_max", "cls_score"}
        assert not [c for c in trt.calls if c[0] == "set_input_shape"]
        assert [c[1] for c in cuda.copies if c[0] == "dtoh"] == [runner.device["map_max"], runner.device["cls_score"]]

        out = runner.infer({"image": images[:1]})
        assert ("set_input_shape", "image", (1, 64, 64, 3)) in trt.calls and out["map_max"].shape == (1,)

        with pytest.raises(ValueError, match=r"the engine takes uint8 \(1..4, 64, 64, 3\)"):
            runner.infer({"image": np.zeros((5, 64, 64, 3), np.uint8)})
        with pytest.raises(ValueError, match="got float32"):
            runner.infer({"image": np.zeros((1, 64, 64, 3), np.float32)})
        with pytest.raises(ValueError, match="missing input"):
            runner.infer({})
        device = dict(runner.device)
    assert sorted(cuda.freed) == sorted(device.values()) and not runner.is_active


def test_open_runner_checks_version_and_gpu(tmp_path):
    cuda = FakeCuda(cc="8.7")
    m = load_manifest(engine_artifact(tmp_path))
    assert choose_backend(m).name == "tensorrt"
    with pytest.raises(UserError, match="is an engine artifact, which the onnxruntime backend does not run; use "
                                        "--backend tensorrt"):
        choose_backend(m, "onnxruntime")
    with pytest.raises(ArtifactError, match=r"built with tensorrt 10.3.0, this device has 10.5.1; rebuild it with: "
                                            r"aaclip-export runs/test/ckpt --format engine"):
        open_runner(m, "auto", RunnerOptions(extra={"trt_module": fake_tensorrt(cuda, "10.5.1"), "cuda": cuda}))
    with pytest.raises(ArtifactError, match="compute capability 8.7 .* this GPU is 8.6"):
        open_runner(m, "auto", RunnerOptions(extra={"trt_module": fake_tensorrt(cuda), "cuda": FakeCuda(cc="8.6")}))
    runner = open_runner(m, "auto", RunnerOptions(extra={"trt_module": fake_tensorrt(cuda), "cuda": cuda}))
    assert isinstance(runner, TensorRTRunner) and runner.max_batch == 4 and runner.flavour == "tensorrt"


def test_tensorrt_rtx_flavour_imports_its_module(tmp_path, monkeypatch):
    cuda = FakeCuda()
    m = load_manifest(engine_artifact(tmp_path, flavour="tensorrt-rtx", version="1.1.0", cc=None))
    monkeypatch.setitem(sys.modules, "tensorrt_rtx", fake_tensorrt(cuda, "1.1.0", name="tensorrt_rtx"))
    runner = open_runner(m, "tensorrt", RunnerOptions(extra={"cuda": cuda}))
    assert runner.flavour == "tensorrt-rtx" and runner._trt is sys.modules["tensorrt_rtx"]
    with runner:
        out = runner.infer({"image": np.full((2, 64, 64, 3), 255, np.uint8)})
    np.testing.assert_allclose(out["map_max"], [0.0, 0.0])


def test_missing_tensorrt_module_is_a_clear_error(tmp_path, monkeypatch):
    m = load_manifest(engine_artifact(tmp_path))
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails
    with pytest.raises(UserError, match=r"needs the Python module 'tensorrt'.*--backend onnxruntime"):
        open_runner(m, "auto", RunnerOptions(extra={"cuda": FakeCuda()}))


def test_camera_loop_on_fake_engine_feeds_class_ids(tmp_path):
    """The loop with the TensorRT runner: multi-class batch of two cameras, class_id fed per camera."""
    cuda = FakeCuda()
    trt = fake_tensorrt(cuda)
    m = load_manifest(engine_artifact(tmp_path, multi_class=True))
    video = write_video(tmp_path / "v.avi", 4, defect_frames=[2])
    sources = [open_source(str(video)), open_source(str(video))]
    with open_runner(m, "tensorrt", RunnerOptions(extra={"trt_module": trt, "cuda": cuda})) as runner:
        loop = CameraLoop(runner, m, sources, [0, 1], LoopConfig(batch=2, drop=False, stats_every=0,
                                                                   backoff=Backoff(0.01, 0.01)))
        # frames are fitted straight into the engine's page-locked input buffers (no host copy in infer)
        assert np.shares_memory(loop.feeds.images, runner.host["image"])
        assert np.shares_memory(loop.feeds.class_ids, runner.host["class_id"])
        summary = loop.run()
    # Camera 0 (bottle, offset 0): only frame 2 anomalous; camera 1 (cable, offset 0.5): every frame.
    assert summary.frames == 8 and summary.anomalous == 1 + 4
    assert ("set_input_shape", "class_id", (2,)) in trt.calls
