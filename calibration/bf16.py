"""``aaclip-calibrate bf16``: OpenVINO's mixed BF16 on an FP32 graph, searched and allowed only behind the
accuracy gate.

Nothing is fitted: the FP32 graph runs on normal frames (and anomalies: labelled ones, else synthetic
defects on the same frames, plus synthetic products) once in FP32 and in mixed BF16 on the same backend and
device, and ``gate.evaluate_gate`` compares them with the same limits as INT8. The accuracy search
(``search.search_plan``) decides which transformer blocks / groups run BF16 and which stay FP32 (OpenVINO's
``precise`` mark on their matmuls, ``runtime.backends.openvino.mark_ir``). When the gate passes (or
``force``), the manifest gets a record under ``precision_gates["openvino-bf16"]`` (the artifact's sha256, the
plan and its FP32 nodes, the metrics, limits, device, OpenVINO version); the openvino backend runs BF16 only on
an artifact whose manifest holds a passed (or forced) record for its own hash, with the recorded plan.

CPUs without BF16 (AVX2, AVX512 without BF16): OpenVINO would silently compile the BF16 hint as FP32, so the
command refuses (exit 2) unless ``--emulate``: the search then runs on ONNX Runtime with BF16 rounding
(``emulated_graph``: Cast to bfloat16 and back around the inputs and the output of each low-precision matmul,
FP32 accumulation, as AVX512-BF16 and AMX do) to preview the plan; nothing is recorded.
"""
from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import Manifest, check_artifact, load_manifest, write_manifest
from aaclip.contract.score import image_score
from aaclip.runtime.backends import RunnerOptions, open_runner

from .gate import GateLimits, GateReport, evaluate_gate
from .inference import Collect, FrameOutputs, run_items
from .inputs import FrameInput, Item
from .int8 import _collect, gate_speedup, holdout_set, search_step_limits, search_subset
from .search import DEFAULT_BUDGET_S, DEFAULT_SEARCH_FRAMES, Plan, Unit, plan_from_record, search_plan, tower_units

log = logging.getLogger(__name__)

BACKEND = "openvino"
DEFAULT_FRAMES = 32
DEFAULT_HOLDOUT = 16
ONNX_MATMULS = {"MatMul": "MatMul", "Conv": "Convolution", "Gemm": "MatMul"}


@dataclass(frozen=True)
class PrecisionGateOptions:
    """``aaclip-calibrate bf16``'s settings (defaults in docs/calibration.md)."""

    precision: str = "bf16"
    max_frames: int = DEFAULT_FRAMES     # normal frames read (all of them are test frames: nothing is fitted)
    holdout: int = DEFAULT_HOLDOUT       # synthetic products (and as many defective) added
    limits: GateLimits = GateLimits()
    force: bool = False                  # record the mode even when the gate fails (marked forced)
    batch: int = 1
    seed: int = 0
    runner: RunnerOptions = RunnerOptions()  # device, threads, cache of the backend that will run the line
    search: bool = True                  # the accuracy search (False: every transformer matmul BF16)
    budget_s: Optional[float] = DEFAULT_BUDGET_S
    search_frames: int = DEFAULT_SEARCH_FRAMES
    plan: Optional[dict] = None          # a recorded plan to re-apply (no search)
    emulate: bool = False                # no BF16 here: preview the plan on ONNX Runtime with BF16 rounding


@dataclass
class PrecisionGateResult:
    gate: GateReport
    written: bool
    record: dict
    manifest: Optional[Path]
    search: Optional[Plan] = None
    units: Sequence[Unit] = ()
    speedup: Optional[dict] = None
    emulated: bool = False


def bf16_units(onnx_path: Path) -> list[Unit]:
    """The search's units of the graph's transformer matmuls (``openvino.transformer_matmul``: the image tower's
    MatMul/Conv, attention's activation products included; not the adapters, projections and head)."""
    import onnx
    from aaclip.runtime.backends.openvino import transformer_matmul

    model = onnx.load(str(onnx_path), load_external_data=False)
    constants = {t.name for t in model.graph.initializer}
    constants.update(o for n in model.graph.node if n.op_type == "Constant" for o in n.output)
    nodes = [(n.name, len(n.input) > 1 and n.input[1] in constants) for n in model.graph.node
             if n.op_type in ONNX_MATMULS and transformer_matmul(ONNX_MATMULS[n.op_type], n.name)]
    return tower_units(nodes)


