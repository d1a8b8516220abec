"""FP32 ONNX graph -> explicit-quantization (Q/DQ) INT8 ONNX graph, gated against the FP32 original.

ONNX Runtime's static post-training quantization (``quantize_static``, ``QuantFormat.QDQ``) writes
QuantizeLinear/DequantizeLinear pairs into a standard ONNX graph: TensorRT consumes it in strongly typed
mode (explicit quantization; the deprecated implicit INT8 calibrators are not used) and ONNX Runtime runs
it on CPU with integer kernels. Choices (docs/calibration.md explains them):

- only the transformer's MatMul/Gemm/Conv with constant weights are quantized (``plan_quantization``):
  attention's activation x activation MatMuls, LayerNorm, Softmax, AA-CLIP's adapters and projections
  (``FP32_SCOPES``) and the whole post-processing (anchor similarity MatMuls, blur convolutions, Resize,
  ReduceMax, the input resize) stay FP32;
- weights INT8 symmetric per output channel, activations INT8 symmetric per tensor (zero point 0, which
  TensorRT requires), Q/DQ on the inputs of quantized nodes only (TensorRT's recommended placement);
- activation ranges from normal frames fed exactly as the runtime feeds the graph (uint8 NHWC BGR,
  ``fit_frame``), so no separate pre-processing can drift from the deployed one.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.feeds import fit_frame
from aaclip.contract.files import sha256_file
from aaclip.contract.manifest import Manifest, check_artifact, load_manifest
from aaclip.contract.score import image_score
from aaclip.export.replace import commit, keep_calibration, staging
from aaclip.runtime.backends import RunnerOptions, open_runner
from aaclip.runtime.backends.onnxruntime import import_onnxruntime
from aaclip.runtime.backends.openvino import FP32_SCOPES

from .gate import GateLimits, GateReport, evaluate_gate, resolvable_limits
from .inference import Collect, FrameOutputs, run_items
from .inputs import FrameInput, Item, SetHash, frame_payload, synthetic_pairs
from .search import DEFAULT_BUDGET_S, DEFAULT_SEARCH_FRAMES, Plan, Unit, plan_from_record, search_plan, tower_units

log = logging.getLogger(__name__)

QUANT_OP_TYPES = ("MatMul", "Gemm", "Conv")
CALIBRATION_METHODS = ("minmax", "percentile")
DEFAULT_FRAMES = 128
"""Normal frames read for INT8 (activation ranges settle after ~100 varied frames)."""
DEFAULT_HOLDOUT = 32
"""Synthetic normal products (and as many defective copies) added to the held-out set."""
HOLDOUT_EVERY = 4
"""Every 4th user frame is held out of the calibration set for the gate (when there are >= 8)."""
CALIBRATION_BATCH = 8
CALIBRATION_BUDGET_BYTES = 1_500_000_000
"""Activations collected per calibration batch (the batch shrinks for large models; see calibration_batch)."""
DEFAULT_PROVIDERS = ("CPUExecutionProvider",)
SEARCH_REASON = "kept FP32 by the accuracy search"
"""Held-out frames (half normal, half anomalous) each search step is gated on; the final plan on all of them. 16 + 16
frames let AUROC move in steps of 1/256 (16 frames: 1/64, most of the 0.02 limit)."""


@dataclass
class QuantPlan:
    """Which MatMul/Gemm/Conv nodes get Q/DQ, and why the others do not."""

    quantize: list[str] = field(default_factory=list)
    exclude: dict[str, str] = field(default_factory=dict)  # node name -> reason


def _constant_names(model) -> set[str]:
    names = {t.name for t in model.graph.initializer}
    names.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    return names


def plan_quantization(model) -> QuantPlan:
    """Select the transformer's weight MatMul/Gemm/Conv nodes of an exported graph.

    A node is quantized when its weight (second input) is a constant and it lives inside a module scope
    of the exporter's naming (``/resblocks.3/mlp/c_fc/MatMul``, ``/conv1/Conv``). Nodes at the top scope
    (``/MatMul_2``, ``/Conv_5``) are ``DeployGraph.forward``'s own code: input resize, anchor similarities,
    blur convolutions; they stay FP32, as do activation x activation MatMuls (attention scores/values).
    """
    constants = _constant_names(model)
    plan = QuantPlan()
    for node in model.graph.node:
        if node.op_type not in QUANT_OP_TYPES:
            continue
        if len(node.input) < 2 or node.input[1] not in constants:
            plan.exclude[node.name] = "activation x activation (attention)"
        elif node.name.strip("/").count("/") < 1:
            plan.exclude[node.name] = "post-processing (top-level graph code)"
        elif node.name.startswith(FP32_SCOPES):
            plan.exclude[node.name] = "adapter or projection into the anchor space (feeds the similarity head)"
        else:
            plan.quantize.append(node.name)
    return plan


def _name_nodes(model) -> None:
    """Give unnamed nodes unique names (node selection works by name)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def activation_bytes_per_frame(model, plan: QuantPlan) -> Optional[int]:
    """Bytes of the quantized nodes' activation inputs for one frame, from the export's shape inference (a
    proxy for the activation memory of one frame in the calibration session); None when a shape is unknown."""
    shapes = {}
    for info in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output):
        dims = info.type.tensor_type.shape.dim
        shapes[info.name] = [d.dim_value if d.HasField("dim_value") else 1 for d in dims]  # symbolic batch -> 1
    quantized = set(plan.quantize)
    total = 0
    for node in model.graph.node:
        if node.name in quantized:
            dims = shapes.get(node.input[0])
            if not dims:
                return None
            total += 4 * int(np.prod(dims))
    return total


