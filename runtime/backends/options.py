"""The command-line options that say how a backend runs, shared by every command that opens a runner
(``aaclip-runtime``, ``aaclip-calibrate``, ``aaclip-export --verify``), and their ``RunnerOptions``.

    --device       auto | cpu | cuda | an OpenVINO device (GPU, GPU.1, NPU)
    --threads      intra-op threads (ONNX Runtime, OpenVINO)
    --precision    fp32 | bf16   OpenVINO only; bf16 only after the accuracy gate (aaclip-calibrate bf16)
                   (was --precision-hint: still accepted with a warning, aaclip.contract.cli.RENAMED_OPTIONS)
    --perf-hint    latency | throughput   OpenVINO only
    --cache-dir    OpenVINO's model cache (default: ~/.cache/aaclip/openvino; "none": no cache)
"""
from __future__ import annotations

from typing import Optional

import click

from .registry import AUTO, AUTO_RULE, RunnerOptions, backend_names

PRECISION_HINTS = ("fp32", "bf16")
PERF_HINTS = ("latency", "throughput")


def backend_option(help_prefix: str = "", choices=None):
    """``--backend NAME`` of every command that runs an artifact; its help quotes the one ``auto`` rule."""
    return click.option("--backend", type=click.Choice(tuple(choices) if choices else backend_names()), default=AUTO,
                        show_default=True, help=f"{help_prefix}Backend that runs the artifact. {AUTO_RULE}; each "
                        "command logs what auto resolved to.")


def backend_options(f):
    """Add --device, --threads, --precision, --perf-hint and --cache-dir to a click command (the precision
    reaches the command as ``precision_hint``)."""
    for option in reversed([
        click.option("--device", default="auto", show_default=True, metavar="NAME",
                     help="auto, cpu, cuda, or an OpenVINO device: GPU, GPU.1, NPU (openvino: auto = CPU)."),
        click.option("--threads", type=click.IntRange(min=1), default=None,
                     help="Inference threads (onnxruntime intra-op, openvino INFERENCE_NUM_THREADS) "
                          "[default: the backend's]."),
        click.option("--precision", "precision_hint", type=click.Choice(PRECISION_HINTS), default=None,
                     help="(openvino) fp32, or bf16: transformer matmuls in BF16, the rest FP32; bf16 runs only "
                          "after passing the accuracy gate (aaclip-calibrate bf16) [default: fp32]."),
        click.option("--perf-hint", type=click.Choice(PERF_HINTS), default=None,
                     help="(openvino) latency: all cores on one batch; throughput: streams share a batch "
                          "[default: latency]."),
        click.option("--cache-dir", metavar="DIR", default=None,
                     help="(openvino) model cache for fast restarts [default: $XDG_CACHE_HOME/aaclip/openvino; "
                          "'none' disables it]."),
    ]):
        f = option(f)
    return f


def runner_options(device: str = "auto", threads: Optional[int] = None, precision_hint: Optional[str] = None,
                   perf_hint: Optional[str] = None, cache_dir: Optional[str] = None) -> RunnerOptions:
    """The ``RunnerOptions`` of the options above (backend-specific ones go into ``extra`` when given)."""
    extra = {k: v for k, v in (("precision", precision_hint), ("perf_hint", perf_hint), ("cache_dir", cache_dir))
             if v is not None}
    return RunnerOptions(device=device or "auto", threads=threads, extra=extra)


__all__ = ["backend_option", "backend_options", "runner_options", "PRECISION_HINTS", "PERF_HINTS"]
