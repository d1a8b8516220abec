"""TensorRT backend with the name-based TensorRT 10 API (also the TensorRT-RTX flavour, same API).

Buffers are page-locked host arrays and device buffers preallocated once for the profile's max batch,
bound by ``set_tensor_address`` once; every ``infer`` copies the live batch in, runs
``execute_async_v3`` on one stream and copies back only the requested outputs.
"""
from __future__ import annotations

import importlib
import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import TRT_FLAVOURS
from aaclip.contract.tensors import INPUT_NAME

from .base import Runner
from .cuda_memory import CudaMemory, default_cuda_memory

log = logging.getLogger(__name__)


def import_tensorrt(flavour: str = "tensorrt") -> Any:
    """The Python module of a TensorRT flavour (``tensorrt`` or ``tensorrt-rtx`` -> ``tensorrt_rtx``)."""
    if flavour not in TRT_FLAVOURS:
        raise UserError(f"unknown TensorRT flavour {flavour!r}; known: {', '.join(TRT_FLAVOURS)}")
    module = TRT_FLAVOURS[flavour]
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"this engine needs the Python module '{module}' ({flavour}), which is not installed; on Jetson it "
            "comes with JetPack (python3-libnvinfer), elsewhere pip install "
            f"{'tensorrt' if flavour == 'tensorrt' else 'tensorrt-rtx'}; or run the .onnx artifact with "
            "--backend onnxruntime"
        ) from None


class TensorRTRunner(Runner):
    """Runs a serialized engine. ``trt`` / ``cuda`` inject the TensorRT module and CUDA-memory adapter."""

    name = "tensorrt"

    def __init__(self, engine_path: str | Path, flavour: str = "tensorrt", max_batch: Optional[int] = None,
                 trt: Any = None, cuda: Optional[CudaMemory] = None, expected_hw: Optional[tuple[int, int]] = None):
        super().__init__()
        self.expected_hw = expected_hw
        self.engine_path = Path(engine_path)
        self.flavour = flavour
        self.max_batch = max_batch
        self._trt = trt
        self._cuda = cuda
        self._reset()

    def _reset(self) -> None:
        self._engine: Any = None
        self._context: Any = None
        self._runtime: Any = None
        self._stream: Optional[int] = None
        self.host: dict[str, np.ndarray] = {}
        self.device: dict[str, int] = {}
        self._dynamic: dict[str, bool] = {}
        self._input_shapes: dict[str, tuple[int, ...]] = {}

    # --- set-up -----------------------------------------------------------------------------------
    def activate_impl(self) -> None:
        trt = self._trt = self._trt or import_tensorrt(self.flavour)
        cuda = self._cuda = self._cuda or default_cuda_memory()
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = self._runtime.deserialize_cuda_engine(self.engine_path.read_bytes())
        if engine is None:
            raise UserError(f"{self.flavour} could not deserialize {self.engine_path} (see its log above); "
                            "the engine is corrupt or was built by another version")
        self._engine = engine
        self._context = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.input_names = tuple(n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT)
        self.output_names = tuple(n for n in names if n not in self.input_names)
        if INPUT_NAME in self.input_names:
            self.check_input_size(tuple(engine.get_tensor_shape(INPUT_NAME)), self.expected_hw)
        if self.max_batch is None:
            self.max_batch = self._profile_max_batch()

        # Set every input to its largest shape, then ask the context for the output shapes.
        for name in self.input_names:
            shape = tuple(engine.get_tensor_shape(name))
            self._dynamic[name] = shape[0] == -1
            full = (self.max_batch,) + shape[1:] if shape[0] == -1 else shape
            if any(d < 0 for d in full[1:]):
                raise UserError(f"engine input {name} has dynamic non-batch dims {shape}; the graph contract "
                                "fixes the spatial size")
            self._set_input_shape(name, full)
        for name in names:
            shape = tuple(self._context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise RuntimeError(f"engine output {name} has unresolved shape {shape} at max batch")
            dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
            self.host[name] = cuda.host_empty(shape, dtype)
            self.device[name] = cuda.device_alloc(self.host[name].nbytes)
            if not self._context.set_tensor_address(name, self.device[name]):
                raise RuntimeError(f"set_tensor_address failed for {name}")
        self._stream = cuda.create_stream()
        log.info("%s %s: engine %s, max batch %d", self.flavour, getattr(trt, "__version__", "?"),
                 self.engine_path.name, self.max_batch)

    def _profile_max_batch(self) -> int:
        name = self.input_names[0]
        shape = tuple(self._engine.get_tensor_shape(name))
        if shape[0] != -1:
            return int(shape[0])
        _min, _opt, max_shape = self._engine.get_tensor_profile_shape(name, 0)
        return int(tuple(max_shape)[0])

    def _set_input_shape(self, name: str, shape: tuple[int, ...]) -> None:
        if self._input_shapes.get(name) == shape:
            return
        if not self._context.set_input_shape(name, shape):
            raise ValueError(f"{self.flavour} refused input shape {shape} for {name} (outside the engine profile)")
        self._input_shapes[name] = shape

    def lend_input(self, name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """The page-locked host buffer of input ``name`` (a frame written there is copied to the device
        without another host copy); a new array when the request does not fit it."""
        host = self.host.get(name)
        if host is not None and host.dtype == np.dtype(dtype) and tuple(shape[1:]) == host.shape[1:] \
                and shape[0] <= host.shape[0]:
            return host[: shape[0]]
        return super().lend_input(name, shape, dtype)

    # --- inference --------------------------------------------------------------------------------
    def infer_impl(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        cuda, stream = self._cuda, self._stream
        for name in self.input_names:
            array = feeds[name]
            host = self.host[name]
            batch = array.shape[0] if self._dynamic[name] else host.shape[0]
            if array.dtype != host.dtype or array.shape[1:] != host.shape[1:] or not 1 <= batch <= host.shape[0]:
                raise ValueError(
                    f"input {name}: got {array.dtype} {array.shape}, the engine takes {host.dtype} "
                    f"(1..{host.shape[0]}, {', '.join(map(str, host.shape[1:]))})")
            self._set_input_shape(name, (batch,) + host.shape[1:])
            view = host[:batch]
            if array.__array_interface__["data"][0] != view.__array_interface__["data"][0]:
                np.copyto(view, array)
            cuda.htod_async(self.device[name], view, stream)
        if not self._context.execute_async_v3(stream):
            raise RuntimeError(f"{self.flavour} execute_async_v3 failed")
        result = {}
        for name in outputs:
            shape = tuple(self._context.get_tensor_shape(name))
            view = self.host[name][: shape[0]] if shape != self.host[name].shape else self.host[name]
            cuda.dtoh_async(view, self.device[name], stream)
            result[name] = view
        cuda.synchronize(stream)
        return result

    def deactivate_impl(self) -> None:
        cuda = self._cuda
        try:
            for ptr in self.device.values():
                cuda.device_free(ptr)
            for array in self.host.values():
                cuda.free_host(array)
            if self._stream is not None:
                cuda.destroy_stream(self._stream)
        finally:
            self._reset()
