"""The manifest beside every artifact (docs/graph-contract.md): its schema, one strict loader, one writer.

``load_manifest`` type- and range-checks every field before anything runs; ``write_manifest`` validates
the same way and writes atomically, so no tool can write a manifest the runtime would refuse.
``manifest_for`` builds a new one from a ``ManifestDraft``; ``check_artifact`` refuses a tampered or
incomplete artifact; ``check_engine_compat`` an engine built for another TensorRT or GPU.

Which backends and precisions an artifact was checked on: ``parity`` (optional; ``aaclip-export --verify``
adds one record per backend and precision it passed on, ``record_parity``), the accuracy gates of reduced
precisions (``precision_gates``, an INT8 graph's ``quantization.gate``); ``verified_on`` reads all of them.
Manifests written before ``parity`` existed load unchanged (they were verified nowhere on record).
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

from .errors import ArtifactError, UserError
from .files import PathLike, atomic_write_json, sha256_file
from .score import SCORE_SOURCES, ScoreError, ScoreParams
from .tensors import (
    CLASS_INPUT_DTYPE,
    INPUT_COLOR,
    INPUT_DTYPE,
    INPUT_LAYOUT,
    OUTPUT_NAMES,
    class_input_spec,
    input_spec,
    output_specs,
)

log = logging.getLogger(__name__)

MANIFEST_FORMAT = "aaclip-manifest"
MANIFEST_VERSION = 1
MANIFEST_SUFFIX = ".manifest.json"
ARTIFACT_FORMATS = ("onnx", "engine")
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
PRECISIONS = ("fp32", "fp16", "bf16", "int8")
TRT_FLAVOURS = {"tensorrt": "tensorrt", "tensorrt-rtx": "tensorrt_rtx"}  # manifest flavour -> Python module
DEFAULT_METHOD = "aa-clip"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: the fields every consumer needs, plus the raw dict (``data``) for the rest."""

    path: Path
    artifact_path: Path
    data: dict
    method: str
    precision: str
    artifact_format: str
    sha256: str
    external_data: dict[str, str]  # file name (beside the artifact) -> sha256
    input_name: str
    height: int
    width: int
    batch_min: int
    batch_max: Optional[int]
    class_input: Optional[str]
    classes: tuple[str, ...]
    object_names: tuple[str, ...]
    image_size: int
    output_names: tuple[str, ...]
    score: ScoreParams
    tensorrt: Optional[dict]
    rebuild_command: Optional[str]

    @property
    def is_engine(self) -> bool:
        return self.artifact_format == "engine"

    @property
    def calibrated(self) -> bool:
        return self.data["score"].get("source") == "calibration"

    @property
    def verified_on(self) -> frozenset[tuple[str, str]]:
        """(backend, precision) pairs this very artifact passed a parity check or accuracy gate on."""
        return verified_on(self.data)

    @property
    def checkpoint(self) -> Optional[str]:
        return (self.data.get("source") or {}).get("checkpoint")

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


# ---- validation -------------------------------------------------------------------------------------
class _Checker:
    """Field access with one error style: ``manifest X: field 'a.b' ...`` plus the rebuild command."""

    def __init__(self, data: Mapping, path: Path):
        self.data, self.path = data, path
        rebuild = data.get("rebuild_command") if isinstance(data, Mapping) else None
        self.rebuild = rebuild if isinstance(rebuild, str) else None

    def fail(self, dotted: str, problem: str) -> ArtifactError:
        return ArtifactError(f"manifest {self.path}: field '{dotted}' {problem}", self.rebuild)

    def get(self, dotted: str, kinds: tuple, allow_none: bool = False) -> Any:
        node: Any = self.data
        for key in dotted.split("."):
            if not isinstance(node, Mapping) or key not in node:
                raise self.fail(dotted, "is missing")
            node = node[key]
        if node is None and allow_none:
            return None
        if isinstance(node, bool) and bool not in kinds or not isinstance(node, kinds):
            names = "/".join(k.__name__ for k in kinds) + (" or null" if allow_none else "")
            raise self.fail(dotted, f"must be {names}, got {node!r}")
        return node

    def text(self, dotted: str, allow_none: bool = False, choices: Sequence[str] = ()) -> Optional[str]:
        value = self.get(dotted, (str,), allow_none)
        if value is not None and not value:
            raise self.fail(dotted, "is empty")
        if value is not None and choices and value not in choices:
            raise self.fail(dotted, f"is {value!r}; expected one of {', '.join(choices)}")
        return value

    def integer(self, dotted: str, minimum: int = 0, allow_none: bool = False) -> Optional[int]:
        value = self.get(dotted, (int,), allow_none)
        if value is not None and value < minimum:
            raise self.fail(dotted, f"is {value}; it must be >= {minimum}")
        return value

    def sha(self, dotted: str, value: Any) -> str:
        if not isinstance(value, str) or not _SHA256.match(value):
            raise self.fail(dotted, f"must be a sha256 (64 hex digits), got {value!r}")
        return value


