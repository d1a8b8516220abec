"""Which rows a benchmark has (backend x device x precision x batch), why a row is skipped, and the
labels the report uses.

Backends as the CLI names them: ``torch`` (PyTorch eager, the registry's ``pytorch`` reference runner:
host-side pre-processing, then the checkpoint's ``predict`` on normalized tensors), ``onnxruntime`` (the exported
graph; CPU, and CUDA when the CUDA execution provider exists), ``openvino`` (the same graph on the CPU:
FP32, mixed BF16 where the CPU has BF16, the INT8 graph), ``tensorrt`` (an engine on a GPU) and
``triton`` (the graph served by Triton Inference Server, rows per number of concurrent clients: ``served``).
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Optional, Sequence

from aaclip.contract.errors import UserError

DEFAULT_BACKENDS = ("torch", "onnxruntime", "openvino", "tensorrt")
BACKENDS = DEFAULT_BACKENDS + ("triton",)
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
BACKEND_LABELS = {"torch": "PyTorch eager", "onnxruntime": "ONNX Runtime", "openvino": "OpenVINO",
                  "tensorrt": "TensorRT", "triton": "Triton (aaclip-serve)"}


@dataclass(frozen=True)
class RowSpec:
    backend: str
    device: str  # "cpu" | "cuda"
    precision: str
    batch: int
    clients: int = 0  # served rows: concurrent clients (one frame per request each)

    @property
    def key(self) -> str:
        if self.clients:
            return f"{self.backend}/{self.device}/{self.precision}/c{self.clients}"
        return f"{self.backend}/{self.device}/{self.precision}/b{self.batch}"


@dataclass(frozen=True)
class Capabilities:
    """What this machine offers (filled by ``detect_capabilities``; tests build their own)."""

    cuda: bool
    ort_providers: tuple[str, ...]
    tensorrt: bool
    int8_graph: bool
    engines: tuple[str, ...] = ()  # precisions of the TensorRT engines given with --engine
    openvino: tuple[str, ...] = ()  # OpenVINO CPU optimization capabilities ("FP32", "BF16", "INT8"); () = none


def detect_capabilities(int8_graph: bool, engine_precisions: Sequence[str] = ()) -> Capabilities:
    try:
        import torch

        cuda = bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        cuda = False
    try:
        import onnxruntime

        providers = tuple(onnxruntime.get_available_providers())
    except Exception:  # noqa: BLE001
        providers = ()
    trt = any(importlib.util.find_spec(m) is not None for m in ("tensorrt", "tensorrt_rtx"))
    try:
        import openvino

        ov_caps = tuple(openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))
    except Exception:  # noqa: BLE001 - not installed or no CPU plugin
        ov_caps = ()
    return Capabilities(cuda, providers, trt, int8_graph, tuple(engine_precisions), ov_caps)


def parse_list(text: str, allowed: Sequence[str], option: str) -> list[str]:
    """``"a,b"`` -> ["a", "b"], each checked against ``allowed`` (a UserError naming the option)."""
    items = [t.strip().lower() for t in str(text).split(",") if t.strip()]
    bad = [t for t in items if t not in allowed]
    if bad or not items:
        raise UserError(f"{option} {text!r}: use a comma-separated list of {', '.join(allowed)}")
    return list(dict.fromkeys(items))


def parse_batches(text: str, option: str = "--batches") -> list[int]:
    try:
        values = [int(t) for t in str(text).split(",") if t.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"{option} {text!r}: use positive integers separated by commas, e.g. 1,2,4")
    return sorted(set(values))


def row_devices(backend: str, precision: str, caps: Capabilities) -> list[str]:
    """Devices a backend's rows run on: PyTorch FP32 on the GPU when there is one (else the CPU) and
    reduced precision on the GPU only; ONNX Runtime on the CPU and CUDA; OpenVINO on the CPU; TensorRT on CUDA.
    Served rows (``triton``) are not batch rows: ``served`` makes them per number of clients."""
    if backend == "triton":
        return []
    if backend == "torch":
        return ["cuda"] if precision != "fp32" or caps.cuda else ["cpu"]
    if backend == "onnxruntime":
        return ["cpu", "cuda"]
    if backend == "openvino":
        return ["cpu"]
    return ["cuda"]


def expand_rows(backends: Sequence[str], precisions: Sequence[str], batches: Sequence[int],
                caps: Capabilities) -> list[RowSpec]:
    """Every configured row, in report order (skipped ones included)."""
    return [RowSpec(backend, device, precision, b)
            for backend in backends for precision in precisions
            for device in row_devices(backend, precision, caps) for b in batches]


def skip_reason(spec: RowSpec, caps: Capabilities) -> Optional[str]:
    """Why ``spec`` cannot run here (None: it can)."""
    b, p = spec.backend, spec.precision
    if b == "torch":
        if p == "int8":
            return "PyTorch eager has no INT8 path here; see the onnxruntime/tensorrt int8 rows"
        if spec.device == "cuda" and not caps.cuda:
            return f"no CUDA device (PyTorch {p.upper()} rows run on a GPU only)"
        return None
    if b == "onnxruntime":
        if p == "bf16":
            return "no BF16 artifact: aaclip-export writes fp32 and fp16 graphs"
        if p == "int8" and not caps.int8_graph:
            return "no INT8 graph given: pass --int8 PATH (a QDQ graph from aaclip-calibrate int8)"
        if spec.device == "cuda" and "CUDAExecutionProvider" not in caps.ort_providers:
            return "onnxruntime has no CUDAExecutionProvider here (install onnxruntime-gpu on a GPU machine)"
        return None
    if b == "openvino":
        if not caps.openvino:
            return "OpenVINO is not installed (pip install openvino)"
        if p == "fp16":
            return ("OpenVINO on a CPU runs fp32, bf16 (mixed, from the FP32 graph) and int8 graphs; "
                    "FP16 graphs are for GPUs")
        if p == "bf16" and "BF16" not in caps.openvino:
            return "this CPU has no BF16 (OpenVINO capabilities: " + ", ".join(caps.openvino) + ")"
        if p == "int8" and not caps.int8_graph:
            return "no INT8 graph given: pass --int8 PATH (a QDQ graph from aaclip-calibrate int8)"
        return None
    if not caps.cuda:
        return "no NVIDIA GPU visible: TensorRT engines run on a GPU (run aaclip-bench on the device)"
    if not caps.tensorrt:
        return "TensorRT is not installed (JetPack's python3-libnvinfer, or pip install tensorrt-cu12)"
    if p == "bf16":
        return "no BF16 engine: engines are built from the fp32/fp16/int8 graphs"
    if p == "int8" and not caps.int8_graph and "int8" not in caps.engines:
        return "no INT8 graph or engine given: pass --int8 PATH or --engine PATH"
    return None


__all__ = ["BACKENDS", "DEFAULT_BACKENDS", "PRECISIONS", "BACKEND_LABELS", "RowSpec", "Capabilities", "detect_capabilities",
           "parse_list", "parse_batches", "row_devices", "expand_rows", "skip_reason"]
