"""Peak arithmetic throughput, to state achieved FLOP/s as a fraction of peak.

GPUs: dense (no structured sparsity) datasheet peaks in TFLOP/s (TOPS for int8), per precision:
``fp16``/``bf16`` and ``int8`` on tensor cores, ``fp32`` on CUDA cores (no TF32). Every entry names its
source; a derived value says how it was derived. A GPU not in the table has an unknown peak unless
``--peak-tflops`` gives one.

CPUs: **measured** once per benchmark run (``measure_cpu_peaks``): a short matrix-multiply probe of the
shape the model's MLP runs (M x K @ K x N = 1024 x 1024 @ 1024 x 4096, the best of a few repetitions) in
FP32 with numpy's BLAS and, where installed, OpenVINO's CPU plugin in FP32, BF16 (when the CPU has it) and
INT8 (FakeQuantize on both operands: VNNI/AMX integer kernels). The peak of a precision is the best rate any
probe reached on this machine, now: a rate the machine demonstrably delivers to a GEMM, not a datasheet
bound. ``cpu_peak`` keeps the nominal /proc/cpuinfo estimate for the environment record only.
"""
from __future__ import annotations

import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional


@dataclass(frozen=True)
class Peak:
    tflops: float
    source: str


_H100_SXM = "NVIDIA H100 Tensor Core GPU datasheet (SXM5; dense, i.e. half the 'with sparsity' figures)"
_ORIN = ("NVIDIA Jetson AGX Orin Series Technical Brief: GPU 2048 CUDA cores = 5.3 FP32 TFLOP/s and 64 tensor "
         "cores = 170 sparse INT8 TOPS (64GB module, max clocks); dense INT8 = 170 / 2, FP16 = INT8 / 2 (derived)")

# name pattern (lower case, matched against the device name) -> precision -> Peak
GPU_PEAKS: list[tuple[str, dict[str, Peak]]] = [
    ("h200", {"fp16": Peak(989.0, "NVIDIA H200 datasheet (dense)"), "bf16": Peak(989.0, "NVIDIA H200 datasheet (dense)"),
              "int8": Peak(1979.0, "NVIDIA H200 datasheet (dense)"), "fp32": Peak(67.0, "NVIDIA H200 datasheet")}),
    ("h100 pcie", {"fp16": Peak(756.0, "NVIDIA H100 datasheet (PCIe; dense)"),
                   "bf16": Peak(756.0, "NVIDIA H100 datasheet (PCIe; dense)"),
                   "int8": Peak(1513.0, "NVIDIA H100 datasheet (PCIe; dense)"),
                   "fp32": Peak(51.0, "NVIDIA H100 datasheet (PCIe)")}),
    ("h100", {"fp16": Peak(989.0, _H100_SXM), "bf16": Peak(989.0, _H100_SXM), "int8": Peak(1979.0, _H100_SXM),
              "fp32": Peak(67.0, _H100_SXM)}),
    ("a100", {"fp16": Peak(312.0, "NVIDIA A100 datasheet (dense)"), "bf16": Peak(312.0, "NVIDIA A100 datasheet (dense)"),
              "int8": Peak(624.0, "NVIDIA A100 datasheet (dense)"), "fp32": Peak(19.5, "NVIDIA A100 datasheet")}),
    ("agx orin", {"fp16": Peak(42.5, _ORIN), "bf16": Peak(42.5, _ORIN), "int8": Peak(85.0, _ORIN),
                  "fp32": Peak(5.3, _ORIN)}),
]


def jetson_model() -> Optional[str]:
    """The Jetson module name from the device tree ('NVIDIA Jetson AGX Orin Developer Kit'), else None."""
    path = Path("/proc/device-tree/model")
    try:
        return path.read_text(errors="replace").strip("\x00\n ") or None
    except OSError:
        return None


def gpu_peak(device_name: str, precision: str) -> Optional[Peak]:
    """Peak of a GPU by name (a Jetson's torch name is just 'Orin': pass the device-tree model)."""
    name = device_name.lower()
    for pattern, peaks in GPU_PEAKS:
        if pattern in name:
            return peaks.get(precision)
    return None


