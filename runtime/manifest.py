"""The manifest beside every artifact (docs/graph-contract.md): read, write, and refuse bad artifacts.

The runtime reads only the manifest to run an artifact. Export and calibration use ``write_manifest``
and ``manifest_path`` so the file name and the atomic write live in one place.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional

from .fileio import PathLike, atomic_write_json, sha256_file
from .log import UserError

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "aaclip-manifest"
MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
TRT_FLAVOURS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}  # manifest flavour -> module


class ArtifactError(UserError):
    """The artifact cannot be run as it is; the message names the problem and the rebuild command."""

    def __init__(self, problem: str, rebuild_command: Optional[str] = None):
        self.problem = problem
        self.rebuild_command = rebuild_command
        fix = f"; rebuild it with: {rebuild_command}" if rebuild_command else ""
        super().__init__(f"{problem}{fix}")


@dataclass(frozen=True)
class ScoreParams:
    """Normalization and thresholds of the image score (graph contract, "Image score")."""

    map_lo: float
    map_hi: float
    cls_lo: float
    cls_hi: float
    map_weight: float
    threshold: float
    pixel_threshold: float

    def with_threshold(self, threshold: Optional[float]) -> "ScoreParams":
        return self if threshold is None else replace(self, threshold=float(threshold))


@dataclass(frozen=True)
class Manifest:
    """The parts of a manifest the runtime needs, plus the raw dict (``data``) for everything else."""

    path: Path
    artifact_path: Path
    data: dict
    artifact_format: str
    sha256: str
    input_name: str
    height: int
    width: int
    batch_min: int
    batch_max: Optional[int]
    class_input: Optional[str]
    classes: tuple[str, ...]
    output_names: tuple[str, ...]
    score: ScoreParams
    tensorrt: Optional[dict]
    rebuild_command: Optional[str]

    @property
    def is_engine(self) -> bool:
        return self.tensorrt is not None or self.artifact_path.suffix.lower() in ENGINE_SUFFIXES

    def class_index(self, name: str) -> int:
        """Index of class ``name`` in ``classes``; a clear error listing the available ones otherwise."""
        try:
            return self.classes.index(name)
        except ValueError:
            raise UserError(
                f"unknown class {name!r} for {self.artifact_path.name}; available: {', '.join(self.classes)}"
            ) from None


def manifest_path(artifact_path: PathLike) -> Path:
    """``model.onnx`` -> ``model.onnx.manifest.json`` (beside the artifact)."""
    p = Path(artifact_path)
    return p.with_name(p.name + MANIFEST_SUFFIX)


def write_manifest(artifact_path: PathLike, data: Mapping[str, Any]) -> Path:
    """Write ``data`` as the manifest of ``artifact_path`` atomically; returns the manifest path."""
    path = manifest_path(artifact_path)
    atomic_write_json(path, dict(data))
    return path


def _get(data: Mapping, dotted: str, rebuild: Optional[str], path: Path) -> Any:
    node: Any = data
    for key in dotted.split("."):
        if not isinstance(node, Mapping) or key not in node:
            raise ArtifactError(f"manifest {path} lacks field '{dotted}'", rebuild)
        node = node[key]
    return node


def load_manifest(artifact_path: PathLike) -> Manifest:
    """Read and parse the manifest of ``artifact_path``; refuse a missing, invalid or unknown one."""
    artifact_path = Path(artifact_path)
    path = manifest_path(artifact_path)
    if not path.is_file():
        raise ArtifactError(
            f"no manifest for {artifact_path} (expected {path}); the runtime only runs artifacts exported "
            "with their manifest", None)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ArtifactError(f"manifest {path} is not valid JSON ({e})", None) from None
    if not isinstance(data, dict):
        raise ArtifactError(f"manifest {path} is not a JSON object", None)
    rebuild = data.get("rebuild_command")
    if data.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(f"{path} is not an aaclip manifest (format={data.get('format')!r})", rebuild)
    if data.get("format_version") != MANIFEST_VERSION:
        raise ArtifactError(
            f"manifest {path} has format_version {data.get('format_version')!r}; this runtime reads "
            f"version {MANIFEST_VERSION}", rebuild)

    def g(key: str) -> Any:
        return _get(data, key, rebuild, path)

    batch = g("input.batch")
    class_input = g("class_input")
    classes = tuple(str(c["name"]) for c in g("classes"))
    if not classes:
        raise ArtifactError(f"manifest {path} lists no classes", rebuild)
    s = g("score")
    try:
        score = ScoreParams(*(float(s[k]) for k in (
            "map_lo", "map_hi", "cls_lo", "cls_hi", "map_weight", "threshold", "pixel_threshold")))
    except (KeyError, TypeError, ValueError) as e:
        raise ArtifactError(f"manifest {path} has an invalid 'score' section ({e})", rebuild) from None
    if score.map_hi == score.map_lo or score.cls_hi == score.cls_lo:
        raise ArtifactError(f"manifest {path}: score.map_hi/lo or cls_hi/lo are equal (division by zero)",
                            rebuild)
    return Manifest(
        path=path,
        artifact_path=artifact_path,
        data=data,
        artifact_format=str(g("artifact.format")),
        sha256=str(g("artifact.sha256")),
        input_name=str(g("input.name")),
        height=int(g("input.height")),
        width=int(g("input.width")),
        batch_min=int(batch["min"]) if batch else 1,
        batch_max=int(batch["max"]) if batch else None,
        class_input=str(class_input["name"]) if class_input else None,
        classes=classes,
        output_names=tuple(str(o["name"]) for o in g("outputs")),
        score=score,
        tensorrt=data.get("tensorrt"),
        rebuild_command=rebuild,
    )


def check_artifact(manifest: Manifest) -> None:
    """Refuse an artifact that is missing, tampered with (sha256) or lacks its external data files."""
    art = manifest.artifact_path
    if not art.is_file():
        raise ArtifactError(f"artifact {art} not found", manifest.rebuild_command)
    actual = sha256_file(art)
    if actual != manifest.sha256:
        raise ArtifactError(
            f"artifact {art} does not match its manifest (sha256 {actual[:12]}... != {manifest.sha256[:12]}...): "
            "it was modified or replaced after export", manifest.rebuild_command)
    section = manifest.data.get("artifact") or {}
    hashes = section.get("external_data_sha256") or {}
    for name in section.get("external_data") or []:
        if not (art.parent / name).is_file():
            raise ArtifactError(f"external data file {art.parent / name} of {art.name} is missing",
                                manifest.rebuild_command)
        if name in hashes and sha256_file(art.parent / name) != hashes[name]:
            raise ArtifactError(f"external data file {art.parent / name} does not match its manifest (sha256): "
                                "it was modified or replaced after export", manifest.rebuild_command)


def _version_key(version: str) -> tuple[str, ...]:
    """TensorRT engines are tied to major.minor.patch; build numbers (a 4th part) do not matter."""
    return tuple(str(version).split(".")[:3])


def check_engine_compat(manifest: Manifest, flavour: str, version: str,
                        compute_capability: Optional[str]) -> None:
    """Refuse an engine built for another TensorRT flavour/version or GPU compute capability."""
    trt = manifest.tensorrt
    rebuild = manifest.rebuild_command
    if not trt:
        raise ArtifactError(f"manifest {manifest.path} has no 'tensorrt' section: {manifest.artifact_path.name} "
                            "is not a TensorRT engine", rebuild)
    want_flavour = trt.get("flavour", "tensorrt")
    if want_flavour != flavour:
        raise ArtifactError(f"engine was built with {want_flavour}, this runtime uses {flavour}", rebuild)
    if _version_key(trt.get("version", "")) != _version_key(version):
        raise ArtifactError(
            f"engine was built with {want_flavour} {trt.get('version')}, this device has {version}", rebuild)
    want_cc = trt.get("compute_capability")
    if want_cc is not None and compute_capability is not None and str(want_cc) != str(compute_capability):
        raise ArtifactError(
            f"engine was built for GPU compute capability {want_cc} ({trt.get('gpu_name')}), this GPU is "
            f"{compute_capability}", rebuild)