def emulated_graph(onnx_path: Path, low_nodes: frozenset, out: Path) -> Path:
    """``onnx_path`` with BF16 rounding (Cast to bfloat16 and back) on both inputs and the output of every node
    in ``low_nodes``: what a BF16 matmul with FP32 accumulation computes, runnable on any CPU."""
    import onnx
    from onnx import TensorProto, helper

    model = onnx.load(str(onnx_path))
    nodes = []
    for node in model.graph.node:
        if node.name not in low_nodes:
            nodes.append(node)
            continue
        for i, name in enumerate(list(node.input[:2])):
            half, back = f"{node.name}/bf16_in{i}", f"{node.name}/bf16_in{i}_f32"
            nodes.append(helper.make_node("Cast", [name], [half], to=TensorProto.BFLOAT16, name=half))
            nodes.append(helper.make_node("Cast", [half], [back], to=TensorProto.FLOAT, name=back))
            node.input[i] = back
        result = node.output[0]
        node.output[0] = f"{node.name}/f32_out"
        nodes.append(node)
        nodes.append(helper.make_node("Cast", [node.output[0]], [f"{node.name}/bf16_out"], to=TensorProto.BFLOAT16,
                                      name=f"{node.name}/bf16_out"))
        nodes.append(helper.make_node("Cast", [f"{node.name}/bf16_out"], [result], to=TensorProto.FLOAT,
                                      name=f"{node.name}/bf16_out_f32"))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, str(out))
    return out


def _run(manifest: Manifest, items: Sequence[Item], precision: str, o: PrecisionGateOptions,
         fp32_nodes: frozenset = frozenset()) -> tuple[FrameOutputs, Optional[dict], float]:
    """Outputs of every item in ``precision`` (ungated: this is the gate) with ``fp32_nodes`` kept FP32, the
    layers per runtime precision, and the seconds the frames took."""
    extra = {**o.runner.extra, "precision": precision, "ungated": True}
    if precision != "fp32":
        extra["fp32_nodes"] = tuple(sorted(fp32_nodes))
    runner = open_runner(manifest, BACKEND, dataclasses.replace(o.runner, extra=extra))
    with runner:
        t0 = time.perf_counter()
        out = run_items(runner, manifest, items, Collect(o.batch, keep_maps=True))
        return out, getattr(runner, "execution_precision", None), time.perf_counter() - t0


def _run_emulated(manifest: Manifest, items: Sequence[Item], o: PrecisionGateOptions, low_nodes: Optional[frozenset],
                  work: Path) -> FrameOutputs:
    """Outputs on ONNX Runtime: the FP32 graph (``low_nodes`` None) or its BF16 emulation."""
    path = manifest.artifact_path if low_nodes is None else emulated_graph(manifest.artifact_path, low_nodes,
                                                                            work / "emulated.onnx")
    graph = dataclasses.replace(manifest, artifact_path=Path(path))
    with open_runner(graph, "onnxruntime", RunnerOptions(device="cpu", threads=o.runner.threads)) as runner:
        return run_items(runner, manifest, items, Collect(o.batch, keep_maps=True))