def plain_file_name(name: Any) -> bool:
    """A file name inside the artifact's folder: no path separators, not '.', '..' or hidden tricks."""
    return (isinstance(name, str) and bool(name) and name not in (".", "..") and "/" not in name
            and "\\" not in name and "\x00" not in name)


def _external_data(c: _Checker) -> dict[str, str]:
    names = c.get("artifact.external_data", (list,))
    hashes = c.data["artifact"].get("external_data_sha256") or {}
    if not isinstance(hashes, Mapping):
        raise c.fail("artifact.external_data_sha256", "must be an object (file name -> sha256)")
    out = {}
    for name in names:
        if not plain_file_name(name):
            raise c.fail("artifact.external_data", f"holds {name!r}: external data must be plain file names "
                                                   "beside the artifact (no folders, no '..')")
        if name not in hashes:
            raise c.fail("artifact.external_data_sha256", f"has no sha256 for {name!r}")
        out[name] = c.sha(f"artifact.external_data_sha256.{name}", hashes[name])
    return out


def _batch(c: _Checker) -> tuple[int, Optional[int]]:
    batch = c.get("input.batch", (Mapping,), allow_none=True)
    if batch is None:
        return 1, None
    lo, opt, hi = (c.integer(f"input.batch.{k}", 1) for k in ("min", "opt", "max"))
    if not lo <= opt <= hi:
        raise c.fail("input.batch", f"must satisfy 1 <= min <= opt <= max, got {lo}:{opt}:{hi}")
    return lo, hi


def _classes(c: _Checker) -> tuple[tuple[str, ...], tuple[str, ...]]:
    entries = c.get("classes", (list,))
    if not entries:
        raise c.fail("classes", "lists no class; an artifact holds at least one")
    names, objects = [], []
    for i, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise c.fail(f"classes.{i}", f"must be an object, got {entry!r}")
        if entry.get("id") != i or isinstance(entry.get("id"), bool):
            raise c.fail(f"classes.{i}.id", f"must be {i} (classes are listed in id order), got {entry.get('id')!r}")
        name, obj = entry.get("name"), entry.get("object_name", entry.get("name"))
        if not isinstance(name, str) or not name.strip():
            raise c.fail(f"classes.{i}.name", f"must be a non-empty string, got {name!r}")
        if not isinstance(obj, str):
            raise c.fail(f"classes.{i}.object_name", f"must be a string, got {obj!r}")
        names.append(name)
        objects.append(obj)
    if len(set(names)) != len(names):
        raise c.fail("classes", f"names a class twice: {names}")
    return tuple(names), tuple(objects)


def _tensorrt(c: _Checker, artifact_format: str) -> Optional[dict]:
    trt = c.get("tensorrt", (Mapping,), allow_none=True)
    if trt is None:
        if artifact_format == "engine":
            raise c.fail("tensorrt", "is null, but an engine records its TensorRT flavour and version")
        return None
    c.text("tensorrt.flavour", choices=tuple(TRT_FLAVOURS))
    c.text("tensorrt.version")
    c.get("tensorrt.gpu_name", (str,), allow_none=True) if "gpu_name" in trt else None
    c.get("tensorrt.compute_capability", (str,), allow_none=True) if "compute_capability" in trt else None
    return dict(trt)


