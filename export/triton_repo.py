"""An exported artifact -> a Triton Inference Server model repository (docs/deploy-triton.md).

    REPO/<name>/config.pbtxt
    REPO/<name>/<version>/model.onnx (+ its external data) | model.plan
    REPO/<name>/<version>/model.onnx.manifest.json | model.plan.manifest.json

``config.pbtxt`` follows Triton's model configuration: platform ``onnxruntime_onnx`` or ``tensorrt_plan``,
``max_batch_size`` from the batch profile, the contract's tensors without their batch axis
(``aaclip.contract.served``), dynamic batching, an instance group, for ONNX optionally the TensorRT execution
accelerator, a warm-up on a zero frame, and the manifest plus its score constants as ``parameters``. The
tests parse every generated file with Triton's own ``model_config.proto`` (shipped with tritonclient).
"""
from __future__ import annotations

import copy
import logging
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from aaclip.contract.errors import UserError
from aaclip.contract.manifest import Manifest, load_manifest, manifest_path, open_artifact, write_manifest
from aaclip.contract.served import (
    DEFAULT_MODEL_NAME,
    MODEL_FILES,
    ServedTensor,
    model_parameters,
    served_inputs,
    served_outputs,
)

log = logging.getLogger(__name__)

PLATFORMS = {"onnx": "onnxruntime_onnx", "engine": "tensorrt_plan"}
INSTANCE_KINDS = ("gpu", "cpu")
ACCELERATOR_PRECISIONS = ("fp32", "fp16")
_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


@dataclass(frozen=True)
class TritonRepoOptions:
    """How the model is served (each field is an ``aaclip-export --format triton`` option)."""

    model_name: str = DEFAULT_MODEL_NAME
    version: int = 1
    max_batch: int = 8                       # ONNX: the largest batch the server forms; engines: their profile's
    preferred_batches: tuple[int, ...] = ()  # dynamic batching's preferred sizes (empty: none)
    max_queue_delay_us: int = 1000           # how long the batcher waits for more requests
    instances: int = 1
    instance_kind: str = "gpu"
    gpus: tuple[int, ...] = ()               # empty: every GPU the server sees
    tensorrt_accelerator: Optional[str] = None  # ONNX on GPU: "fp32" / "fp16" TensorRT execution accelerator
    warmup: bool = True

    def check(self, artifact_format: str, batch_max: Optional[int]) -> "TritonRepoOptions":
        """The options for an artifact of ``artifact_format``: engines take their profile's max batch."""
        if not _NAME.match(self.model_name):
            raise UserError(f"--model-name {self.model_name!r}: use letters, digits, '_', '.', '-' only")
        if self.version < 1:
            raise UserError(f"--model-version must be >= 1, got {self.version}")
        if self.instances < 1:
            raise UserError(f"--instances must be >= 1, got {self.instances}")
        if self.instance_kind not in INSTANCE_KINDS:
            raise UserError(f"--instance-kind {self.instance_kind!r}: use {' or '.join(INSTANCE_KINDS)}")
        if self.max_queue_delay_us < 0:
            raise UserError(f"--max-queue-delay-us must be >= 0, got {self.max_queue_delay_us}")
        options = self
        if artifact_format == "engine":
            if self.tensorrt_accelerator:
                raise UserError("--tensorrt-accelerator applies to ONNX models; an engine is TensorRT already")
            if self.instance_kind != "gpu":
                raise UserError("a TensorRT engine runs on a GPU: --instance-kind gpu")
            options = _replace(self, max_batch=batch_max or self.max_batch)
        elif self.tensorrt_accelerator and self.tensorrt_accelerator not in ACCELERATOR_PRECISIONS:
            raise UserError(f"--tensorrt-accelerator {self.tensorrt_accelerator!r}: use fp32 or fp16")
        elif self.tensorrt_accelerator and self.instance_kind != "gpu":
            raise UserError("--tensorrt-accelerator needs --instance-kind gpu (it is a GPU execution accelerator)")
        if options.max_batch < 1:
            raise UserError(f"the max batch must be >= 1, got {options.max_batch}")
        bad = [b for b in options.preferred_batches if not 1 <= b <= options.max_batch]
        if bad:
            raise UserError(f"preferred batch sizes {bad} are outside 1..{options.max_batch} (the max batch)")
        return options


def _replace(options: TritonRepoOptions, **changes) -> TritonRepoOptions:
    from dataclasses import replace

    return replace(options, **changes)


