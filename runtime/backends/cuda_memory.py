"""A tiny CUDA-memory adapter so the TensorRT backend runs on pycuda or, where it is absent, cuda-python.

Only what the backend needs: page-locked host arrays, device buffers (as integer pointers), one stream,
async copies, and the GPU's compute capability. Tests inject a numpy-backed fake with the same methods.
"""
from __future__ import annotations

import ctypes
from abc import ABC, abstractmethod
from typing import Any

import numpy as np
from aaclip.contract.errors import UserError


class CudaMemory(ABC):
    """Minimal CUDA memory API used by ``TensorRTRunner``; pointers and streams are plain ints."""

    @abstractmethod
    def host_empty(self, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A page-locked host array."""

    @abstractmethod
    def free_host(self, array: np.ndarray) -> None: ...

    @abstractmethod
    def device_alloc(self, nbytes: int) -> int: ...

    @abstractmethod
    def device_free(self, ptr: int) -> None: ...

    @abstractmethod
    def create_stream(self) -> int: ...

    @abstractmethod
    def destroy_stream(self, stream: int) -> None: ...

    @abstractmethod
    def htod_async(self, dst: int, src: np.ndarray, stream: int) -> None: ...

    @abstractmethod
    def dtoh_async(self, dst: np.ndarray, src: int, stream: int) -> None: ...

    @abstractmethod
    def synchronize(self, stream: int) -> None: ...

    @abstractmethod
    def compute_capability(self) -> str:
        """E.g. ``"8.7"`` (Jetson Orin)."""

    @abstractmethod
    def device_name(self) -> str: ...


class PycudaMemory(CudaMemory):
    """pycuda with ``pycuda.autoinit`` (a context on GPU 0, current in the thread that imports it)."""

    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401  (creates the context)
        import pycuda.driver as cuda
        self._cuda = cuda
        self._device = pycuda.autoinit.device
        self._allocs: dict[int, Any] = {}
        self._streams: dict[int, Any] = {}

    def host_empty(self, shape, dtype):
        return self._cuda.pagelocked_empty(tuple(shape), np.dtype(dtype))

    def free_host(self, array):
        base = array.base if array.base is not None else array
        free = getattr(base, "free", None)
        if free is not None:
            free()

    def device_alloc(self, nbytes):
        alloc = self._cuda.mem_alloc(max(int(nbytes), 1))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def device_free(self, ptr):
        alloc = self._allocs.pop(ptr, None)
        if alloc is not None:
            alloc.free()

    def create_stream(self):
        stream = self._cuda.Stream()
        self._streams[int(stream.handle)] = stream
        return int(stream.handle)

    def destroy_stream(self, stream):
        self._streams.pop(stream, None)

    def htod_async(self, dst, src, stream):
        self._cuda.memcpy_htod_async(dst, src, self._streams[stream])

    def dtoh_async(self, dst, src, stream):
        self._cuda.memcpy_dtoh_async(dst, src, self._streams[stream])

    def synchronize(self, stream):
        self._streams[stream].synchronize()

    def compute_capability(self):
        major, minor = self._device.compute_capability()
        return f"{major}.{minor}"

    def device_name(self):
        return str(self._device.name())


def _import_cudart() -> Any:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:
        from cuda import cudart  # older cuda-python
    return cudart


class CudaPythonMemory(CudaMemory):
    """NVIDIA's cuda-python runtime bindings (``cuda.bindings.runtime`` or ``cuda.cudart``)."""

    def __init__(self) -> None:
        self._rt = _import_cudart()
        self._check(self._rt.cudaSetDevice(0))
        self._streams: dict[int, Any] = {}

    def _check(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            _, msg = self._rt.cudaGetErrorString(err)
            raise RuntimeError(f"CUDA error {int(err)}: {msg.decode() if isinstance(msg, bytes) else msg}")
        return rest[0] if len(rest) == 1 else rest

    def host_empty(self, shape, dtype):
        dtype = np.dtype(dtype)
        count = int(np.prod(shape))
        nbytes = max(count * dtype.itemsize, 1)
        ptr = int(self._check(self._rt.cudaMallocHost(nbytes)))
        raw = (ctypes.c_ubyte * nbytes).from_address(ptr)
        return np.frombuffer(raw, dtype=dtype, count=count).reshape(shape)

    def free_host(self, array):
        self._check(self._rt.cudaFreeHost(array.ctypes.data))

    def device_alloc(self, nbytes):
        return int(self._check(self._rt.cudaMalloc(max(int(nbytes), 1))))

    def device_free(self, ptr):
        self._check(self._rt.cudaFree(ptr))

    def create_stream(self):
        stream = self._check(self._rt.cudaStreamCreate())
        self._streams[int(stream)] = stream
        return int(stream)

    def destroy_stream(self, stream):
        obj = self._streams.pop(stream, None)
        if obj is not None:
            self._check(self._rt.cudaStreamDestroy(obj))

    def htod_async(self, dst, src, stream):
        self._check(self._rt.cudaMemcpyAsync(dst, src.ctypes.data, src.nbytes,
                                             self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice, self._streams[stream]))

    def dtoh_async(self, dst, src, stream):
        self._check(self._rt.cudaMemcpyAsync(dst.ctypes.data, src, dst.nbytes,
                                             self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost, self._streams[stream]))

    def synchronize(self, stream):
        self._check(self._rt.cudaStreamSynchronize(self._streams[stream]))

    def _props(self) -> Any:
        return self._check(self._rt.cudaGetDeviceProperties(0))

    def compute_capability(self):
        p = self._props()
        return f"{p.major}.{p.minor}"

    def device_name(self):
        name = self._props().name
        return name.decode(errors="replace").rstrip("\x00") if isinstance(name, bytes) else str(name)


def default_cuda_memory() -> CudaMemory:
    """pycuda if installed, else cuda-python; a clear error when neither is."""
    try:
        return PycudaMemory()
    except ImportError:
        pass
    try:
        return CudaPythonMemory()
    except ImportError:
        raise UserError(
            "the TensorRT backend needs pycuda or cuda-python: pip install pycuda (or pip install cuda-python); "
            "or run the .onnx artifact with --backend onnxruntime"
        ) from None
