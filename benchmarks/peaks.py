"""Peak arithmetic throughput of known devices, to state achieved FLOP/s as a fraction of peak.

Dense (no structured sparsity) peaks in TFLOP/s (TOPS for int8), per precision: ``fp16``/``bf16`` and
``int8`` on tensor cores, ``fp32`` on CUDA cores (no TF32). Every entry names its source; a derived value
says how it was derived. A device not in the table has an unknown peak (the fraction is then left
empty) unless ``--peak-tflops`` gives one. A CPU's peak is unknown too: ``cpu_peak`` gives a nominal
estimate from /proc/cpuinfo for the environment record, not for the fraction.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


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


def device_peak(device: str, device_name: str, precision: str, override_tflops: Optional[float] = None,
                cpu_estimate: bool = False) -> Optional[Peak]:
    """Peak for a row: ``override_tflops`` if given, else the GPU table; a CPU's peak is unknown (None)
    unless ``cpu_estimate`` asks for the nominal estimate."""
    if override_tflops:
        return Peak(float(override_tflops), "given with --peak-tflops")
    if device == "cpu":
        return cpu_peak(precision) if cpu_estimate else None
    jetson = jetson_model() or ""
    return gpu_peak(jetson if "jetson" in jetson.lower() else device_name, precision)


__all__ = ["Peak", "GPU_PEAKS", "gpu_peak", "cpu_info", "cpu_peak", "device_peak", "jetson_model"]
