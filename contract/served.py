"""The graph contract as an inference server serves it (Triton, KServe v2 protocol): one source of truth for
the model repository export, ``aaclip-serve`` and the runtime's ``triton`` client.

A served model keeps the artifact's tensor names; the batch axis is the server's (``max_batch_size`` > 0), so
every tensor is described without it. Per-image scalars (``class_id``, ``map_max``, ``cls_score``, shape
``[B]`` in the graph) are ``dims: [1]`` on the wire with ``reshape: { shape: [] }`` for the model, as Triton's
model configuration asks. The manifest travels with the model as a ``parameters`` entry (the full JSON) and
its score constants as one ``score.<key>`` entry each, so a client reads them from the server.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .errors import UserError
from .score import SCORE_KEYS
from .tensors import CLASS_INPUT_DTYPE, INPUT_DTYPE, INPUT_NAME, OUTPUT_DTYPE

MANIFEST_PARAMETER = "aaclip_manifest"
SCORE_PARAMETER_PREFIX = "score."
DEFAULT_MODEL_NAME = "aaclip"
DEFAULT_GRPC_PORT = 8001
DEFAULT_HTTP_PORT = 8000
DEFAULT_METRICS_PORT = 8002
MODEL_FILES = {"onnx": "model.onnx", "engine": "model.plan"}  # artifact format -> file name in a version folder
WIRE_TYPES = {INPUT_DTYPE: "UINT8", CLASS_INPUT_DTYPE: "INT64", OUTPUT_DTYPE: "FP32"}  # numpy -> KServe v2


@dataclass(frozen=True)
class ServedTensor:
    """One input or output of a served model, as Triton's model configuration describes it."""

    name: str
    dtype: str                                  # numpy dtype name ("uint8", "int64", "float32")
    dims: tuple[int, ...]                       # without the batch axis
    reshape: Optional[tuple[int, ...]] = None   # the shape the model itself sees (Triton ``reshape``)

    @property
    def wire_type(self) -> str:
        """KServe v2 datatype (``UINT8``, ``INT64``, ``FP32``)."""
        return WIRE_TYPES[self.dtype]

    @property
    def config_type(self) -> str:
        """Triton model-configuration type (``TYPE_UINT8``, ...)."""
        return "TYPE_" + self.wire_type


def _tensor(name: str, dtype: str, shape: Sequence[Any]) -> ServedTensor:
    dims = tuple(int(d) for d in shape)
    return ServedTensor(name, dtype, dims) if dims else ServedTensor(name, dtype, (1,), ())


def served_inputs(manifest) -> tuple[ServedTensor, ...]:
    """The inputs of ``manifest``'s artifact as served: ``image`` [H, W, 3] uint8, ``class_id`` [1] -> []."""
    tensors = [_tensor(INPUT_NAME, INPUT_DTYPE, (manifest.height, manifest.width, 3))]
    if manifest.class_input:
        tensors.append(_tensor(manifest.class_input, CLASS_INPUT_DTYPE, ()))
    return tuple(tensors)


def served_outputs(manifest) -> tuple[ServedTensor, ...]:
    """The outputs as served, from the manifest's ``outputs`` (their shapes without the leading ``B``)."""
    out = []
    for spec in manifest.data["outputs"]:
        shape = [d for d in spec.get("shape", []) if not isinstance(d, str)]
        out.append(_tensor(spec["name"], spec.get("dtype", OUTPUT_DTYPE), shape))
    return tuple(out)


def model_parameters(manifest_data: Mapping[str, Any]) -> dict[str, str]:
    """The ``parameters`` of a served model: the manifest (compact JSON) and each score constant."""
    params = {MANIFEST_PARAMETER: json.dumps(manifest_data, separators=(",", ":"), ensure_ascii=True)}
    score = manifest_data["score"]
    for key in SCORE_KEYS:
        params[SCORE_PARAMETER_PREFIX + key] = repr(float(score[key]))
    params[SCORE_PARAMETER_PREFIX + "source"] = str(score.get("source", "default"))
    return params


def check_served_tensors(manifest, max_batch_size: int, inputs: Sequence[Mapping], outputs: Sequence[Mapping],
                         batch: int = 1) -> list[str]:
    """What a server's model metadata (KServe v2: ``name``, ``datatype``, ``shape`` with -1 for the batch)
    gets wrong against ``manifest``; empty when it serves what the runtime expects."""
    problems = []
    if max_batch_size < 1:
        problems.append(f"max_batch_size is {max_batch_size}: the model must batch (max_batch_size >= 1)")
    elif batch > max_batch_size:
        problems.append(f"--batch {batch} exceeds the server's max_batch_size {max_batch_size}")
    for kind, want, have in (("input", served_inputs(manifest), inputs), ("output", served_outputs(manifest), outputs)):
        by_name = {t.get("name"): t for t in have}
        for tensor in want:
            got = by_name.get(tensor.name)
            if got is None:
                problems.append(f"{kind} {tensor.name!r} is missing (the server has {sorted(by_name)})")
                continue
            shape = [int(d) for d in got.get("shape", [])]
            if got.get("datatype") != tensor.wire_type or shape[1:] != list(tensor.dims):
                problems.append(f"{kind} {tensor.name!r} is {got.get('datatype')} {shape}, expected "
                                f"{tensor.wire_type} {[-1, *tensor.dims]}")
        if kind == "input":
            extra = sorted(set(by_name) - {t.name for t in want})
            if extra:
                problems.append(f"the server's model takes input(s) {extra} the artifact does not have")
    return problems


def find_repository_model(path: Path) -> tuple[Path, Path]:
    """(config.pbtxt, model file) of a Triton model folder, or of a repository holding exactly one model: the
    newest numeric version folder that has a model file (its manifest lies beside it)."""
    path = Path(path)
    if not (path / "config.pbtxt").is_file():
        models = [p for p in sorted(path.iterdir()) if (p / "config.pbtxt").is_file()] if path.is_dir() else []
        if len(models) != 1:
            found = ", ".join(p.name for p in models) or "none"
            raise UserError(f"{path} is not a Triton model folder (no config.pbtxt) nor a repository with exactly one "
                            f"model (found: {found}); give REPO/<model>")
        path = models[0]
    versions = sorted((int(p.name), p) for p in path.iterdir() if p.is_dir() and p.name.isdigit())
    for _, folder in reversed(versions):
        for name in MODEL_FILES.values():
            if (folder / name).is_file():
                return path / "config.pbtxt", folder / name
    raise UserError(f"{path} has no version folder with {' or '.join(MODEL_FILES.values())}")


__all__ = ["MANIFEST_PARAMETER", "SCORE_PARAMETER_PREFIX", "DEFAULT_MODEL_NAME", "DEFAULT_GRPC_PORT",
           "DEFAULT_HTTP_PORT", "DEFAULT_METRICS_PORT", "MODEL_FILES", "WIRE_TYPES", "ServedTensor", "served_inputs",
           "served_outputs", "model_parameters", "check_served_tensors", "find_repository_model"]