def gate_precision(artifact: Path, normals: FrameInput, anomalies: Optional[FrameInput] = None,
                   options: PrecisionGateOptions = PrecisionGateOptions()) -> PrecisionGateResult:
    """Search which blocks run ``options.precision`` on OpenVINO, gate the plan against FP32, and record it in
    the manifest when it passes (emulated: nothing is recorded)."""
    from aaclip.runtime.backends.openvino import bf16_capable, device_name, import_openvino

    o = options
    artifact = Path(artifact)
    manifest = load_manifest(artifact)
    check_artifact(manifest)
    if manifest.artifact_format != "onnx":
        raise UserError(f"{artifact.name} is not an ONNX graph; OpenVINO's {o.precision} runs the exported .onnx")
    if manifest.precision != "fp32":
        raise UserError(f"{artifact.name} has precision {manifest.precision!r}; the {o.precision} gate compares with "
                        "FP32 and starts from the FP32 export (aaclip-export CKPT --precision fp32)")
    ov = import_openvino()
    device = device_name(o.runner.device)
    if not o.emulate and not bf16_capable(ov.Core(), device):
        caps = ", ".join(ov.Core().get_property(device, "OPTIMIZATION_CAPABILITIES"))
        raise UserError(f"this {device} has no BF16 (OpenVINO: {caps}): run aaclip-calibrate bf16 on the line's machine "
                        "(AVX512-BF16 or AMX), or add --emulate to preview the plan with BF16 rounding (nothing recorded)")
    units = bf16_units(artifact)
    if not units:
        raise UserError(f"{artifact.name} has no transformer matmuls for BF16; is it an aaclip-export FP32 graph?")
    fixed = plan_from_record(o.plan, units) if o.plan is not None else None
    items = _collect(normals, manifest, o.max_frames)
    if not items and not o.holdout:
        raise UserError(f"no frames read from {normals.description}")
    test_items, labels, desc = holdout_set(manifest, items, anomalies, o.holdout, o.seed,
                                           max(o.holdout, len(items)) * 4)
    subset = search_subset(labels, o.search_frames)
    log.info("accuracy gate for %s%s: %d frames (%s)", o.precision, " (emulated)" if o.emulate else "",
             len(test_items), desc)
    p = manifest.score
    state: dict = {}
    with tempfile.TemporaryDirectory(prefix="aaclip-bf16-") as work:
        if o.emulate:
            ref = _run_emulated(manifest, test_items, o, None, Path(work))
            ref_s = None
        else:
            ref, _, ref_s = _run(manifest, test_items, "fp32", o)
        ref_scores = image_score(ref.map_max, ref.cls_score, p).astype(np.float64)

        def gate(low: frozenset, idx: np.ndarray, limits: GateLimits = o.limits) -> GateReport:
            fp32_nodes = frozenset(n for u in units if u.name not in low for n in u.nodes)
            chosen = [test_items[i] for i in idx]
            if o.emulate:
                low_nodes = frozenset(n for u in units if u.name in low for n in u.nodes)
                test = _run_emulated(manifest, chosen, o, low_nodes, Path(work))
            else:
                test, state["layers"], state["s"] = _run(manifest, chosen, o.precision, o, fp32_nodes)
            return evaluate_gate(ref.maps[idx], test.maps, ref_scores[idx],
                                 image_score(test.map_max, test.cls_score, p).astype(np.float64), labels[idx], limits)

        everything = frozenset(u.name for u in units)
        full = np.arange(len(labels))
        if fixed is not None:
            search, report = fixed, gate(frozenset(fixed.low), full)
        elif not o.search:
            search, report = Plan(low=[u.name for u in units], fp32=[], searched=False), gate(everything, full)
        else:
            step_limits = search_step_limits(o.limits, labels[subset], labels.size)
            search, report = search_plan(units, lambda low: gate(low, subset, step_limits), lambda low: gate(low, full),
                                         o.budget_s)
    speedup = gate_speedup(ref_s, state["s"], len(test_items), BACKEND) if ref_s is not None else None
    fp32_nodes = search.fp32_nodes(units)
    record = {
        "backend": BACKEND, "precision": o.precision, "artifact_sha256": manifest.sha256,
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "passed": report.passed, "forced": bool(o.force and not report.passed),
        "device": o.runner.device, "openvino": ov.__version__, "runtime_precisions": state.get("layers"),
        "input": normals.description, "holdout": desc, "gate": report.to_dict(),
        "plan": search.to_dict(), "fp32_nodes": fp32_nodes, "speedup": speedup,
    }
    result = PrecisionGateResult(report, False, record, None, search, units, speedup, o.emulate)
    if o.emulate or not (report.passed or o.force):
        return result
    data = copy.deepcopy(manifest.data)
    gates = dict(data.get("precision_gates") or {})
    gates[f"{BACKEND}-{o.precision}"] = record
    data["precision_gates"] = gates
    path = write_manifest(artifact, data)
    if manifest.calibrated:
        log.warning("the score constants were fitted on FP32 outputs; %s shifts raw outputs slightly: run "
                    "aaclip-calibrate threshold %s --backend openvino --precision %s", o.precision, artifact,
                    o.precision)
    return dataclasses.replace(result, written=True, manifest=path)


__all__ = ["PrecisionGateOptions", "PrecisionGateResult", "gate_precision", "bf16_units", "emulated_graph"]