def _score(c: _Checker) -> ScoreParams:
    c.get("score", (Mapping,))
    try:
        params = ScoreParams.from_block(c.data["score"])
    except ScoreError as exc:
        raise ArtifactError(f"manifest {c.path}: {exc}; recalibrate with aaclip-calibrate threshold", c.rebuild) from None
    c.text("score.source", choices=SCORE_SOURCES)
    c.get("score.calibration", (Mapping,), allow_none=True)
    return params


def _parity(c: _Checker) -> None:
    records = c.get("parity", (Mapping,), allow_none=True) if "parity" in c.data else None
    for key, record in (records or {}).items():
        if not isinstance(record, Mapping):
            raise c.fail(f"parity.{key}", f"must be an object, got {record!r}")
        c.text(f"parity.{key}.backend")
        c.text(f"parity.{key}.precision", choices=PRECISIONS)
        c.get(f"parity.{key}.passed", (bool,))


def validate_manifest(data: Any, path: Path, artifact_path: Optional[Path] = None) -> Manifest:
    """Check every field of a manifest dict; returns the parsed ``Manifest`` or raises ``ArtifactError``."""
    path = Path(path)
    if not isinstance(data, Mapping):
        raise ArtifactError(f"manifest {path} is not a JSON object", None)
    c = _Checker(data, path)
    if data.get("format") != MANIFEST_FORMAT:
        raise ArtifactError(f"{path} is not an aaclip manifest (format={data.get('format')!r})", c.rebuild)
    if data.get("format_version") != MANIFEST_VERSION:
        raise ArtifactError(f"manifest {path} has format_version {data.get('format_version')!r}; this version "
                            f"of aaclip-edge reads version {MANIFEST_VERSION}", c.rebuild)
    c.get("rebuild_command", (str,), allow_none=True)
    file_name = c.text("artifact.file")
    if not plain_file_name(file_name):
        raise c.fail("artifact.file", f"is {file_name!r}: it must be the artifact's plain file name")
    artifact_format = c.text("artifact.format", choices=ARTIFACT_FORMATS)
    sha = c.sha("artifact.sha256", c.get("artifact.sha256", (str,)))
    c.integer("artifact.size_bytes", 0)
    external = _external_data(c)
    c.get("source", (Mapping,))
    c.get("model", (Mapping,))
    image_size = c.integer("model.image_size", 1)
    c.text("input.name")
    for key, want in (("dtype", INPUT_DTYPE), ("layout", INPUT_LAYOUT), ("color", INPUT_COLOR)):
        c.text(f"input.{key}", choices=(want,))
    height, width = c.integer("input.height", 1), c.integer("input.width", 1)
    batch_min, batch_max = _batch(c)
    classes, objects = _classes(c)
    class_input = c.get("class_input", (Mapping,), allow_none=True)
    if class_input is not None:
        c.text("class_input.name")
        c.text("class_input.dtype", choices=(CLASS_INPUT_DTYPE,))
    elif len(classes) > 1:
        raise c.fail("class_input", f"is null, but the artifact holds {len(classes)} classes (a class_id input)")
    outputs = c.get("outputs", (list,))
    names = tuple(o.get("name") for o in outputs if isinstance(o, Mapping))
    missing = [n for n in OUTPUT_NAMES if n not in names]
    if missing or len(names) != len(outputs):
        raise c.fail("outputs", f"must list {', '.join(OUTPUT_NAMES)}; missing {missing or 'malformed entries'}")
    _parity(c)
    return Manifest(
        path=path,
        artifact_path=Path(artifact_path) if artifact_path is not None else path.with_name(file_name),
        data=dict(data),
        method=c.text("method"),
        precision=c.text("precision", choices=PRECISIONS),
        artifact_format=artifact_format,
        sha256=sha,
        external_data=external,
        input_name=data["input"]["name"],
        height=height,
        width=width,
        batch_min=batch_min,
        batch_max=batch_max,
        class_input=class_input["name"] if class_input else None,
        classes=classes,
        object_names=objects,
        image_size=image_size,
        output_names=names,
        score=_score(c),
        tensorrt=_tensorrt(c, artifact_format),
        rebuild_command=c.rebuild,
    )


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def load_manifest(artifact_path: PathLike) -> Manifest:
    """Read and validate the manifest of ``artifact_path``; refuse a missing, invalid or unknown one."""
    artifact_path = Path(artifact_path)
    path = manifest_path(artifact_path)
    if not path.is_file():
        if not artifact_path.exists():
            raise ArtifactError(f"artifact {artifact_path} not found: no such file (nor its manifest {path.name})",
                                None)
        raise ArtifactError(
            f"no manifest for {artifact_path} (expected {path}); the runtime only runs artifacts exported "
            "with their manifest", None)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise ArtifactError(f"manifest {path} is not valid JSON ({e})", None) from None
    manifest = validate_manifest(data, path, artifact_path)
    if manifest.artifact_path.name != data["artifact"]["file"]:
        log.debug("artifact %s was renamed (its manifest says %s)", artifact_path.name, data["artifact"]["file"])
    return manifest