# ---- config.pbtxt -------------------------------------------------------------------------------------
def _quote(text: str) -> str:
    """A protobuf text-format string literal (the manifest JSON is ASCII: only backslash and quote need escapes)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def _dims(dims: Sequence[int]) -> str:
    return "[ " + ", ".join(str(int(d)) for d in dims) + " ]" if dims else "[ ]"


def _tensor_block(t: ServedTensor, indent: str) -> list[str]:
    lines = [f"{indent}{{", f"{indent}  name: {_quote(t.name)}", f"{indent}  data_type: {t.config_type}",
             f"{indent}  dims: {_dims(t.dims)}"]
    if t.reshape is not None:
        lines.append(f"{indent}  reshape: {{ shape: {_dims(t.reshape)} }}")
    lines.append(f"{indent}}}")
    return lines


def _list(field: str, blocks: list[list[str]]) -> list[str]:
    lines = [f"{field} ["]
    for i, block in enumerate(blocks):
        lines += block[:-1] + [block[-1] + ("," if i < len(blocks) - 1 else "")]
    return lines + ["]"]


def model_config_text(manifest: Manifest, options: TritonRepoOptions) -> str:
    """``config.pbtxt`` of ``manifest``'s artifact served with ``options`` (already ``check``-ed)."""
    fmt = manifest.artifact_format
    inputs, outputs = served_inputs(manifest), served_outputs(manifest)
    lines = [f"name: {_quote(options.model_name)}", f"platform: {_quote(PLATFORMS[fmt])}",
             f"max_batch_size: {options.max_batch}",
             f"default_model_filename: {_quote(MODEL_FILES[fmt])}"]
    lines += _list("input", [_tensor_block(t, "  ") for t in inputs])
    lines += _list("output", [_tensor_block(t, "  ") for t in outputs])
    lines.append("dynamic_batching {")
    if options.preferred_batches:
        lines.append(f"  preferred_batch_size: {_dims(sorted(set(options.preferred_batches)))}")
    lines += [f"  max_queue_delay_microseconds: {options.max_queue_delay_us}", "}"]
    group = ["  {", f"    count: {options.instances}", f"    kind: KIND_{options.instance_kind.upper()}"]
    if options.gpus and options.instance_kind == "gpu":
        group.append(f"    gpus: {_dims(options.gpus)}")
    lines += _list("instance_group", [group + ["  }"]])
    if fmt == "onnx" and options.tensorrt_accelerator:
        lines += ["optimization {", "  execution_accelerators {", "    gpu_execution_accelerator: [",
                  "      {", '        name: "tensorrt"',
                  f'        parameters {{ key: "precision_mode" value: "{options.tensorrt_accelerator.upper()}" }}',
                  '        parameters { key: "max_workspace_size_bytes" value: "1073741824" }',
                  "      }", "    ]", "  }", "}"]
    if options.warmup:
        warm = ["  {", '    name: "zero_frame"', "    batch_size: 1"]
        for t in inputs:
            warm += ["    inputs {", f"      key: {_quote(t.name)}",
                     f"      value: {{ data_type: {t.config_type} dims: {_dims(t.dims)} zero_data: true }}", "    }"]
        lines += _list("model_warmup", [warm + ["  }"]])
    for key, value in model_parameters(manifest.data).items():
        lines.append(f"parameters {{ key: {_quote(key)} value: {{ string_value: {_quote(value)} }} }}")
    return "\n".join(lines) + "\n"


# ---- the repository -----------------------------------------------------------------------------------
def _place(src: Path, dst: Path, move: bool) -> None:
    if move:
        shutil.move(str(src), str(dst))
    else:
        shutil.copy2(src, dst)


def check_version_free(repo: Path, options: TritonRepoOptions) -> Path:
    """The version folder the model goes to; refuses one that already holds files (Triton may be serving them)."""
    version_dir = Path(repo) / options.model_name / str(options.version)
    if version_dir.exists() and any(version_dir.iterdir()):
        raise UserError(f"{version_dir} exists and is not empty: choose another --model-version (Triton serves the "
                        "newest) or remove it")
    return version_dir


def write_model_repository(artifact: Path, repo: Path, options: TritonRepoOptions = TritonRepoOptions(),
                           move: bool = False) -> Path:
    """Write ``artifact`` (an exported ONNX graph or engine with its manifest) into model repository ``repo``;
    returns the model folder. ``move`` moves the files instead of copying them (a temporary export)."""
    manifest = open_artifact(artifact)
    fmt = manifest.artifact_format
    if fmt == "engine" and manifest.batch_min > 1:
        raise UserError(f"{artifact.name}'s batch profile starts at {manifest.batch_min}, but Triton's batcher sends "
                        "batches from 1: rebuild the engine with --batch 1:OPT:MAX")
    options = options.check(fmt, manifest.batch_max)
    model_dir = Path(repo) / options.model_name
    version_dir = check_version_free(repo, options)
    version_dir.mkdir(parents=True, exist_ok=True)
    dst = version_dir / MODEL_FILES[fmt]
    for name in manifest.external_data:  # ONNX external data keeps its file name (the graph refers to it)
        _place(manifest.artifact_path.parent / name, version_dir / name, move)
    _place(manifest.artifact_path, dst, move)
    data = copy.deepcopy(manifest.data)
    data["artifact"]["file"] = dst.name
    write_manifest(dst, data)
    if move:
        manifest_path(manifest.artifact_path).unlink(missing_ok=True)
    text = model_config_text(load_manifest(dst), options)
    tmp = model_dir / "config.pbtxt.tmp"
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, model_dir / "config.pbtxt")
    log.info("wrote Triton model %s (%s, max batch %d) to %s", options.model_name, PLATFORMS[fmt], options.max_batch,
             model_dir)
    return model_dir


__all__ = ["TritonRepoOptions", "model_config_text", "write_model_repository", "check_version_free", "PLATFORMS", "INSTANCE_KINDS",
           "ACCELERATOR_PRECISIONS"]
