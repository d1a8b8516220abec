"""What the numbers were measured on: host, CPU, GPU, driver, library versions and thread counts."""
from __future__ import annotations

import datetime as dt
import importlib
import os
import platform
import subprocess
from typing import Optional

from .peaks import cpu_info, cpu_peak, jetson_model

LIBRARIES = ("aaclip", "numpy", "torch", "open_clip", "onnx", "onnxruntime", "openvino", "cv2", "tensorrt",
             "tensorrt_rtx")


def library_versions() -> dict[str, Optional[str]]:
    """Version of each library in ``LIBRARIES`` (None when not installed)."""
    out: dict[str, Optional[str]] = {}
    for name in LIBRARIES:
        if name == "aaclip":
            try:
                from importlib.metadata import version

                out[name] = version("aaclip-edge")
            except Exception:  # noqa: BLE001 - not pip-installed (development checkout)
                out[name] = None
            continue
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - missing or broken optional library
            out[name] = None
            continue
        out[name] = str(getattr(module, "__version__", "unknown"))
    return out


def nvidia_driver() -> Optional[str]:
    """The NVIDIA driver version from nvidia-smi, else None."""
    try:
        result = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    line = result.stdout.strip().splitlines()
    return line[0].strip() if result.returncode == 0 and line else None


def gpu_environment() -> dict:
    """CUDA device facts through PyTorch (name, capability, memory, CUDA/cuDNN versions) and the driver."""
    info: dict = {"available": False, "name": None, "compute_capability": None, "memory_gb": None,
                  "cuda": None, "cudnn": None, "driver": None, "jetson_model": None}
    try:
        import torch

        info["cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            info.update(available=True, name=props.name, compute_capability=f"{props.major}.{props.minor}",
                        memory_gb=round(props.total_memory / 2**30, 1),
                        cudnn=str(torch.backends.cudnn.version()))
    except Exception:  # noqa: BLE001 - no torch / broken CUDA: no GPU facts
        pass
    if info["available"]:
        info["driver"] = nvidia_driver()
        model = jetson_model()
        info["jetson_model"] = model if model and "jetson" in model.lower() else None
    return info


def thread_settings() -> dict:
    """Thread counts that change CPU numbers: torch intra/inter-op, OMP/MKL env, ORT's (0 = its default)."""
    out: dict = {"omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                 "mkl_num_threads": os.environ.get("MKL_NUM_THREADS")}
    try:
        import torch

        out["torch_intra_op"] = torch.get_num_threads()
        out["torch_inter_op"] = torch.get_num_interop_threads()
    except Exception:  # noqa: BLE001
        pass
    out["onnxruntime_intra_op"] = "0 (onnxruntime default: one per physical core)"
    out["openvino_threads"] = "openvino default (LATENCY hint: one stream on all cores)"
    return out


def collect_environment() -> dict:
    """Everything above in one JSON-ready dict, plus the date (UTC) and the host."""
    cpu = cpu_info()
    nominal = cpu_peak("fp32", cpu)
    return {
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "host": platform.node(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": {"name": cpu["name"] or platform.processor() or None, "logical_cores": cpu["logical_cores"],
                "mhz": cpu["mhz"], "simd": cpu["simd"], "machine": platform.machine(),
                "nominal_fp32_tflops": nominal.tflops if nominal else None,
                "nominal_fp32_source": nominal.source if nominal else None},
        "gpu": gpu_environment(),
        "libraries": library_versions(),
        "threads": thread_settings(),
    }


def device_label(env: dict, device: str) -> str:
    """Human name of a row's device ('cpu' -> the CPU name, 'cuda' -> the GPU name)."""
    if device == "cpu":
        cpu = env.get("cpu", {})
        return f"{cpu.get('name') or 'CPU'} ({cpu.get('logical_cores')} threads)"
    gpu = env.get("gpu", {})
    return gpu.get("jetson_model") or gpu.get("name") or "CUDA GPU"


__all__ = ["collect_environment", "library_versions", "gpu_environment", "thread_settings", "device_label",
           "nvidia_driver"]
