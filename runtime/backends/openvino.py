"""OpenVINO backend: the exported ONNX graph read directly (no conversion step), CPU by default.

Devices: ``CPU`` (default), and Intel ``GPU``/``GPU.N``/``NPU`` when OpenVINO sees them. Precision of the
floating-point work (``OpenVinoSettings.precision``):

- ``fp32``: everything in FP32. OpenVINO's CPU plugin otherwise defaults to BF16 on CPUs that have it,
  so the hint is always set explicitly.
- ``bf16`` (CPUs with AVX512-BF16 or AMX): **mixed precision**, the transformer's matrix products in BF16
  and everything else in FP32. The graph is cut where its tail begins (``split_model``): the head
  (feature normalization, anchor similarities, softmax, blur, resize, max) is compiled in FP32; the image
  tower under the BF16 hint, with every layer except the MatMul/Convolution nodes inside its modules
  (``/resblocks.N/attn|mlp/...``, ``/conv1/Conv``; not the adapters and projections, ``FP32_SCOPES``:
  ``transformer_matmul``) marked with OpenVINO's ``precise`` runtime attribute
  (``DisablePrecisionConversion``), which the CPU plugin honours: LayerNorm, the residual stream and GELU
  stay FP32. (Marks alone are not enough: the plugin's own transformations replace some head layers and
  drop their marks.) OpenVINO reads that attribute from IR only, so tower and head are written once as IR
  into the cache folder (a temporary one without a cache) and compiled from there.
  Allowed only behind the accuracy gate (``aaclip-calibrate bf16``): the manifest must record a passed
  gate for this artifact (``precision_gates``), see docs/calibration.md.
- INT8 graphs (``aaclip-calibrate int8``'s Q/DQ graph) run their quantized MatMuls in INT8 (OpenVINO's
  low-precision transformations turn Q/DQ pairs into integer kernels); the rest follows the precision
  above (fp32 by default).

``threads`` sets ``INFERENCE_NUM_THREADS``; ``perf_hint`` ``latency`` (one stream, all cores on one batch)
or ``throughput`` (several streams; a batch is split across them). OpenVINO's model cache (``CACHE_DIR``,
per artifact hash below ``cache_dir``) makes restarts fast: the second start loads the compiled blob.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import numpy as np
from aaclip.contract.errors import UserError

from .base import Runner
from .machine import cpu_vendor, intel_cpu  # re-exported: where they used to live

log = logging.getLogger(__name__)

PRECISIONS = ("fp32", "bf16")
PERF_HINTS = ("latency", "throughput")
HINT_TYPES = {"fp32": "f32", "bf16": "bf16"}
KEEP_ATTRIBUTE = '<attribute name="precise" version="0" value="dynamic:dynamic"/>'
"""OpenVINO's DisablePrecisionConversion runtime attribute as IR writes it: no precision conversion at all."""
LOW_PRECISION_TYPES = ("MatMul", "Convolution")
FP32_SCOPES = ("/seg_proj", "/det_proj", "/image_adapters")
"""Module scopes whose matrix products stay FP32 in every reduced precision (mixed BF16 here, INT8 in
``aaclip.calibration.int8``): AA-CLIP's adapters and its projections into the text-anchor space, which feed
the similarity head directly (a few percent of the FLOPs; keeping them FP32 took the INT8 map error of
ViT-L-14-336 from 3.7% to 2.8% of the range)."""
NO_MARK_TYPES = ("Parameter", "Result", "Const", "Constant")


def import_openvino() -> Any:
    try:
        import openvino
    except ImportError:
        raise UserError("the openvino backend needs the openvino package: pip install openvino "
                        "(or pip install 'aaclip-edge[openvino]')") from None
    return openvino


def default_cache_dir() -> Path:
    """``$AACLIP_CACHE/openvino``, else ``$XDG_CACHE_HOME/aaclip/openvino``, else ``~/.cache/aaclip/openvino``."""
    if os.environ.get("AACLIP_CACHE"):
        return Path(os.environ["AACLIP_CACHE"]) / "openvino"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "aaclip" / "openvino"


def transformer_matmul(op_type: str, name: str) -> bool:
    """A MatMul/Convolution inside a module scope of the exporter's naming (``/resblocks.3/mlp/c_fc/MatMul``,
    ``/resblocks.3/attn/MatMul_1``, ``/conv1/Conv``): the image tower's matrix products, attention's included
    (keeping attention's scores and values FP32 left the map error of ViT-L-14-336 at 518 px unchanged,
    1.61% of the range, and costs speed). Top-level nodes (``/MatMul_2``, ``/Conv_5``) are
    ``DeployGraph.forward``'s own code (input resize, anchor similarities, blur) and stay FP32, as do the
    adapters and projections (``FP32_SCOPES``)."""
    return (op_type in LOW_PRECISION_TYPES and name.strip("/").count("/") >= 1
            and not name.startswith(FP32_SCOPES))


