"""What ``--backend auto`` looks at on this machine: the CPU vendor and whether ONNX Runtime sees a CUDA GPU.

``AACLIP_CPU_VENDOR`` (``GenuineIntel``, ``AuthenticAMD``, ...) replaces the vendor read from /proc/cpuinfo:
for a VM or container that hides or misreports it, and for the test suite, which runs the part that depends
on ``auto`` once as an Intel and once as an AMD machine would resolve it (tests/conftest.py).
"""
from __future__ import annotations

import importlib.util
import os
from typing import Optional

VENDOR_ENV = "AACLIP_CPU_VENDOR"
INTEL, AMD = "GenuineIntel", "AuthenticAMD"


def cpu_vendor() -> Optional[str]:
    """The CPU vendor id ($AACLIP_CPU_VENDOR, else /proc/cpuinfo's vendor_id); None when not known."""
    pinned = os.environ.get(VENDOR_ENV, "").strip()
    if pinned:
        return pinned
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def intel_cpu() -> bool:
    return cpu_vendor() == INTEL


def onnxruntime_has_cuda() -> bool:
    """ONNX Runtime is installed here with its CUDA execution provider."""
    if importlib.util.find_spec("onnxruntime") is None:
        return False
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def describe_machine() -> str:
    """The facts ``auto`` decided on, in words: 'Intel CPU (GenuineIntel), no CUDA execution provider'."""
    vendor = cpu_vendor()
    name = {INTEL: "Intel CPU", AMD: "AMD CPU"}.get(vendor or "", "CPU")
    pinned = f", pinned by ${VENDOR_ENV}" if os.environ.get(VENDOR_ENV, "").strip() else ""
    cuda = "CUDA execution provider" if onnxruntime_has_cuda() else "no CUDA execution provider"
    return f"{name} ({vendor or 'vendor unknown'}{pinned}), {cuda}"


__all__ = ["VENDOR_ENV", "INTEL", "AMD", "cpu_vendor", "intel_cpu", "onnxruntime_has_cuda", "describe_machine"]