def write_manifest(artifact_path: PathLike, data: Mapping[str, Any]) -> Path:
    """Validate ``data`` and write it as the manifest of ``artifact_path`` atomically; returns its path."""
    path = manifest_path(artifact_path)
    validate_manifest(data, path, Path(artifact_path))
    atomic_write_json(path, dict(data))
    return path


# ---- building -----------------------------------------------------------------------------------------
@dataclass
class ManifestDraft:
    """What an exporter knows about a new artifact; ``manifest_for`` adds the file's identity."""

    method: str
    precision: str
    model: dict                          # {"backbone", "image_size", "domain", ...}
    classes: Sequence[tuple[str, str]]   # (class name, object name) in class-id order
    input_hw: tuple[int, int]
    score: dict                          # a score block (ScoreParams.to_block)
    tools: dict
    rebuild_command: Optional[str] = None
    source: dict = field(default_factory=dict)
    batch: Optional[tuple[int, int, int]] = None
    tensorrt: Optional[dict] = None


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def manifest_for(artifact: Path, artifact_format: str, draft: ManifestDraft,
                 external_data: Sequence[str] = ()) -> dict[str, Any]:
    """The manifest dict of one artifact, every field of docs/graph-contract.md in its order."""
    artifact = Path(artifact)
    source = {"checkpoint": None, "checkpoint_sha256": None, "onnx_sha256": None}
    source.update(draft.source)
    return {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "method": draft.method,
        "created": now_iso(),
        "artifact": {
            "file": artifact.name,
            "format": artifact_format,
            "sha256": sha256_file(artifact),
            "size_bytes": artifact.stat().st_size,
            "external_data": list(external_data),
            "external_data_sha256": {name: sha256_file(artifact.parent / name) for name in external_data},
        },
        "precision": draft.precision,
        "source": source,
        "model": dict(draft.model),
        "input": input_spec(draft.input_hw[0], draft.input_hw[1], draft.batch),
        "class_input": class_input_spec(len(draft.classes)),
        "classes": [{"id": i, "name": name, "object_name": obj} for i, (name, obj) in enumerate(draft.classes)],
        "outputs": output_specs(int(draft.model["image_size"])),
        "score": dict(draft.score),
        "tools": dict(draft.tools),
        "tensorrt": draft.tensorrt,
        "rebuild_command": draft.rebuild_command,
    }