def mark_ir(xml_text: str, fp32_nodes: frozenset = frozenset()) -> tuple[str, int, int]:
    """IR text with every layer but the transformer's matrix products marked ``precise`` (kept in its
    original precision), and those matrix products too whose names the precision plan keeps FP32
    (``fp32_nodes``, from ``aaclip-calibrate bf16``'s search); returns (text, layers marked, layers left to the
    precision hint)."""
    import xml.etree.ElementTree as ET

    root = ET.fromstring(xml_text)
    marked = low = 0
    for layer in root.iter("layer"):
        kind, name = layer.get("type", ""), layer.get("name", "")
        if kind in NO_MARK_TYPES:
            continue
        if transformer_matmul(kind, name) and name not in fp32_nodes:
            low += 1
            continue
        rt = layer.find("rt_info")
        if rt is None:
            rt = ET.SubElement(layer, "rt_info")
        if rt.find("attribute[@name='precise']") is None:
            rt.append(ET.fromstring(KEEP_ATTRIBUTE))
        marked += 1
    return ET.tostring(root, encoding="unicode"), marked, low


def plan_folder(fp32_nodes: frozenset) -> str:
    """The IR folder name of a precision plan: ``mixed`` (every transformer matmul BF16) or ``mixed-<hash>``."""
    if not fp32_nodes:
        return "mixed"
    import hashlib

    return "mixed-" + hashlib.sha256("\n".join(sorted(fp32_nodes)).encode()).hexdigest()[:12]


def bf16_capable(core=None, device: str = "CPU") -> bool:
    """Whether OpenVINO can run BF16 on ``device`` (CPUs: AVX512-BF16 or AMX). Elsewhere the CPU plugin
    silently compiles a BF16 hint as FP32, so this is asked before any BF16 run or gate."""
    core = core or import_openvino().Core()
    return "BF16" in core.get_property(device, "OPTIMIZATION_CAPABILITIES")


def scoped(node) -> bool:
    """A node of the exporter's module scopes (``/resblocks.3/...``) as opposed to ``DeployGraph.forward``'s code
    (results are named ``output/sink_port_0``: not a scope)."""
    return node.get_type_name() not in ("Result", "Parameter") and node.get_friendly_name().strip("/").count("/") >= 1


def tail_nodes(model) -> set[str]:
    """The graph's tail (unique node names): every non-constant node none of whose descendants lies in a
    module scope, i.e. the similarity head and post-processing after the image tower (normalization,
    anchor similarities, softmax, blur, resize, max)."""
    below: dict[str, bool] = {}  # node name -> has a scoped descendant
    tail = set()
    for op in reversed(model.get_ordered_ops()):
        hit = False
        for out in op.outputs():
            for target in out.get_target_inputs():
                node = target.get_node()
                hit = hit or scoped(node) or below.get(node.get_name(), False)
        below[op.get_name()] = hit
        if not hit and not scoped(op) and op.get_type_name() not in ("Constant", "Parameter", "Result"):
            tail.add(op.get_name())
    return tail


def split_model(model) -> tuple:
    """(tower, head): ``model`` cut where its tail begins; the tower's results are the head's parameters
    (the projected features, in order). Both share the original's nodes: ``model`` is consumed."""
    import openvino as ov

    tail = tail_nodes(model)
    boundary, seen = [], set()
    for op in model.get_ordered_ops():
        if op.get_name() not in tail:
            continue
        for inp in op.inputs():
            src = inp.get_source_output()
            node = src.get_node()
            key = (node.get_name(), src.get_index())
            if node.get_name() not in tail and node.get_type_name() != "Constant" and key not in seen:
                seen.add(key)
                boundary.append(src)
    results = [ov.opset13.result(src) for src in boundary]
    tower = ov.Model(results, list(model.get_parameters()), "tower")
    params = []
    for i, src in enumerate(boundary):
        param = ov.opset13.parameter(src.get_partial_shape(), src.get_element_type(), name=f"tower_out_{i}")
        param.output(0).get_tensor().set_names({f"tower_out_{i}"})
        results[i].output(0).get_tensor().set_names({f"tower_out_{i}"})
        for target in list(src.get_target_inputs()):
            if target.get_node().get_name() in tail:
                target.replace_source_output(param.output(0))
        params.append(param)
    head = ov.Model(list(model.get_results()), params, "head")
    return tower, head