def cpu_info() -> dict:
    """CPU model name, logical cores, current MHz and SIMD flags, as far as /proc/cpuinfo shows them."""
    info = {"name": None, "logical_cores": os.cpu_count(), "mhz": None, "simd": None}
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return info
    for key, field, conv in (("model name", "name", str), ("cpu MHz", "mhz", float)):
        m = re.search(rf"^{key}\s*:\s*(.+)$", text, re.M)
        if m:
            try:
                info[field] = conv(m.group(1).strip())
            except ValueError:
                pass
    m = re.search(r"^flags\s*:\s*(.+)$", text, re.M)
    if m:
        flags = set(m.group(1).split())
        info["simd"] = "avx512" if "avx512f" in flags else "avx2+fma" if {"avx2", "fma"} <= flags else "other"
    return info


FP32_LANES = {"avx512": 16, "avx2+fma": 8}
FMA_PIPES_ASSUMED = 2


def cpu_peak(precision: str, info: Optional[dict] = None) -> Optional[Peak]:
    """Nominal FP32 CPU estimate: cores x MHz x (2 FMA pipes x SIMD lanes x 2); None when not readable.

    Not a bound either way: the FMA pipe count and whether 512-bit vectors run at full width are not
    readable, and in a VM /proc/cpuinfo shows the nominal clock, not the boost clock (on the benchmark VM
    ONNX Runtime measured above this estimate). So it is reported with the environment, and used for the
    fraction of peak only when asked (``--peak-tflops``, or ``cpu_estimate=True`` in ``device_peak``).
    """
    info = info or cpu_info()
    lanes = FP32_LANES.get(info.get("simd") or "")
    if precision != "fp32" or not lanes or not info.get("mhz") or not info.get("logical_cores"):
        return None
    per_cycle = FMA_PIPES_ASSUMED * lanes * 2
    tflops = info["logical_cores"] * info["mhz"] * 1e6 * per_cycle / 1e12
    return Peak(round(tflops, 3), f"nominal estimate: {info['logical_cores']} logical cores x {info['mhz']:.0f} MHz "
                                  f"x {per_cycle} FP32 FLOP/cycle ({info['simd']}, {FMA_PIPES_ASSUMED} FMA pipes "
                                  "assumed) from /proc/cpuinfo")


PROBE_SHAPE = (1024, 1024, 4096)  # M, K, N: one image's worth of a ViT MLP matmul (M tokens x width -> 4 x width)
PROBE_REPS = 5
PROBE_BURST = 4  # calls in a row per probe and sample (PeakProbe.sample)
CPU_PEAK_PRECISION = {"fp32": "fp32", "fp16": "fp32", "bf16": "bf16", "int8": "int8"}
"""Which measured peak a CPU row is held against: FP16 graphs run their matmuls in FP32 on CPUs (ONNX
Runtime's CPU provider casts around them), so fp16 rows use the FP32 peak."""

log = logging.getLogger(__name__)


def _numpy_probe(m: int, k: int, n: int) -> dict[str, Callable[[], object]]:
    import numpy as np

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((m, k), np.float32), rng.standard_normal((k, n), np.float32)
    return {"fp32": lambda: a @ b}


def _openvino_probe(m: int, k: int, n: int, threads: Optional[int]) -> dict[str, Callable[[], object]]:
    import numpy as np
    import openvino as ov
    from openvino import opset13 as ops

    core = ov.Core()
    caps = core.get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    rng = np.random.default_rng(0)
    weights = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    calls = {}
    for precision in ("fp32", "bf16", "int8"):
        if (precision == "bf16" and "BF16" not in caps) or (precision == "int8" and "INT8" not in caps):
            continue
        param = ops.parameter([m, k], np.float32, name="x")
        a, w = param.output(0), ops.constant(weights).output(0)
        if precision == "int8":  # symmetric per-tensor FakeQuantize on both operands: integer kernels
            lim = [ops.constant(np.float32(v)) for v in (-4.0, 4.0)]
            a = ops.fake_quantize(a, *lim, *lim, 256).output(0)
            wl = [ops.constant(np.float32(v)) for v in (-4.0, 4.0)]
            w = ops.fake_quantize(w, *wl, *wl, 255).output(0)
        model = ov.Model([ops.matmul(a, w, False, False)], [param], f"probe-{precision}")
        config = {"INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32", "PERFORMANCE_HINT": "LATENCY"}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        request = core.compile_model(model, "CPU", config).create_infer_request()
        calls[precision] = (lambda r: lambda: r.infer({0: x}))(request)
    return calls


