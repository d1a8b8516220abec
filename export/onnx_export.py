"""Checkpoint -> one ONNX graph (FP32 or FP16) with its manifest.

The exporter is pinned: PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``),
which still exists in torch 2.15 (deprecated). It writes a flat graph of standard ONNX ops at exactly
the requested opset (17 for TensorRT 10.3 / JetPack 6), no onnxscript functions and no ``com.microsoft``
ops; the dynamo exporter's minimum opset is 18 and its graph depends on the decomposition tables of the
torch version. Attention is traced through ``graph.ExportAttention`` (batch as -1 in every reshape), with
batch 2, so the dynamic batch axis is exercised while tracing; tests run batches 1..4.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import manifest_for, manifest_path
from aaclip.contract.tensors import CLASS_INPUT_NAME, INPUT_NAME, OUTPUT_NAMES

from .graph import PRECISIONS, DeployGraph
from .manifest_builder import export_draft
from .replace import commit, keep_calibration, staging

log = logging.getLogger(__name__)

OPSET_MIN, OPSET_MAX = 17, 20  # TensorRT 10.3 (JetPack 6) parses opsets up to 20
DEFAULT_OPSET = 17
TRACE_BATCH = 2
EXTERNAL_DATA_AUTO_BYTES = 1_800_000_000  # protobuf cannot hold 2 GiB; leave headroom for the graph itself
EXTERNAL_DATA_SUFFIX = ".data"
STANDARD_DOMAINS = ("", "ai.onnx")


@dataclass(frozen=True)
class ExportResult:
    path: Path
    manifest: Path
    sha256: str
    external_data: tuple[str, ...]
    classes: tuple[tuple[str, str], ...]


# ---- argument parsing and validation (shared with the CLI) -----------------------------------------
def check_opset(opset: int) -> int:
    if not OPSET_MIN <= int(opset) <= OPSET_MAX:
        raise UserError(f"opset {opset} is outside {OPSET_MIN}..{OPSET_MAX}: TensorRT 10.3 (JetPack 6) parses "
                        f"opsets {OPSET_MIN}-{OPSET_MAX}; use --opset {DEFAULT_OPSET}")
    return int(opset)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return precision


def parse_input_size(text: Optional[str]) -> Optional[tuple[int, int]]:
    """``"1080x1920"`` (height x width) or ``"518"`` -> (H, W); None stays None."""
    if text is None or str(text).strip() == "":
        return None
    parts = str(text).lower().replace("*", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        values = []
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise UserError(f"--input-size {text!r} is not HxW (e.g. 1080x1920 for a full-HD camera)")
    return values[0], values[1]


def resolve_classes(table: dict[str, str], requested: Optional[Sequence[str]] = None) -> list[tuple[str, str]]:
    """(class name, object name) pairs in artifact order: ``requested`` (checked) or all of the checkpoint's."""
    if not table:
        raise UserError("the checkpoint's config lists no classes: add them to config.json 'classes' "
                        "(class name -> object name) or re-train with --classes")
    names = list(requested) if requested else list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        raise UserError(f"unknown class {unknown[0]!r}; the checkpoint has: {', '.join(table)}")
    if len(set(names)) != len(names):
        raise UserError(f"--classes lists a class twice: {', '.join(names)}")
    return [(n, table[n]) for n in names]


def default_output(ckpt_dir: Path, precision: str, input_hw: Optional[tuple[int, int]], suffix: str) -> Path:
    size = f"-{input_hw[0]}x{input_hw[1]}" if input_hw else ""
    return Path(ckpt_dir) / f"aaclip-{precision}{size}{suffix}"


@dataclass(frozen=True)
class ExportOptions:
    """What ``aaclip-export`` writes: ``precision``, ``classes`` (None: all of the checkpoint's), the camera
    resolution baked into the graph (``input_size`` (H, W), None: the model's), ``opset``, ``external_data``
    (None: by size), ``clip_weights`` when they moved, and a ``rebuild`` command overriding the derived one."""

    precision: str = "fp32"
    classes: Optional[Sequence[str]] = None
    input_size: Optional[tuple[int, int]] = None
    opset: int = DEFAULT_OPSET
    external_data: Optional[bool] = None
    clip_weights: Optional[Path] = None
    rebuild: Optional[str] = None
    discard_calibration: bool = False  # replace a calibrated artifact whose outputs change (else refused)