# ---- where an artifact was verified ------------------------------------------------------------------
def verified_on(data: Mapping) -> frozenset[tuple[str, str]]:
    """(backend, precision) pairs of the passed parity checks and accuracy gates recorded for this artifact
    (a record of another artifact's sha256, e.g. one copied along with an edited graph, does not count)."""
    sha = (data.get("artifact") or {}).get("sha256")
    pairs = set()

    def add(record: Any, backend: Any = None, precision: Any = None) -> None:
        if not isinstance(record, Mapping) or record.get("passed") is not True or record.get("forced"):
            return
        if record.get("artifact_sha256", sha) != sha:
            return
        backend, precision = backend or record.get("backend"), precision or record.get("precision")
        if isinstance(backend, str) and isinstance(precision, str):
            pairs.add((backend, precision))

    for record in (data.get("parity") or {}).values():
        add(record)
    for record in (data.get("precision_gates") or {}).values():
        add(record)
    gate = (data.get("quantization") or {}).get("gate")
    if isinstance(gate, Mapping):
        add(gate, precision=gate.get("precision_hint") if gate.get("precision_hint") not in (None, "fp32")
            else data.get("precision"))
    return frozenset(pairs)


def parity_key(backend: str, precision: str) -> str:
    return f"{backend}-{precision}"


def record_parity(artifact_path: PathLike, records: Sequence[Mapping[str, Any]]) -> Manifest:
    """Add parity records (``backend``, ``precision``, ``passed`` + what was measured) to the manifest of
    ``artifact_path`` (atomically; other records kept, one per backend and precision); returns it re-read."""
    manifest = load_manifest(artifact_path)
    data = dict(manifest.data)
    parity = dict(data.get("parity") or {})
    for record in records:
        entry = dict(record)
        entry.setdefault("artifact_sha256", manifest.sha256)
        entry.setdefault("date", now_iso())
        parity[parity_key(entry["backend"], entry["precision"])] = entry
    data["parity"] = parity
    write_manifest(artifact_path, data)
    return load_manifest(artifact_path)


# ---- artifact checks ----------------------------------------------------------------------------------
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
    for name, want in manifest.external_data.items():
        data_path = art.parent / name
        if not data_path.is_file():
            raise ArtifactError(f"external data file {data_path} of {art.name} is missing", manifest.rebuild_command)
        if data_path.is_symlink() and art.parent.resolve() not in data_path.resolve().parents:
            raise ArtifactError(f"external data file {data_path} links outside {art.parent}; copy the file there",
                                manifest.rebuild_command)
        if sha256_file(data_path) != want:
            raise ArtifactError(f"external data file {data_path} does not match its manifest (sha256): "
                                "it was modified or replaced after export", manifest.rebuild_command)


def open_artifact(artifact_path: PathLike) -> Manifest:
    """``load_manifest`` then ``check_artifact``: what every consumer that runs an artifact does first."""
    manifest = load_manifest(artifact_path)
    check_artifact(manifest)
    return manifest


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


class ManifestWatch:
    """Notices a manifest rewritten on disk (``aaclip-calibrate threshold`` while the loop runs) and hands out
    its new score constants. Checked at most every ``every_s`` seconds (a ``stat`` call); a rewritten manifest
    that is invalid or belongs to another artifact is logged once and ignored."""

    def __init__(self, manifest: Manifest, every_s: float = 2.0):
        self.manifest = manifest
        self.every_s = every_s
        self._next = 0.0
        self._seen = self._identity()

    def _identity(self) -> Optional[tuple]:
        try:
            st = self.manifest.path.stat()
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size, st.st_ino

    def changed(self, now: float) -> Optional["Manifest"]:
        """The manifest as rewritten on disk (its score constants, whether it is calibrated) when it changed
        since the last call, else None."""
        if self.every_s <= 0 or now < self._next:
            return None
        self._next = now + self.every_s
        identity = self._identity()
        if identity is None or identity == self._seen:
            return None
        self._seen = identity
        try:
            fresh = load_manifest(self.manifest.artifact_path)
        except ArtifactError as exc:
            log.error("manifest %s changed but cannot be used (%s); keeping the running score constants",
                      self.manifest.path, exc)
            return None
        if fresh.sha256 != self.manifest.sha256:
            log.error("manifest %s now describes another artifact (sha256 %s...); keeping the running score "
                      "constants: restart the runtime to run the new artifact", self.manifest.path, fresh.sha256[:12])
            return None
        return fresh