def _onnxruntime_probe(m: int, k: int, n: int, threads: Optional[int]) -> dict[str, Callable[[], object]]:
    """ONNX Runtime's CPU provider on one MatMul: FP32, and the Q/DQ form ``aaclip-calibrate int8`` writes
    (symmetric INT8 activations and 7-bit per-channel weights), which ONNX Runtime runs with its integer kernels
    (on x86 without VNNI: u8 x s8 ``vpmaddubsw``, where OpenVINO's INT8 can be slower than its FP32)."""
    import numpy as np
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((k, n)).astype(np.float32)
    x = rng.standard_normal((m, k)).astype(np.float32)
    scale = (np.abs(w).max(axis=0) / 63.0).astype(np.float32)
    qw = np.clip(np.round(w / scale), -64, 63).astype(np.int8)
    graphs = {
        "fp32": ([helper.make_node("MatMul", ["x", "w"], ["y"])], [numpy_helper.from_array(w, "w")]),
        "int8": ([helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                  helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["wd"], axis=1),
                  helper.make_node("MatMul", ["xd", "wd"], ["y"])],
                 [numpy_helper.from_array(np.float32(4.0 / 127), "xs"), numpy_helper.from_array(np.int8(0), "xz"),
                  numpy_helper.from_array(qw, "wq"), numpy_helper.from_array(scale, "ws"),
                  numpy_helper.from_array(np.zeros(n, np.int8), "wz")]),
    }
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    calls = {}
    for precision, (nodes, inits) in graphs.items():
        graph = helper.make_graph(nodes, f"probe-{precision}", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                               [m, k])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [m, n])], inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        calls[precision] = (lambda sess: lambda: sess.run(None, {"x": x}))(session)
    return calls


class PeakProbe:
    """The CPU matmul probes, built once and sampled as often as wanted; each probe's best rate counts.

    A shared machine slows some samples down, never speeds one up beyond what the cores deliver, so the best
    sample over the whole run (``aaclip-bench`` samples once per timing round, interleaved with the rows) is the
    closest reading of the peak; a single probe at the start can land in a burst of load and make the rows
    look above 100% of "peak"."""

    def __init__(self, shape: tuple[int, int, int] = PROBE_SHAPE, threads: Optional[int] = None,
                 builders: Optional[dict] = None):
        m, k, n = shape
        self.shape = shape
        self.flops = 2.0 * m * k * n
        self.calls: dict[str, Callable[[], object]] = {}
        self.best: dict[str, float] = {}
        self.samples = 0
        self.seconds = 0.0
        builders = builders if builders is not None else {
            "numpy": lambda: _numpy_probe(m, k, n), "onnxruntime": lambda: _onnxruntime_probe(m, k, n, threads),
            "openvino": lambda: _openvino_probe(m, k, n, threads)}
        for name, build in builders.items():
            try:
                for precision, call in build().items():
                    call()  # warm-up (first-touch, kernel selection)
                    self.calls[f"{name} {precision}"] = call
            except Exception as exc:  # noqa: BLE001 - a missing library or device: that probe is left out
                log.info("matmul probe %s skipped: %s", name, exc)

    def sample(self, reps: int = 1) -> None:
        """Run every probe ``reps`` times, each time ``PROBE_BURST`` calls in a row; keep each one's best rate.

        In a row, because the library that ran just before (another probe, a benchmark row) leaves its thread
        pool spinning for a few milliseconds: on a 2-core machine the first call after a switch measured half the
        rate (ONNX Runtime FP32 0.08 instead of 0.19 TFLOP/s after numpy), the third the steady one."""
        t_start = time.perf_counter()
        for _ in range(reps):
            for key, call in self.calls.items():
                for _ in range(PROBE_BURST):
                    t0 = time.perf_counter()
                    call()
                    rate = self.flops / max(time.perf_counter() - t0, 1e-12) / 1e12
                    self.best[key] = max(self.best.get(key, 0.0), rate)
            self.samples += 1
        self.seconds += time.perf_counter() - t_start

    def result(self) -> dict:
        """``{"peaks": {precision: TFLOP/s}, "probes": {"numpy fp32": ...}, "shape", "reps", "seconds"}``."""
        peaks: dict[str, float] = {}
        for key, rate in self.best.items():
            precision = key.split()[-1]
            peaks[precision] = max(peaks.get(precision, 0.0), rate)
        return {"peaks": peaks, "probes": dict(self.best), "shape": list(self.shape), "reps": self.samples,
                "seconds": round(self.seconds, 2)}