def calibration_batch(model, plan: QuantPlan, batch: int) -> int:
    """Frames per calibration batch: at most ``batch``, and few enough that one batch's activations stay
    within ``CALIBRATION_BUDGET_BYTES`` (ViT-L-14-336 at 518: ~1 GB per frame, so batches of 1; its attention
    matrices alone take 0.25 GB per frame and layer), which keeps calibration at ViT-L within 8 GB."""
    per_frame = activation_bytes_per_frame(model, plan)
    if per_frame is None:
        return 1
    return max(1, min(batch, CALIBRATION_BUDGET_BYTES // max(1, per_frame)))


def _reader(frames: np.ndarray, class_ids: np.ndarray, manifest: Manifest, batch: int):
    from onnxruntime.quantization import CalibrationDataReader

    class CalibrationFeeds(CalibrationDataReader):
        """Feeds fitted uint8 NHWC BGR frames (and class ids) in batches, as the runtime does."""

        def __init__(self) -> None:
            self.start = 0

        def get_next(self) -> Optional[dict]:
            if self.start >= len(frames):
                return None
            sl = slice(self.start, self.start + batch)
            self.start += batch
            feed = {manifest.input_name: frames[sl]}
            if manifest.class_input is not None:
                feed[manifest.class_input] = class_ids[sl]
            return feed

        def rewind(self) -> None:
            self.start = 0

    return CalibrationFeeds()


def activation_inputs(model, plan: QuantPlan) -> list[str]:
    """The activation inputs of the planned nodes (their first input): the tensors that get Q/DQ."""
    quantized = set(plan.quantize)
    return sorted({node.input[0] for node in model.graph.node if node.name in quantized})


def collect_ranges(model, plan: QuantPlan, frames: np.ndarray, class_ids: np.ndarray, manifest: Manifest,
                   batch: int, work: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """MinMax ranges of the planned nodes' activation inputs over ``frames``, fed as the runtime feeds them.

    ``model`` (consumed) gets one ReduceMin and one ReduceMax per tensor as extra graph outputs, is written to
    ``work`` and run by one ONNX Runtime session in batches: only two scalars per tensor and batch come back,
    never the activations, and the only model copy in memory is the session's. (ONNX Runtime's own
    calibrator, ``quantize_static`` with a data reader, holds several copies of the model and went past 20
    GB at ViT-L-14-336 at 518 px.)
    """
    import onnx
    from onnx import helper

    ort = import_onnxruntime()
    tensors = activation_inputs(model, plan)
    outputs = []
    for i, name in enumerate(tensors):
        for op in ("ReduceMin", "ReduceMax"):
            out = f"__range_{op}_{i}"
            model.graph.node.append(helper.make_node(op, [name], [out], keepdims=0, name=out))
            model.graph.output.append(helper.make_tensor_value_info(out, onnx.TensorProto.FLOAT, []))
            outputs.append(out)
    path = Path(work) / "ranges.onnx"
    onnx.save(model, str(path))
    del model
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    lo = np.full(len(tensors), np.inf)
    hi = np.full(len(tensors), -np.inf)
    for start in range(0, len(frames), batch):
        feed = {manifest.input_name: frames[start:start + batch]}
        if manifest.class_input is not None:
            feed[manifest.class_input] = class_ids[start:start + batch]
        values = np.asarray(session.run(outputs, feed), np.float64).reshape(len(tensors), 2)
        lo, hi = np.minimum(lo, values[:, 0]), np.maximum(hi, values[:, 1])
    del session
    return {name: (np.float32(a), np.float32(b)) for name, a, b in zip(tensors, lo, hi)}


WEIGHT_BITS = (7, 8)
DEFAULT_WEIGHT_BITS = 7
"""Weights use 7 of their 8 bits by default (ONNX Runtime's ``reduce_range``): x86 CPUs without VNNI (AVX2 only)
multiply uint8 activations by int8 weights with ``vpmaddubsw``, which adds pairs of products into int16 and
saturates with full 8-bit weights (the tiny model's map error: 6.4% of the range with 8-bit weights, 0.76% with
7-bit ones, on an AVX2 EPYC). 7-bit weights cannot saturate there, so one graph keeps its accuracy on every
CPU; ``--weight-bits 8`` is for graphs only TensorRT or VNNI/AMX CPUs run."""


def calibration_ranges(fp32_path: Path, plan: QuantPlan, frames: np.ndarray, class_ids: np.ndarray,
                       manifest: Manifest, batch: int, work: Path) -> Path:
    """MinMax ranges of every planned node's activation input (``collect_ranges``), saved as ONNX Runtime's
    calibration cache in ``work``: collected once, reused by every graph the search writes."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    model = onnx.load(str(fp32_path))
    _name_nodes(model)
    ranges = collect_ranges(model, plan, frames, class_ids, manifest, batch, Path(work))
    cache = Path(work) / "ranges.json"
    save_tensors_data(TensorsData(CalibrationMethod.MinMax, ranges), cache)
    (Path(work) / "ranges.onnx").unlink()
    return cache


def keep_fp32(plan: QuantPlan, nodes: Sequence[str], reason: str) -> QuantPlan:
    """``plan`` with ``nodes`` moved from the quantized to the FP32 nodes (``reason`` recorded)."""
    keep = set(nodes)
    return QuantPlan(quantize=[n for n in plan.quantize if n not in keep],
                     exclude={**plan.exclude, **{n: reason for n in plan.quantize if n in keep}})


@dataclass(frozen=True)
class QdqSettings:
    """How ``write_qdq`` quantizes: range estimator, weight bits, frames per calibration batch, and the
    MinMax calibration cache when it was collected already (``calibration_ranges``)."""

    method: str = "minmax"
    weight_bits: int = DEFAULT_WEIGHT_BITS
    batch: int = CALIBRATION_BATCH
    cache: Optional[Path] = None


def write_qdq(fp32_path: Path, out_path: Path, plan: QuantPlan, frames: np.ndarray, class_ids: np.ndarray,
              manifest: Manifest, settings: QdqSettings = QdqSettings()) -> None:
    """Write the Q/DQ graph of ``fp32_path`` quantizing ``plan.quantize`` (not atomic: the caller stages it).

    ``minmax`` ranges come from ``collect_ranges`` (or ``settings.cache``) and reach ``quantize_static`` as its
    calibration cache; ``percentile`` needs histograms of every activation and uses ONNX Runtime's calibrator
    (memory-hungry: it does not fit a ViT-L at 518 px on a 24 GB machine)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    method = settings.method
    if method not in CALIBRATION_METHODS:
        raise UserError(f"unknown calibration method {method!r}; use one of {', '.join(CALIBRATION_METHODS)}")
    if settings.weight_bits not in WEIGHT_BITS:
        raise UserError(f"--weight-bits {settings.weight_bits}: use 7 (any CPU) or 8 (TensorRT, VNNI/AMX CPUs)")
    calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method]
    extra = {
        "ActivationSymmetric": True,     # zero point 0: TensorRT's INT8 is symmetric
        "WeightSymmetric": True,
        "OpTypesToExcludeOutputQuantization": list(QUANT_OP_TYPES),  # Q/DQ on inputs only
        "CalibMovingAverage": False,
    }
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    model = onnx.load(str(fp32_path))
    named = all(node.name for node in model.graph.node)
    _name_nodes(model)
    root = logging.getLogger()
    root.addFilter(_hide_pre_process_advice)
    try:
        with tempfile.TemporaryDirectory(prefix="aaclip-calib-") as work:
            reader, cache = _reader(frames, class_ids, manifest, settings.batch), None
            if method == "minmax":
                cache, reader = settings.cache, None
                if cache is None:
                    del model
                    cache = calibration_ranges(fp32_path, plan, frames, class_ids, manifest, settings.batch,
                                               Path(work))
                    model = None if named else _named(fp32_path)
            if named:  # the exporter names every node: ONNX Runtime reads the file itself, no copy held here
                model = str(fp32_path)
            quantize_static(
                model, str(out_path), reader, quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8, per_channel=True, reduce_range=settings.weight_bits == 7,
                op_types_to_quantize=list(QUANT_OP_TYPES), nodes_to_exclude=list(plan.exclude),
                calibrate_method=calib, extra_options=extra, calibration_cache_path=cache)
    finally:
        root.removeFilter(_hide_pre_process_advice)


def _named(path: Path):
    import onnx

    model = onnx.load(str(path))
    _name_nodes(model)
    return model


def quantize_graph(fp32_path: Path, out_path: Path, frames: np.ndarray, class_ids: np.ndarray, manifest: Manifest,
                   method: str = "minmax", batch: int = CALIBRATION_BATCH,
                   weight_bits: int = DEFAULT_WEIGHT_BITS) -> QuantPlan:
    """Quantize every planned node of ``fp32_path`` (no search) into ``out_path``; returns the plan."""
    plan = node_plan(fp32_path)
    batch = calibration_batch(_named(fp32_path), plan, batch)
    log.info("quantizing %d of %d MatMul/Gemm/Conv nodes (%d kept FP32) with %s ranges from %d frames (batches of %d)",
             len(plan.quantize), len(plan.quantize) + len(plan.exclude), len(plan.exclude), method, len(frames), batch)
    write_qdq(fp32_path, out_path, plan, frames, class_ids, manifest, QdqSettings(method, weight_bits, batch))
    return plan


def node_plan(fp32_path: Path) -> QuantPlan:
    """``plan_quantization`` of the graph at ``fp32_path`` (a UserError when nothing can be quantized)."""
    plan = plan_quantization(_named(fp32_path))
    if not plan.quantize:
        raise UserError(f"{Path(fp32_path).name} has no transformer MatMul/Gemm/Conv with constant weights to "
                        "quantize; is it an aaclip-export FP32 graph?")
    return plan


def _hide_pre_process_advice(record: logging.LogRecord) -> bool:
    """ONNX Runtime advises ``quant_pre_process`` on every call; the export already ran strict shape
    inference, and docs/calibration.md explains why the pre-processing pass is not used."""
    return "pre-processing" not in record.getMessage()


# ---- the command -----------------------------------------------------------------------------------
@dataclass
class Int8Result:
    gate: GateReport
    written: bool
    out: Path
    manifest: Optional[Path]
    plan: QuantPlan
    calibration: dict
    engine: Optional[Path] = None
    search: Optional[Plan] = None       # the accuracy search's plan (units low / kept FP32)
    units: Sequence[Unit] = ()
    speedup: Optional[dict] = None      # measured on the gate's held-out frames (``gate_speedup``)


def _collect(frames: FrameInput, manifest: Manifest, limit: int) -> list[Item]:
    items = []
    for item in frames.items():
        fitted = fit_frame(item.frame, manifest.height, manifest.width).copy()
        items.append(Item(fitted, item.class_id, item.payload))
        if len(items) >= limit:
            break
    return items


def split_holdout(items: Sequence[Item]) -> tuple[list[Item], list[Item]]:
    """(calibration, held-out): every ``HOLDOUT_EVERY``-th frame is held out when there are at least 8."""
    if len(items) < 8:
        return list(items), []
    held = [it for i, it in enumerate(items) if i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1]
    calib = [it for i, it in enumerate(items) if i % HOLDOUT_EVERY != HOLDOUT_EVERY - 1]
    return calib, held


def holdout_set(manifest: Manifest, held_normals: Sequence[Item], anomalies: Optional[FrameInput],
                n_synthetic: int, seed: int, max_anomalies: int) -> tuple[list[Item], np.ndarray, str]:
    """Held-out frames and labels: held-out user normals + synthetic products, and labelled anomalies when
    given, else the same normals with synthetic defects (``synth.add_defect``)."""
    from aaclip.data import synth

    class_ids = sorted({it.class_id for it in held_normals}) or None
    syn_good, syn_bad = synthetic_pairs(manifest, n_synthetic, seed, class_ids) if n_synthetic else ([], [])
    normals = list(held_normals) + syn_good
    if anomalies is not None:
        bad = _collect(anomalies, manifest, max_anomalies)
        how = f"labelled anomalies ({anomalies.description})"
    else:
        rng = np.random.default_rng(seed + 1)
        bad = []
        for it in held_normals:
            img, _ = synth.add_defect(it.frame, rng)
            bad.append(Item(img, it.class_id, frame_payload(img)))
        bad += syn_bad
        how = "synthetic defects (synth.add_defect)"
    if not normals:
        raise UserError("no held-out frames for the accuracy gate: give at least 8 frames or --holdout > 0")
    items = normals + bad
    labels = np.r_[np.zeros(len(normals), int), np.ones(len(bad), int)]
    desc = (f"{len(held_normals)} held-out normal frames + {len(syn_good)} synthetic products; anomalies: "
            f"{len(bad)} {how}")
    return items, labels, desc


def gate_runner_options(backend: str, providers: Sequence[str], runner: RunnerOptions) -> RunnerOptions:
    """Runner options for the gate's runs: ONNX Runtime on ``providers``; other backends as given, ungated
    (the gate is what measures them) and without a model cache (the staged graph is temporary)."""
    if backend == "onnxruntime":
        return dataclasses.replace(runner, extra={**runner.extra, "providers": tuple(providers)})
    return dataclasses.replace(runner, extra={**runner.extra, "ungated": True, "cache_dir": "none"})


def _outputs(path: Path, manifest: Manifest, items: Sequence[Item], o: "Int8Options") -> FrameOutputs:
    """Outputs of the graph at ``path`` (the FP32 original or the staged INT8 graph, same contract) on the
    gate's backend."""
    return _timed_outputs(path, manifest, items, o)[0]


def _timed_outputs(path: Path, manifest: Manifest, items: Sequence[Item], o: "Int8Options") -> tuple[FrameOutputs, float]:
    """``_outputs`` and the seconds the frames took once the runner was active (the speed-up's basis)."""
    graph = dataclasses.replace(manifest, artifact_path=Path(path))
    runner = open_runner(graph, o.backend, gate_runner_options(o.backend, o.providers, o.runner))
    with runner:
        t0 = time.perf_counter()
        out = run_items(runner, manifest, items, Collect(o.batch, keep_maps=True))
        return out, time.perf_counter() - t0


def search_subset(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of a balanced subset of the held-out set for the search: up to ``n // 2`` normal and as many
    anomalous frames (all of them when the set is that small)."""
    labels = np.asarray(labels)
    if n <= 0 or n >= labels.size:
        return np.arange(labels.size)
    half = max(1, n // 2)
    normal, bad = np.flatnonzero(labels == 0)[:half], np.flatnonzero(labels == 1)[:half]
    return np.sort(np.r_[normal, bad])


def search_step_limits(limits: GateLimits, step_labels: np.ndarray, held_out: int) -> GateLimits:
    """The limits each search step applies to its ``--search-frames`` (``gate.resolvable_limits``), logged when
    it leaves a check to the final gate."""
    step, unresolved = resolvable_limits(limits, step_labels)
    if unresolved:
        log.info("the %d search frames cannot resolve %s: each step checks the maps, the final gate on all %d "
                 "held-out frames checks everything", len(step_labels), " or ".join(unresolved), held_out)
    return step


def gate_speedup(fp32_s: float, reduced_s: float, frames: int, backend: str) -> dict:
    """The speed-up measured on the gate's own run (same frames, same backend, this CPU, one run each)."""
    return {"fp32_s": round(fp32_s, 4), "reduced_s": round(reduced_s, 4), "frames": frames, "backend": backend,
            "speedup": round(fp32_s / reduced_s, 3) if reduced_s > 0 else None,
            "how": "gate's held-out frames, once in FP32 and once in the reduced precision, same backend"}


def int8_units(fp32_path: Path, plan: QuantPlan) -> list[Unit]:
    """The search's units of the quantizable nodes (every one has a constant weight)."""
    return tower_units([(n, True) for n in plan.quantize])


def int8_manifest(fp32: Manifest, out: Path, sha256: str, plan: QuantPlan, calibration: dict, gate: dict,
                  settings: "Int8Options", search: Optional[dict] = None) -> dict:
    """The INT8 graph's manifest: the FP32 graph's (contract, classes, score, input) + quantization facts."""
    ort = import_onnxruntime()
    data = copy.deepcopy(fp32.data)
    data["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    data["artifact"] = {"file": out.name, "format": "onnx", "sha256": sha256, "size_bytes": out.stat().st_size,
                        "external_data": []}
    data["precision"] = "int8"
    data.setdefault("source", {})["onnx_sha256"] = fp32.sha256
    data.setdefault("tools", {})["onnxruntime"] = ort.__version__
    data["tensorrt"] = None
    data["quantization"] = {
        "tool": "onnxruntime.quantization.quantize_static",
        "format": "QDQ",
        "weights": f"int8 symmetric per-channel, {settings.weight_bits} bits used",
        "weight_bits": settings.weight_bits,
        "activations": "int8 symmetric per-tensor",
        "calibration_method": settings.method,
        "op_types": list(QUANT_OP_TYPES),
        "quantized_nodes": len(plan.quantize),
        "fp32_nodes": len(plan.exclude),
        "fp32_graph": fp32.artifact_path.name,
        "calibration": calibration,
        "gate": gate,
        "plan": search,
        "fp32_nodes_by_search": sorted(n for n, why in plan.exclude.items() if why.startswith(SEARCH_REASON)),
    }
    data["rebuild_command"] = settings.rebuild_command
    return data


@dataclass(frozen=True)
class Int8Options:
    """``aaclip-calibrate int8``'s settings (defaults documented in docs/calibration.md)."""

    out: Optional[Path] = None          # INT8 graph [default: <fp32 stem>.int8.onnx]
    max_frames: int = DEFAULT_FRAMES    # normal frames read (every 4th held out for the gate)
    holdout: int = DEFAULT_HOLDOUT      # synthetic products (and as many defective) added to the held-out set
    limits: GateLimits = GateLimits()
    force: bool = False                 # write even when the gate fails (recorded in the manifest)
    method: str = "minmax"              # activation range estimator
    batch: int = CALIBRATION_BATCH
    seed: int = 0
    providers: Sequence[str] = DEFAULT_PROVIDERS
    rebuild_command: str = ""
    discard_calibration: bool = False   # replace a calibrated INT8 artifact whose outputs change
    backend: str = "onnxruntime"        # the backend the gate runs FP32 and INT8 on (the one that will run it)
    runner: RunnerOptions = RunnerOptions()  # its options (device, threads; openvino: precision hint)
    search: bool = True                 # the accuracy search (False: every planned node INT8, one gate)
    budget_s: Optional[float] = DEFAULT_BUDGET_S  # the search's time budget
    search_frames: int = DEFAULT_SEARCH_FRAMES
    weight_bits: int = DEFAULT_WEIGHT_BITS
    plan: Optional[dict] = None         # a recorded plan to re-apply (a manifest's quantization.plan): no search


def quantize_artifact(fp32_onnx: Path, normals: FrameInput, anomalies: Optional[FrameInput] = None,
                      options: Int8Options = Int8Options()) -> Int8Result:
    """Quantize (searching which blocks stay FP32), gate, and (if the gate passes or ``force``) write the INT8
    graph + manifest atomically."""
    o = options
    out, max_frames, holdout, force = o.out, o.max_frames, o.holdout, o.force
    fp32_onnx = Path(fp32_onnx)
    manifest = load_manifest(fp32_onnx)
    check_artifact(manifest)
    precision = manifest.data.get("precision")
    if manifest.artifact_format != "onnx" or manifest.is_engine:
        raise UserError(f"{fp32_onnx.name} is not an ONNX graph; quantize the FP32 .onnx export (aaclip-export CKPT)")
    if precision != "fp32":
        raise UserError(f"{fp32_onnx.name} has precision {precision!r}; INT8 starts from the FP32 export "
                        "(aaclip-export CKPT --precision fp32)")
    if max_frames < 2:
        raise UserError(f"--frames must be >= 2, got {max_frames}")
    if o.weight_bits not in WEIGHT_BITS:
        raise UserError(f"--weight-bits {o.weight_bits}: use 7 (any CPU) or 8 (TensorRT, VNNI/AMX CPUs)")
    out = Path(out) if out is not None else fp32_onnx.with_name(fp32_onnx.stem + ".int8.onnx")
    if out.resolve() == fp32_onnx.resolve():
        raise UserError(f"--out {out} would overwrite the FP32 graph; choose another file name")
    base = node_plan(fp32_onnx)
    units = int8_units(fp32_onnx, base)
    fixed = plan_from_record(o.plan, units) if o.plan is not None else None

    items = _collect(normals, manifest, max_frames)
    calib_items, held = split_holdout(items)
    hasher = SetHash()
    for it in calib_items:
        hasher.update(it)
    calibration = {"frames": len(calib_items), "sha256": hasher.hexdigest(),
                   "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                   "input": normals.description, "held_out": len(held)}
    frames = np.stack([it.frame for it in calib_items])
    class_ids = np.asarray([it.class_id for it in calib_items], np.int64)
    test_items, labels, holdout_desc = holdout_set(manifest, held, anomalies, holdout, seed=o.seed,
                                                   max_anomalies=max(holdout, len(held)) * 4)
    subset = search_subset(labels, o.search_frames)

    with staging(out) as tmp:  # graph and manifest replace an earlier INT8 pair together, or not at all
        staged = tmp / out.name
        batch = calibration_batch(_named(fp32_onnx), base, o.batch)
        log.info("INT8: %d quantizable nodes in %d units; %s ranges from %d frames (batches of %d)",
                 len(base.quantize), len(units), o.method, len(frames), batch)
        work = tmp / "search"
        work.mkdir()
        cache = (calibration_ranges(fp32_onnx, base, frames, class_ids, manifest, batch, work)
                 if o.method == "minmax" else None)
        settings = QdqSettings(o.method, o.weight_bits, batch, cache)
        ref_o = dataclasses.replace(o, runner=RunnerOptions(
            o.runner.device, o.runner.threads, {k: v for k, v in o.runner.extra.items() if k != "precision"}))
        ref, ref_s = _timed_outputs(fp32_onnx, manifest, test_items, ref_o)
        p = manifest.score
        ref_scores = image_score(ref.map_max, ref.cls_score, p).astype(np.float64)
        timing = {}

        def plan_for(low: frozenset) -> QuantPlan:
            return keep_fp32(base, [n for u in units if u.name not in low for n in u.nodes], SEARCH_REASON)

        def gate(low: frozenset, path: Path, idx: np.ndarray, limits: GateLimits = o.limits) -> GateReport:
            write_qdq(fp32_onnx, path, plan_for(low), frames, class_ids, manifest, settings)
            chosen = [test_items[i] for i in idx]
            test, seconds = _timed_outputs(path, manifest, chosen, o)
            timing["s"] = seconds
            return evaluate_gate(ref.maps[idx], test.maps, ref_scores[idx],
                                 image_score(test.map_max, test.cls_score, p).astype(np.float64), labels[idx],
                                 limits)

        everything = frozenset(u.name for u in units)
        full = np.arange(len(labels))
        if fixed is not None:
            search, report = fixed, gate(frozenset(fixed.low), staged, full)
        elif not o.search:
            search = Plan(low=sorted(everything), fp32=[], searched=False)
            report = gate(everything, staged, full)
        else:
            step_limits = search_step_limits(o.limits, labels[subset], labels.size)
            search, report = search_plan(units, lambda low: gate(low, work / "try.onnx", subset, step_limits),
                                         lambda low: gate(low, staged, full), o.budget_s)
        qplan = plan_for(frozenset(search.low))
        speedup = gate_speedup(ref_s, timing["s"], len(test_items), o.backend)
        result = Int8Result(report, False, out, None, qplan, calibration, search=search, units=units, speedup=speedup)
        if not search.low and not force:
            return result
        gate_record = report.to_dict()
        gate_record.update({"forced": bool(force and not report.passed), "holdout": holdout_desc,
                            "backend": o.backend, "precision_hint": o.runner.extra.get("precision"),
                            "speedup": speedup})
        if not (report.passed or force):
            return result
        for leftover in work.iterdir():
            leftover.unlink()
        work.rmdir()
        command = o.rebuild_command or f"aaclip-calibrate int8 {fp32_onnx} --out {out} --plan {out}"
        data = int8_manifest(manifest, staged, sha256_file(staged), qplan, calibration, gate_record,
                             dataclasses.replace(o, rebuild_command=command), search.to_dict())
        mpath = commit(tmp, out, (), keep_calibration(out, data, o.discard_calibration))
    if (manifest.data.get("score") or {}).get("source") == "calibration":
        log.warning("the score constants were copied from the FP32 graph; INT8 shifts raw outputs slightly: "
                    "run aaclip-calibrate threshold %s on normal frames", out)
    return dataclasses.replace(result, written=True, manifest=mpath)


def build_int8_engine(int8_onnx: Path, engine: Path, flavour: str, batch: tuple[int, int, int],
                      rebuild_command: str, workspace_mb: int = 2048) -> Path:
    """The INT8 graph through the export package's engine build (strongly typed: Q/DQ set the precision)."""
    from aaclip.export.engine import EngineOptions, build_engine_artifact

    return build_engine_artifact(int8_onnx, engine, EngineOptions(batch=batch, workspace_mb=workspace_mb,
                                                                  flavour=flavour), rebuild_command)
