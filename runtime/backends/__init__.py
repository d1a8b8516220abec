"""Backends: runners for artifacts (activate / infer / deactivate), obtained by name from one registry.

Registered here: ``onnxruntime`` (ONNX graphs; CUDA execution provider when present, else CPU),
``openvino`` (ONNX graphs on Intel CPUs, GPUs and NPUs; FP32, gated mixed BF16, INT8 graphs),
``tensorrt`` (engines, standard TensorRT or TensorRT-RTX; refuses one built for another TensorRT or GPU
before loading it) and ``triton`` (a model served by Triton Inference Server; never chosen by ``auto``:
``aaclip-runtime grpc://HOST:8001/MODEL`` picks it). See ``registry`` for ``open_runner`` and how other
packages add backends.
"""
from __future__ import annotations

import logging

from aaclip.contract.manifest import Manifest

from .base import Runner
from .machine import describe_machine, onnxruntime_has_cuda
from .registry import (
    AUTO,
    AUTO_RULE,
    Backend,
    RunnerOptions,
    backend_names,
    choose_backend,
    get_backend,
    module_installed,
    open_runner,
    register_backend,
    resolve_backend,
    warn_if_unverified,
)


def _onnxruntime(manifest: Manifest, options: RunnerOptions) -> Runner:
    from aaclip.contract.errors import UserError

    from . import onnxruntime as ortb
    from .onnxruntime import CPU_PROVIDERS, DEFAULT_PROVIDERS, OnnxRuntimeRunner

    if manifest.precision == "int8" and options.device != "cuda":
        risk = ortb.int8_saturation_risk(manifest.data.get("quantization"), ortb.cpu_flags())
        if risk:
            logging.getLogger(__name__).warning("%s", risk)
    if options.extra.get("precision") not in (None, manifest.precision):
        raise UserError(f"onnxruntime runs the artifact's own precision ({manifest.precision}); a precision hint "
                        "needs --backend openvino")

    providers = options.extra.get("providers") or (CPU_PROVIDERS if options.device == "cpu" else DEFAULT_PROVIDERS)
    if options.device == "cuda":
        providers = ("CUDAExecutionProvider",)
    return OnnxRuntimeRunner(manifest.artifact_path, providers=providers, intra_op_threads=options.threads,
                             expected_hw=(manifest.height, manifest.width))


def _tensorrt(manifest: Manifest, options: RunnerOptions) -> Runner:
    from aaclip.contract.manifest import check_engine_compat

    from .cuda_memory import default_cuda_memory
    from .tensorrt import TensorRTRunner, import_tensorrt

    flavour = (manifest.tensorrt or {}).get("flavour", "tensorrt")
    trt = options.extra.get("trt_module") or import_tensorrt(flavour)
    cuda = options.extra.get("cuda") or default_cuda_memory()
    check_engine_compat(manifest, flavour, getattr(trt, "__version__", ""), cuda.compute_capability())
    return TensorRTRunner(manifest.artifact_path, flavour=flavour, max_batch=manifest.batch_max, trt=trt, cuda=cuda,
                          expected_hw=(manifest.height, manifest.width))


register_backend(Backend(
    name="onnxruntime", formats=("onnx",), create=_onnxruntime, installed=module_installed("onnxruntime"),
    install_hint="pip install onnxruntime (onnxruntime-gpu on an x86 GPU machine)", auto_rank=50,
    description="ONNX Runtime: CUDA execution provider when present, else CPU"))


def _triton(manifest: Manifest, options: RunnerOptions) -> Runner:
    from .triton import make_triton_runner

    return make_triton_runner(manifest, options)


def _openvino(manifest: Manifest, options: RunnerOptions) -> Runner:
    from .openvino import OpenVinoRunner, settings_from_options

    return OpenVinoRunner(manifest.artifact_path, settings_from_options(manifest, options))


def _openvino_suits_auto() -> bool:
    """Auto picks OpenVINO for graphs on an Intel CPU, unless ONNX Runtime can use an NVIDIA GPU here."""
    from .machine import intel_cpu

    return intel_cpu() and not onnxruntime_has_cuda()


register_backend(Backend(
    name="openvino", formats=("onnx",), create=_openvino, installed=module_installed("openvino"),
    install_hint="pip install openvino", auto_rank=40, auto_when=_openvino_suits_auto,
    description="OpenVINO: Intel CPU (default), GPU or NPU; fp32, gated mixed bf16, INT8 graphs"))
register_backend(Backend(
    name="tensorrt", formats=("engine",), create=_tensorrt, installed=module_installed("tensorrt", "tensorrt_rtx"),
    install_hint="TensorRT comes with JetPack; elsewhere pip install tensorrt-cu12 or tensorrt-rtx-cu13", auto_rank=10,
    description="TensorRT engines (standard or TensorRT-RTX) with pycuda or cuda-python"))
register_backend(Backend(
    name="triton", formats=("onnx", "engine"), create=_triton, installed=module_installed("tritonclient"),
    install_hint="pip install 'aaclip-edge[triton]' (tritonclient[grpc,http])", auto_rank=1000,
    description="a model served by Triton Inference Server (grpc:// or http:// artifact), KServe v2"))

__all__ = ["AUTO", "AUTO_RULE", "Backend", "Runner", "RunnerOptions", "backend_names", "choose_backend",
           "describe_machine", "get_backend", "resolve_backend", "warn_if_unverified",
           "module_installed", "open_runner", "register_backend"]