def rebuild_command(ckpt_dir: Path, out: Path, fmt: str, options: ExportOptions, extra: Sequence[str] = ()) -> str:
    """The ``aaclip-export`` command line that writes ``out`` again (recorded in the manifest)."""
    import shlex

    args = ["aaclip-export", str(ckpt_dir), "--format", fmt, "--precision", options.precision, "--out", str(out)]
    if options.classes is not None:
        args += ["--classes", ",".join(options.classes)]
    if options.input_size:
        args += ["--input-size", f"{options.input_size[0]}x{options.input_size[1]}"]
    if options.opset != DEFAULT_OPSET:
        args += ["--opset", str(options.opset)]
    return shlex.join(list(args) + list(extra))


# ---- the graph ---------------------------------------------------------------------------------------
def compute_anchors(model, object_names: Sequence[str]) -> torch.Tensor:
    """The per-class constants (C, ...) of any family model, float32 on the CPU, computed once.

    The one entry point for them (export, verification, benchmarks): ``model.class_constants``; for
    AA-CLIP the text anchors (C, E, 2) of the adapted text tower.
    """
    with torch.no_grad():
        return model.class_constants(list(object_names)).detach().float().cpu()


def graph_problems(proto, opset_range: tuple[int, int] = (OPSET_MIN, OPSET_MAX)) -> list[str]:
    """Reasons a graph breaks the contract: non-standard op domains (e.g. com.microsoft), opset, I/O."""
    problems = []
    for imp in proto.opset_import:
        if imp.domain in STANDARD_DOMAINS and not opset_range[0] <= imp.version <= opset_range[1]:
            problems.append(f"opset {imp.version} outside {opset_range}")
        elif imp.domain not in STANDARD_DOMAINS:
            problems.append(f"imports non-standard op domain {imp.domain!r}")
    for node in proto.graph.node:
        if node.domain not in STANDARD_DOMAINS:
            problems.append(f"node {node.name} ({node.op_type}) is in domain {node.domain!r}")
    outputs = tuple(o.name for o in proto.graph.output)
    if outputs != OUTPUT_NAMES:
        problems.append(f"outputs are {outputs}, expected {OUTPUT_NAMES}")
    return problems


def _trace_inputs(graph: DeployGraph) -> tuple[torch.Tensor, ...]:
    rng = np.random.default_rng(0)
    h, w = graph.input_hw
    image = torch.from_numpy(rng.integers(0, 256, (TRACE_BATCH, h, w, 3), dtype=np.uint8))
    if not graph.has_class_input:
        return (image,)
    class_id = torch.tensor([0, graph.num_classes - 1], dtype=torch.int64)
    return image, class_id


def trace_to_onnx(graph: DeployGraph, path: Path, opset: int) -> None:
    """Run the pinned exporter on ``graph`` (batch axis dynamic) into ``path``."""
    inputs = _trace_inputs(graph)
    input_names = [INPUT_NAME] + ([CLASS_INPUT_NAME] if graph.has_class_input else [])
    dynamic = {name: {0: "B"} for name in input_names + list(OUTPUT_NAMES)}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter is deprecated, pinned
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        # the pad amounts of the reflect padding are reversed with a Slice(step -1) on constants: harmless
        warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
        torch.onnx.export(
            graph, inputs, str(path), dynamo=False, opset_version=opset, input_names=input_names,
            output_names=list(OUTPUT_NAMES), dynamic_axes=dynamic, do_constant_folding=True,
            export_params=True,
        )


