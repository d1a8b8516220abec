"""ONNX Runtime backend: CUDA execution provider when present, else CPU."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from aaclip.contract.errors import UserError

from .base import Runner

log = logging.getLogger(__name__)

DEFAULT_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
CPU_PROVIDERS = ("CPUExecutionProvider",)


def import_onnxruntime() -> Any:
    try:
        import onnxruntime
    except ImportError:
        raise UserError(
            "the onnxruntime backend needs the onnxruntime package: pip install onnxruntime "
            "(onnxruntime-gpu on an x86 GPU machine; on Jetson the onnxruntime-gpu wheel for your JetPack)"
        ) from None
    return onnxruntime


VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where it is not readable)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_saturation_risk(quantization: Optional[Mapping], flags: set[str]) -> Optional[str]:
    """Why an INT8 graph may lose accuracy on this CPU (None: it will not): ONNX Runtime's integer kernels on an
    x86 CPU without VNNI add pairs of u8 x s8 products into int16 and saturate with 8-bit weights (graphs of
    ``aaclip-calibrate int8 --weight-bits 8``, or made before weight bits were recorded); 7-bit weights cannot."""
    if quantization is None or int(quantization.get("weight_bits", 8)) < 8:
        return None
    x86 = bool(flags & {"sse4_1", "avx2", "avx512f"})
    if not x86 or flags & set(VNNI_FLAGS):
        return None
    return ("this CPU has no VNNI and the INT8 graph has 8-bit weights: ONNX Runtime's integer kernels saturate "
            "here (the tiny model's map error went from 0.8% to 6.4% of its range); re-run aaclip-calibrate int8 "
            "(7-bit weights by default) on this graph's FP32 export, or run it on OpenVINO")


class OnnxRuntimeRunner(Runner):
    """Runs an ``.onnx`` artifact; ``providers`` overrides the preference order (CUDA, then CPU)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, providers: Optional[Sequence[str]] = None,
                 intra_op_threads: Optional[int] = None, expected_hw: Optional[tuple[int, int]] = None):
        super().__init__()
        self.path = Path(path)
        self.providers = tuple(providers or DEFAULT_PROVIDERS)
        self.intra_op_threads = intra_op_threads
        self.expected_hw = expected_hw
        self._session: Any = None

    def activate_impl(self) -> None:
        ort = import_onnxruntime()
        available = set(ort.get_available_providers())
        providers = [p for p in self.providers if p in available]
        if not providers:
            raise UserError(f"onnxruntime {ort.__version__} offers none of {', '.join(self.providers)} here "
                            f"(available: {', '.join(sorted(available))})")
        options = ort.SessionOptions()
        if self.intra_op_threads:
            options.intra_op_num_threads = self.intra_op_threads
        self._session = ort.InferenceSession(str(self.path), options, providers=providers)
        self.input_names = tuple(i.name for i in self._session.get_inputs())
        self.output_names = tuple(o.name for o in self._session.get_outputs())
        self.check_input_size(self._session.get_inputs()[0].shape, self.expected_hw)
        log.info("onnxruntime %s on %s", ort.__version__, ", ".join(self._session.get_providers()))

    def infer_impl(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        names = list(outputs)
        values = self._session.run(names, {n: feeds[n] for n in self.input_names})
        return dict(zip(names, values))

    def deactivate_impl(self) -> None:
        self._session = None
