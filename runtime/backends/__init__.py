"""Backends: one small runner interface (activate / infer / deactivate) shared by TensorRT and ONNX Runtime.

``make_runner`` picks the backend for an artifact (``auto``: TensorRT for engines, ONNX Runtime for
``.onnx``) and, for engines, refuses one built for another TensorRT version or GPU before loading it.
"""
from __future__ import annotations

from typing import Any, Optional

from aaclip.contract.errors import UserError
from aaclip.contract.manifest import ENGINE_SUFFIXES, Manifest, check_engine_compat

from .base import Runner

BACKENDS = ("auto", "tensorrt", "onnxruntime")


def choose_backend(manifest: Manifest, backend: str = "auto") -> str:
    """``auto`` -> ``tensorrt`` for engines, ``onnxruntime`` for ONNX graphs; checks an explicit choice."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    is_onnx = manifest.artifact_path.suffix.lower() == ".onnx" or manifest.artifact_format == "onnx"
    is_engine = manifest.artifact_path.suffix.lower() in ENGINE_SUFFIXES or manifest.tensorrt is not None
    if backend == "auto":
        if is_engine:
            return "tensorrt"
        if is_onnx:
            return "onnxruntime"
        raise UserError(f"cannot tell the backend for {manifest.artifact_path.name} (format "
                        f"{manifest.artifact_format!r}); pass --backend tensorrt or --backend onnxruntime")
    if backend == "onnxruntime" and is_engine:
        raise UserError(f"{manifest.artifact_path.name} is a TensorRT engine; use --backend tensorrt (or auto), "
                        "or run the .onnx artifact with onnxruntime")
    if backend == "tensorrt" and not is_engine:
        raise UserError(f"{manifest.artifact_path.name} is not a TensorRT engine; build one with aaclip-export "
                        "--format engine, or use --backend onnxruntime")
    return backend


def make_runner(manifest: Manifest, backend: str = "auto", *, trt_module: Any = None,
                cuda: Any = None, providers: Optional[list[str]] = None) -> Runner:
    """The runner for ``manifest``'s artifact (not yet activated). ``trt_module``/``cuda`` are for tests."""
    kind = choose_backend(manifest, backend)
    if kind == "onnxruntime":
        from .onnxruntime import OnnxRuntimeRunner
        return OnnxRuntimeRunner(manifest.artifact_path, providers=providers)
    from .cuda_memory import default_cuda_memory
    from .tensorrt import TensorRTRunner, import_tensorrt
    flavour = (manifest.tensorrt or {}).get("flavour", "tensorrt")
    trt = trt_module or import_tensorrt(flavour)
    cuda = cuda or default_cuda_memory()
    check_engine_compat(manifest, flavour, getattr(trt, "__version__", ""), cuda.compute_capability())
    return TensorRTRunner(manifest.artifact_path, flavour=flavour, max_batch=manifest.batch_max, trt=trt, cuda=cuda)


__all__ = ["BACKENDS", "Runner", "choose_backend", "make_runner"]