def mixed_precision_irs(core, onnx_path: Path, folder: Path,
                        fp32_nodes: frozenset = frozenset()) -> tuple[Path, Path]:
    """The tower (marked: only its matrix products not in ``fp32_nodes`` may run in BF16) and head IRs of
    ``onnx_path`` in ``folder`` (``tower.xml``/``.bin``, ``head.xml``/``.bin``), written once and reused."""
    import openvino as ov

    names = ("tower.xml", "tower.bin", "head.xml", "head.bin")
    if all((folder / n).is_file() for n in names):
        return folder / "tower.xml", folder / "head.xml"
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".ir-", dir=folder))
    try:
        tower, head = split_model(core.read_model(str(onnx_path)))
        ov.save_model(tower, str(staging / "tower.xml"), compress_to_fp16=False)
        ov.save_model(head, str(staging / "head.xml"), compress_to_fp16=False)
        text, marked, low = mark_ir((staging / "tower.xml").read_text(encoding="utf-8"), fp32_nodes)
        (staging / "tower.xml").write_text(text, encoding="utf-8")
        for n in ("tower.bin", "head.bin", "head.xml", "tower.xml"):  # tower.xml last: the set is complete
            os.replace(staging / n, folder / n)
        log.info("mixed precision: %d matrix products of the image tower may run in BF16, %d of its layers and "
                 "the head (%d parameters) stay FP32 (%s)", low, marked, len(head.get_parameters()), folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder / "tower.xml", folder / "head.xml"


def port_name(names) -> str:
    """The graph's name of a port: OpenVINO gives a port every tensor name that aliases it (an ONNX output
    'anomaly_map' fed by an Identity also answers to '/Add_9_output_0'); the contract's name wins, then a
    name outside the exporter's scopes."""
    from aaclip.contract.tensors import CLASS_INPUT_NAME, INPUT_NAME, OUTPUT_NAMES

    names = sorted(names)
    for preferred in (set(OUTPUT_NAMES) | {INPUT_NAME, CLASS_INPUT_NAME}, {n for n in names if "/" not in n}):
        hits = [n for n in names if n in preferred]
        if hits:
            return hits[0]
    return names[0]


@dataclass(frozen=True)
class OpenVinoSettings:
    """How the runner compiles the graph (the ``RunnerOptions`` of the registry, resolved)."""

    device: str = "CPU"
    precision: str = "fp32"
    threads: Optional[int] = None
    perf_hint: str = "latency"
    cache_dir: Optional[Path] = None  # None: no model cache (and a temporary folder for the mixed IR)
    artifact_id: str = "model"        # cache subfolder (the artifact's sha256 prefix: a new graph, a new cache)
    expected_hw: Optional[tuple[int, int]] = None  # the manifest's frame size (checked against the graph)
    fp32_nodes: frozenset = frozenset()  # bf16: transformer matmuls the precision plan keeps FP32

    def config(self) -> dict[str, Any]:
        config: dict[str, Any] = {"PERFORMANCE_HINT": self.perf_hint.upper()}
        if self.device.split(".")[0] in ("CPU", "GPU"):
            config["INFERENCE_PRECISION_HINT"] = HINT_TYPES[self.precision]
        if self.threads and self.device == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(self.threads)
        return config


def device_name(device: str) -> str:
    """A runner option's device as OpenVINO names it: auto/cpu -> CPU, gpu.1 -> GPU.1, npu -> NPU."""
    d = (device or "auto").strip()
    if d.lower() in ("auto", "cpu"):
        return "CPU"
    if d.lower() == "cuda":
        raise UserError("the openvino backend runs on Intel devices (CPU, GPU, NPU), not CUDA; use --backend "
                        "tensorrt or onnxruntime for NVIDIA GPUs")
    return d.upper()


class _Stage:
    """One compiled model and its infer requests (one per stream)."""

    def __init__(self, compiled, requests: int):
        self.compiled = compiled
        self.requests = [compiled.create_infer_request() for _ in range(max(1, requests))]
        self.input_names = tuple(port_name(p.get_names()) for p in compiled.inputs)
        self.output_names = tuple(port_name(p.get_names()) for p in compiled.outputs)

    def run(self, inputs: Mapping[str, np.ndarray], outputs: Sequence[int]) -> list[np.ndarray]:
        """Outputs (by port index) of a batch; with several requests the batch is split across them. Results
        of a single request are views of its buffers, valid until its next call."""
        batch = len(next(iter(inputs.values())))
        parts = min(len(self.requests), batch)
        if parts <= 1:
            request = self.requests[0]
            request.infer(inputs, share_inputs=True, share_outputs=True)
            return [request.get_output_tensor(i).data for i in outputs]
        bounds = np.linspace(0, batch, parts + 1).astype(int)
        for request, lo, hi in zip(self.requests, bounds[:-1], bounds[1:]):  # one slice of the batch per stream
            request.start_async({n: v[lo:hi] for n, v in inputs.items()}, share_inputs=True)
        for request in self.requests[:parts]:
            request.wait()
        return [np.concatenate([r.get_output_tensor(i).data for r in self.requests[:parts]]) for i in outputs]

    def runtime_precisions(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.compiled.get_runtime_model().get_ops():
            info = op.get_rt_info()
            if "runtimePrecision" in info and info["layerType"].astype(str) not in ("Const", "Input", "Output"):
                p = info["runtimePrecision"].astype(str)
                counts[p] = counts.get(p, 0) + 1
        return counts


class OpenVinoRunner(Runner):
    """Runs an ``.onnx`` artifact with OpenVINO (``settings``: device, precision, threads, hint, cache).

    FP32 compiles the graph as it is. Mixed BF16 compiles two models cut from it (``split_model``): the
    image tower under the BF16 hint with its non-matmul layers marked FP32, and the head (similarity,
    post-processing) in FP32; ``infer`` feeds the tower's features to the head.
    """

    name = "openvino"

    def __init__(self, path: str | Path, settings: OpenVinoSettings = OpenVinoSettings()):
        super().__init__()
        self.path = Path(path)
        self.settings = settings
        self._stages: list[_Stage] = []
        self._tmp: Optional[tempfile.TemporaryDirectory] = None

    def _check_device(self, core) -> None:
        s = self.settings
        available = list(core.available_devices)  # e.g. CPU, GPU.0, GPU.1, NPU
        if not any(d == s.device or d.startswith(s.device + ".") or d == s.device.split(".")[0] for d in available):
            raise UserError(f"OpenVINO sees no device {s.device!r} here (available: {', '.join(available)})")
        if s.precision == "bf16":
            caps = core.get_property(s.device, "OPTIMIZATION_CAPABILITIES")
            if not bf16_capable(core, s.device):
                raise UserError(f"{core.get_property(s.device, 'FULL_DEVICE_NAME')} has no BF16 support "
                                f"(OpenVINO: {', '.join(caps)}); use --precision fp32 (or an INT8 graph)")

    def _sources(self, core) -> list[tuple[str, dict]]:
        """(model file, compile config) per stage."""
        s = self.settings
        if s.precision != "bf16":
            return [(str(self.path), s.config())]
        if s.cache_dir is not None:
            folder = Path(s.cache_dir) / s.artifact_id / plan_folder(s.fp32_nodes)
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="aaclip-ov-")
            folder = Path(self._tmp.name)
        tower, head = mixed_precision_irs(core, self.path, folder, s.fp32_nodes)
        fp32 = dataclasses.replace(s, precision="fp32")
        return [(str(tower), s.config()), (str(head), fp32.config())]

    def activate_impl(self) -> None:
        ov = import_openvino()
        core = ov.Core()
        s = self.settings
        self._check_device(core)
        if s.cache_dir is not None:
            cache = Path(s.cache_dir) / s.artifact_id
            cache.mkdir(parents=True, exist_ok=True)
            core.set_property({"CACHE_DIR": str(cache)})
        self._stages = []
        for source, config in self._sources(core):
            compiled = core.compile_model(source, s.device, config)
            n = int(compiled.get_property("OPTIMAL_NUMBER_OF_INFER_REQUESTS")) if s.perf_hint == "throughput" else 1
            self._stages.append(_Stage(compiled, n))
        shape = self._stages[0].compiled.inputs[0].get_partial_shape()
        self.check_input_size([d.get_length() if d.is_static else -1 for d in shape], s.expected_hw)
        self.input_names = self._stages[0].input_names
        self.output_names = self._stages[-1].output_names
        self._out_index = {n: i for i, n in enumerate(self.output_names)}
        n = len(self._stages[0].requests)
        log.info("openvino %s on %s (%s, %s, %d request%s%s)", ov.__version__, s.device, s.precision, s.perf_hint, n,
                 "" if n == 1 else "s", ", tower + head" if len(self._stages) > 1 else "")

    @property
    def execution_precision(self) -> dict[str, int]:
        """Layers of the compiled model(s) per runtime precision (``{'f32': 410, 'bf16': 97, 'i8': 96, ...}``)."""
        counts: dict[str, int] = {}
        for stage in self._stages:
            for p, n in stage.runtime_precisions().items():
                counts[p] = counts.get(p, 0) + n
        return counts

    def infer_impl(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        values = [np.ascontiguousarray(feeds[n]) for n in self.input_names]
        for stage in self._stages[:-1]:
            values = stage.run(dict(zip(stage.input_names, values)), range(len(stage.output_names)))
        last = self._stages[-1]
        got = last.run(dict(zip(last.input_names, values)), [self._out_index[n] for n in outputs])
        return dict(zip(outputs, got))

    def deactivate_impl(self) -> None:
        self._stages = []
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


# ---- the gate record -------------------------------------------------------------------------------
def gate_record(manifest_data: Mapping, precision: str) -> Optional[dict]:
    """The manifest's record of the accuracy gate for ``precision`` on OpenVINO (None: never gated): the
    ``precision_gates`` entry of an FP32 graph (aaclip-calibrate bf16), or an INT8 graph's own gate when it
    ran on OpenVINO with that precision hint (aaclip-calibrate int8 --backend openvino --precision)."""
    gates = manifest_data.get("precision_gates") or {}
    record = gates.get(f"openvino-{precision}") if isinstance(gates, Mapping) else None
    if isinstance(record, Mapping):
        return dict(record)
    gate = (manifest_data.get("quantization") or {}).get("gate")
    if isinstance(gate, Mapping) and gate.get("backend") == "openvino" and gate.get("precision_hint") == precision:
        return dict(gate, artifact_sha256=(manifest_data.get("artifact") or {}).get("sha256"))
    return None


def check_gated(manifest, precision: str) -> None:
    """Refuse a reduced precision that has not passed the accuracy gate on this very artifact."""
    if precision == "fp32":
        return
    record = gate_record(manifest.data, precision)
    hint = (f"run aaclip-calibrate {precision} {manifest.artifact_path} --images GOOD_PARTS/ first "
            "(docs/calibration.md, 'The accuracy gate')")
    if record is None:
        raise UserError(f"{precision} on {manifest.artifact_path.name} has not passed the accuracy gate: {hint}")
    if record.get("artifact_sha256") != manifest.sha256:
        raise UserError(f"the {precision} gate record of {manifest.artifact_path.name} is for another artifact "
                        f"(sha256 differs): {hint}")
    if not record.get("passed") and not record.get("forced"):
        raise UserError(f"{precision} on {manifest.artifact_path.name} failed the accuracy gate: {hint}")


def settings_from_options(manifest, options) -> OpenVinoSettings:
    """``RunnerOptions`` -> settings: ``device``, ``threads``, ``extra`` keys ``precision`` (fp32|bf16),
    ``perf_hint`` (latency|throughput), ``cache_dir`` (a folder, or "none"), ``ungated`` (measurements only:
    the gate itself and the benchmarks run a precision before any gate record exists)."""
    extra = options.extra
    precision = str(extra.get("precision") or "fp32").lower()
    if precision not in PRECISIONS:
        raise UserError(f"the openvino backend runs precision {' or '.join(PRECISIONS)}, not {precision!r} "
                        "(INT8 comes from an INT8 graph: aaclip-calibrate int8)")
    perf = str(extra.get("perf_hint") or "latency").lower()
    if perf not in PERF_HINTS:
        raise UserError(f"--perf-hint {perf!r}: use {' or '.join(PERF_HINTS)}")
    if not extra.get("ungated"):
        check_gated(manifest, precision)
    if "fp32_nodes" in extra:  # the gate's search trying a plan
        fp32_nodes = frozenset(extra["fp32_nodes"] or ())
    else:  # the plan the passed gate recorded
        fp32_nodes = frozenset(((gate_record(manifest.data, precision) or {}).get("fp32_nodes")) or ())
    cache = extra.get("cache_dir", "default")
    if cache is None or str(cache).lower() == "none":
        cache_dir = None
    else:
        cache_dir = default_cache_dir() if str(cache) == "default" else Path(cache)
    return OpenVinoSettings(device=device_name(options.device), precision=precision, threads=options.threads,
                            perf_hint=perf, cache_dir=cache_dir, artifact_id=manifest.sha256[:16],
                            expected_hw=(manifest.height, manifest.width), fp32_nodes=fp32_nodes)


__all__ = ["OpenVinoRunner", "OpenVinoSettings", "PRECISIONS", "PERF_HINTS", "FP32_SCOPES",
           "import_openvino", "cpu_vendor", "intel_cpu", "default_cache_dir", "transformer_matmul", "mark_ir",
           "plan_folder", "bf16_capable",
           "mixed_precision_irs", "split_model", "tail_nodes",
           "device_name", "gate_record", "check_gated", "settings_from_options"]