def finish_graph(traced: Path, staged: Path, doc: str, external_data: Optional[bool] = None) -> tuple[str, ...]:
    """The traced graph saved at ``staged`` (a path in a staging folder, see ``replace.staging``): checked
    against the contract, with explicit types on every tensor (strict shape inference, file to file) and
    ``doc`` as its doc string; its tensors go to ``<name>.data`` beside it when asked or too large for one
    protobuf file. Returns the external data file names.

    Memory: the graph is parsed in Python once, to check it, and never serialized from Python when it stays
    one file: encoding a 1.26 GB ViT-L proto in Python took 5 GB on top of it (the encoder's growing buffer,
    then the bytes object), the export's peak. The traced file is moved instead and the doc string appended
    as a second ModelProto record: protobuf parsers merge concatenated records, the last value of a singular
    field winning (the encoding's "last one wins"), so every reader sees one model with that doc string.
    """
    import onnx

    size = traced.stat().st_size
    use_external = external_data if external_data is not None else size > EXTERNAL_DATA_AUTO_BYTES
    if size <= EXTERNAL_DATA_AUTO_BYTES:
        inferred = traced.with_name("inferred.onnx")
        onnx.shape_inference.infer_shapes_path(str(traced), str(inferred), strict_mode=True)
        os.replace(inferred, traced)
    proto = onnx.load(str(traced))
    problems = graph_problems(proto)
    if problems:
        raise RuntimeError(f"the exported graph breaks the contract: {'; '.join(problems)}")
    data_name = staged.name + EXTERNAL_DATA_SUFFIX
    if use_external:  # the tensors are written one by one; only the small graph is serialized
        proto.doc_string = doc
        onnx.save_model(proto, str(staged), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data_name, size_threshold=1024)
    del proto
    if not use_external:
        shutil.move(traced, staged)
        with open(staged, "ab") as f:
            f.write(onnx.ModelProto(doc_string=doc).SerializeToString())
    onnx.checker.check_model(str(staged))  # path form: works beyond 2 GiB and checks the data file
    return (data_name,) if use_external else ()


def export_onnx(ckpt_dir: Path, out: Optional[Path] = None, options: Optional[ExportOptions] = None, model=None,
                **changes) -> ExportResult:
    """Export the checkpoint at ``ckpt_dir`` to an ONNX graph + manifest; returns what was written.

    ``options`` (or keyword ``changes`` of its fields, e.g. ``precision="fp16"``) say what to write; ``model``
    (a family model already loaded from ``ckpt_dir``) skips loading.
    """
    from aaclip.train.checkpoint import checkpoint_sha256, load_checkpoint

    options = dataclasses.replace(options or ExportOptions(), **changes)
    precision, classes, input_size, opset = options.precision, options.classes, options.input_size, options.opset
    ckpt_dir = Path(ckpt_dir)
    check_opset(opset)
    check_precision(precision)
    if model is None:
        model = load_checkpoint(ckpt_dir, clip_weights=options.clip_weights)
    config = model.config
    class_table = resolve_classes(config.classes, classes)
    out = Path(out) if out is not None else default_output(ckpt_dir, precision, input_size, ".onnx")
    size = int(config.image_size)
    input_hw = tuple(input_size) if input_size else (size, size)

    constants = compute_anchors(model, [obj for _, obj in class_table])
    command = options.rebuild or rebuild_command(ckpt_dir, out, "onnx", options)
    draft = export_draft(model, precision, class_table, input_hw, opset, command, ckpt_dir,
                         checkpoint_sha256(ckpt_dir))
    graph = DeployGraph(model, constants, input_hw=input_hw, precision=precision).eval()
    del model  # the deploy graph holds its own copy of what it needs: a model loaded here is freed now
    log.info("exporting %s (%s, %d class%s, input %dx%d, opset %d)", out.name, precision, len(class_table),
             "" if len(class_table) == 1 else "es", input_hw[0], input_hw[1], opset)
    with tempfile.TemporaryDirectory(prefix="aaclip-export-") as tmp:
        traced = Path(tmp) / "graph.onnx"
        trace_to_onnx(graph, traced, opset)
        del graph
        gc.collect()
        doc = f"aaclip-edge {config.method} graph ({precision}); the contract is docs/graph-contract.md"
        with staging(out) as staged:  # graph, data and manifest replace the previous ones as a set, or not at all
            external = finish_graph(traced, staged / out.name, doc, options.external_data)
            manifest = keep_calibration(out, manifest_for(staged / out.name, "onnx", draft, external),
                                        options.discard_calibration)
            mpath = commit(staged, out, external, manifest)
    sha = manifest["artifact"]["sha256"]
    log.info("wrote %s (%.1f MB) and %s", out, out.stat().st_size / 1e6, mpath.name)
    return ExportResult(out, mpath, sha, tuple(external), tuple(class_table))


__all__ = [
    "ExportResult",
    "ExportOptions",
    "export_onnx",
    "check_opset",
    "check_precision",
    "parse_input_size",
    "resolve_classes",
    "compute_anchors",
    "graph_problems",
    "finish_graph",
    "trace_to_onnx",
    "default_output",
    "rebuild_command",
    "manifest_path",
    "OPSET_MIN",
    "OPSET_MAX",
    "DEFAULT_OPSET",
]
