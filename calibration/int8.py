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

from .gate import GateLimits, GateReport, evaluate_gate
from .inference import Collect, FrameOutputs, run_items
from .inputs import FrameInput, Item, SetHash, frame_payload, synthetic_pairs

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


def quantize_graph(fp32_path: Path, out_path: Path, frames: np.ndarray, class_ids: np.ndarray, manifest: Manifest,
                   method: str = "minmax", batch: int = CALIBRATION_BATCH) -> QuantPlan:
    """Write the Q/DQ INT8 graph of ``fp32_path`` to ``out_path`` (not atomic: the caller stages it).

    ``minmax`` ranges come from ``collect_ranges`` and reach ``quantize_static`` as its calibration cache;
    ``percentile`` needs histograms of every activation and uses ONNX Runtime's calibrator (memory-hungry:
    it does not fit a ViT-L at 518 px on a 24 GB machine)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import TensorsData, save_tensors_data

    if method not in CALIBRATION_METHODS:
        raise UserError(f"unknown calibration method {method!r}; use one of {', '.join(CALIBRATION_METHODS)}")
    model = onnx.load(str(fp32_path))
    named = all(node.name for node in model.graph.node)
    _name_nodes(model)
    plan = plan_quantization(model)
    if not plan.quantize:
        raise UserError(f"{fp32_path.name} has no transformer MatMul/Gemm/Conv with constant weights to quantize; "
                        "is it an aaclip-export FP32 graph?")
    batch = calibration_batch(model, plan, batch)
    log.info("quantizing %d of %d MatMul/Gemm/Conv nodes (%d kept FP32) with %s ranges from %d frames (batches of %d)",
             len(plan.quantize), len(plan.quantize) + len(plan.exclude), len(plan.exclude), method, len(frames), batch)
    calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method]
    extra = {
        "ActivationSymmetric": True,     # zero point 0: TensorRT's INT8 is symmetric
        "WeightSymmetric": True,
        "OpTypesToExcludeOutputQuantization": list(QUANT_OP_TYPES),  # Q/DQ on inputs only
        "CalibMovingAverage": False,
    }
    if method == "percentile":
        extra["CalibPercentile"] = 99.999
    root = logging.getLogger()
    root.addFilter(_hide_pre_process_advice)
    try:
        with tempfile.TemporaryDirectory(prefix="aaclip-calib-") as work:
            reader, cache = _reader(frames, class_ids, manifest, batch), None
            if method == "minmax":
                unnamed = None if named else onnx.load(str(fp32_path))  # keep the named copy for quantize_static
                ranges = collect_ranges(model if named else unnamed, plan, frames, class_ids, manifest, batch,
                                        Path(work))
                cache, reader = Path(work) / "ranges.json", None
                save_tensors_data(TensorsData(calib, ranges), cache)
                (Path(work) / "ranges.onnx").unlink()
            if named:  # the exporter names every node: ONNX Runtime reads the file itself, no copy held here
                model = str(fp32_path)
            quantize_static(
                model, str(out_path), reader, quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=list(QUANT_OP_TYPES),
                nodes_to_exclude=list(plan.exclude), calibrate_method=calib, extra_options=extra,
                calibration_cache_path=cache)
    finally:
        root.removeFilter(_hide_pre_process_advice)
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
    graph = dataclasses.replace(manifest, artifact_path=Path(path))
    runner = open_runner(graph, o.backend, gate_runner_options(o.backend, o.providers, o.runner))
    with runner:
        return run_items(runner, manifest, items, Collect(o.batch, keep_maps=True))


def int8_manifest(fp32: Manifest, out: Path, sha256: str, plan: QuantPlan, calibration: dict, gate: dict,
                  method: str, rebuild_command: str) -> dict:
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
        "weights": "int8 symmetric per-channel",
        "activations": "int8 symmetric per-tensor",
        "calibration_method": method,
        "op_types": list(QUANT_OP_TYPES),
        "quantized_nodes": len(plan.quantize),
        "fp32_nodes": len(plan.exclude),
        "fp32_graph": fp32.artifact_path.name,
        "calibration": calibration,
        "gate": gate,
    }
    data["rebuild_command"] = rebuild_command
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


def quantize_artifact(fp32_onnx: Path, normals: FrameInput, anomalies: Optional[FrameInput] = None,
                      options: Int8Options = Int8Options()) -> Int8Result:
    """Quantize, gate, and (if the gate passes or ``force``) write the INT8 graph + manifest atomically."""
    o = options
    out, max_frames, holdout, limits, force = o.out, o.max_frames, o.holdout, o.limits, o.force
    method, batch, seed, rebuild_command = o.method, o.batch, o.seed, o.rebuild_command
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
    out = Path(out) if out is not None else fp32_onnx.with_name(fp32_onnx.stem + ".int8.onnx")
    if out.resolve() == fp32_onnx.resolve():
        raise UserError(f"--out {out} would overwrite the FP32 graph; choose another file name")

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
    test_items, labels, holdout_desc = holdout_set(manifest, held, anomalies, holdout, seed,
                                                   max(holdout, len(held)) * 4)

    with staging(out) as tmp:  # graph and manifest replace an earlier INT8 pair together, or not at all
        staged = tmp / out.name
        plan = quantize_graph(fp32_onnx, staged, frames, class_ids, manifest, method, batch)
        ref = _outputs(fp32_onnx, manifest, test_items, dataclasses.replace(o, runner=RunnerOptions(
            o.runner.device, o.runner.threads, {k: v for k, v in o.runner.extra.items() if k != "precision"})))
        test = _outputs(staged, manifest, test_items, o)
        p = manifest.score
        report = evaluate_gate(ref.maps, test.maps, image_score(ref.map_max, ref.cls_score, p).astype(np.float64),
                               image_score(test.map_max, test.cls_score, p).astype(np.float64), labels, limits)
        gate = report.to_dict()
        gate.update({"forced": bool(force and not report.passed), "holdout": holdout_desc, "backend": o.backend,
                     "precision_hint": o.runner.extra.get("precision")})
        if not (report.passed or force):
            return Int8Result(report, False, out, None, plan, calibration)
        data = int8_manifest(manifest, staged, sha256_file(staged), plan, calibration, gate, method,
                             rebuild_command or f"aaclip-calibrate int8 {fp32_onnx} --out {out}")
        mpath = commit(tmp, out, (), keep_calibration(out, data, o.discard_calibration))
    if (manifest.data.get("score") or {}).get("source") == "calibration":
        log.warning("the score constants were copied from the FP32 graph; INT8 shifts raw outputs slightly: "
                    "run aaclip-calibrate threshold %s on normal frames", out)
    return Int8Result(report, True, out, mpath, plan, calibration)


def build_int8_engine(int8_onnx: Path, engine: Path, flavour: str, batch: tuple[int, int, int],
                      rebuild_command: str, workspace_mb: int = 2048) -> Path:
    """The INT8 graph through the export package's engine build (strongly typed: Q/DQ set the precision)."""
    from aaclip.export.engine import EngineOptions, build_engine_artifact

    return build_engine_artifact(int8_onnx, engine, EngineOptions(batch=batch, workspace_mb=workspace_mb,
                                                                  flavour=flavour), rebuild_command)