def measure_cpu_peaks(shape: tuple[int, int, int] = PROBE_SHAPE, reps: int = PROBE_REPS,
                      threads: Optional[int] = None) -> dict:
    """Measured CPU matmul peaks: ``{"peaks": {precision: TFLOP/s}, "probes": {"numpy fp32": ..., ...},
    "shape": [M, K, N], "reps": samples, "seconds": probe time}``. Probes that cannot run are left out (logged)."""
    probe = PeakProbe(shape, threads)
    probe.sample(reps)
    return probe.result()


def speedup_bound(precision: str, measured: Optional[dict]) -> Optional[tuple[float, str]]:
    """The speed-up over FP32 a CPU row of ``precision`` could reach if every FLOP ran at its measured peak:
    peak(precision) / peak(fp32) (``CPU_PEAK_PRECISION``), with how it was derived; None when not measured."""
    if not measured:
        return None
    want = CPU_PEAK_PRECISION.get(precision, precision)
    peaks = measured.get("peaks") or {}
    if not peaks.get(want) or not peaks.get("fp32"):
        return None
    return peaks[want] / peaks["fp32"], (f"measured {want.upper()} peak {peaks[want]:.3g} / FP32 peak "
                                         f"{peaks['fp32']:.3g} TFLOP/s")


def measured_cpu_peak(precision: str, measured: Optional[dict]) -> Optional[Peak]:
    """The measured peak a CPU row of ``precision`` is compared with (``CPU_PEAK_PRECISION``)."""
    if not measured:
        return None
    want = CPU_PEAK_PRECISION.get(precision, precision)
    tflops = measured["peaks"].get(want)
    if not tflops:
        return None
    best = max((k for k in measured["probes"] if k.endswith(" " + want)), key=lambda k: measured["probes"][k])
    m, k, n = measured["shape"]
    return Peak(float(tflops), f"measured: best of {measured['reps']} {m}x{k}x{n} {want.upper()} matmuls "
                                  f"({best}) on this machine during this run (sampled once per timing round)")


def device_peak(device: str, device_name: str, precision: str, override_tflops: Optional[float] = None,
                cpu_estimate: bool = False, cpu_measured: Optional[dict] = None) -> Optional[Peak]:
    """Peak for a row: ``override_tflops`` if given, else a CPU's measured peak (``measure_cpu_peaks``; the
    nominal estimate only when ``cpu_estimate`` asks for it and nothing was measured), else the GPU table."""
    if override_tflops:
        return Peak(float(override_tflops), "given with --peak-tflops")
    if device == "cpu":
        peak = measured_cpu_peak(precision, cpu_measured)
        if peak is None and cpu_estimate:
            return cpu_peak(precision)
        return peak
    jetson = jetson_model() or ""
    return gpu_peak(jetson if "jetson" in jetson.lower() else device_name, precision)


__all__ = ["Peak", "GPU_PEAKS", "gpu_peak", "cpu_info", "cpu_peak", "device_peak", "jetson_model",
           "measure_cpu_peaks", "measured_cpu_peak", "PROBE_SHAPE", "CPU_PEAK_PRECISION", "PeakProbe", "speedup_bound"]
