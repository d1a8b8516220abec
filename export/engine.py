"""ONNX graph -> serialized TensorRT engine, for both flavours behind one small interface.

- ``tensorrt`` (standard TensorRT; JetPack 6 ships 10.3): builds for the GPU it runs on, so build on
  the target device (the Jetson). The manifest records that GPU's name and compute capability.
- ``tensorrt-rtx`` (TensorRT for RTX, PyPI ``tensorrt-rtx-cu13``, module ``tensorrt_rtx``): compiles
  ahead of time without a GPU for its default set of compute capabilities (Ampere and later RTX/data
  centre parts; not Jetson); the engine finishes compiling on the GPU at first load. The manifest
  records ``gpu_name``/``compute_capability`` as null. It has no timing cache (``--timing-cache`` is
  ignored for it).

Networks are strongly typed (``NetworkDefinitionCreationFlag.STRONGLY_TYPED``): the precision comes from
the graph (the FP16 graph has explicit Casts), not from builder flags. Only a TensorRT without strong
typing (8.x) falls back to ``BuilderFlag.FP16``. One optimization profile covers the batch range;
a persistent timing cache (standard TensorRT) speeds up rebuilds; the engine is written atomically.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

from aaclip.contract.errors import UserError
from aaclip.contract.files import atomic_write_bytes
from aaclip.contract.manifest import TRT_FLAVOURS
from aaclip.contract.tensors import CLASS_INPUT_NAME, INPUT_NAME

log = logging.getLogger(__name__)

FLAVOURS = tuple(TRT_FLAVOURS)  # ("tensorrt", "tensorrt-rtx")
DEFAULT_BATCH = (1, 4, 8)
DEFAULT_WORKSPACE_MB = 2048
INSTALL_HINT = {
    "tensorrt": "standard TensorRT comes with JetPack on a Jetson (python3-libnvinfer) and builds on the "
                "target GPU; elsewhere pip install tensorrt-cu12, or use --trt-flavour tensorrt-rtx",
    "tensorrt-rtx": "pip install tensorrt-rtx-cu13 (TensorRT for RTX; builds ahead of time without a GPU)",
}


@dataclass(frozen=True)
class Flavour:
    """A loaded TensorRT flavour: manifest name, Python module, version."""

    name: str
    trt: Any
    version: str

    @property
    def aot(self) -> bool:
        """True when the builder compiles ahead of time without a GPU (TensorRT for RTX)."""
        return self.name == "tensorrt-rtx"

    @property
    def strongly_typed(self) -> bool:
        return hasattr(self.trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED")


def load_flavour(name: str) -> Flavour:
    """Import the module of a TensorRT flavour; a clear UserError when it is not installed."""
    if name not in TRT_FLAVOURS:
        raise UserError(f"unknown TensorRT flavour {name!r}: use one of {', '.join(FLAVOURS)}")
    module = TRT_FLAVOURS[name]
    try:
        trt = importlib.import_module(module)
    except ImportError as exc:
        raise UserError(
            f"--trt-flavour {name} needs the Python module '{module}' ({exc}); {INSTALL_HINT[name]}") from None
    return Flavour(name, trt, str(getattr(trt, "__version__", "unknown")))


def parse_batch(text: str | Sequence[int]) -> tuple[int, int, int]:
    """``"1:4:8"`` (min:opt:max), ``"8"`` (1:8:8) -> (min, opt, max)."""
    if isinstance(text, str):
        try:
            values = [int(v) for v in text.split(":")]
        except ValueError:
            values = []
    else:
        values = [int(v) for v in text]
    if len(values) == 1:
        values = [1, values[0], values[0]]
    if len(values) != 3 or not 1 <= values[0] <= values[1] <= values[2]:
        raise UserError(f"--batch {text!r} must be MIN:OPT:MAX with 1 <= MIN <= OPT <= MAX (e.g. 1:4:8)")
    return values[0], values[1], values[2]


def gpu_info() -> tuple[Optional[str], Optional[str]]:
    """(name, compute capability "8.7") of CUDA device 0, or (None, None) without a GPU.

    Asks PyTorch when it is installed, else the runtime's CUDA adapter (pycuda or cuda-python), so an
    engine can be built on a Jetson without PyTorch.
    """
    try:
        import torch

        if torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(0)
            return torch.cuda.get_device_name(0), f"{major}.{minor}"
        return None, None
    except ImportError:
        pass
    try:
        from aaclip.runtime.backends.cuda_memory import default_cuda_memory

        cuda = default_cuda_memory()
        return cuda.device_name(), cuda.compute_capability()
    except Exception:  # noqa: BLE001 - no CUDA binding or no device: only an AOT build can proceed
        return None, None


class _Logger:
    """A TensorRT logger that forwards to Python logging (and keeps the errors for the message)."""

    def __init__(self, trt: Any):
        levels = trt.ILogger.Severity
        outer = self

        class Impl(trt.ILogger):
            def __init__(self):
                trt.ILogger.__init__(self)

            def log(self, severity, msg):  # noqa: D401 - TensorRT callback
                if severity in (levels.INTERNAL_ERROR, levels.ERROR):
                    outer.errors.append(msg)
                    log.error("%s", msg)
                elif severity == levels.WARNING:
                    log.warning("%s", msg)
                else:
                    log.debug("%s", msg)

        self.errors: list[str] = []
        self.impl = Impl()


def _parse(flavour: Flavour, builder: Any, logger: Any, onnx_path: Path) -> tuple[Any, Any]:
    trt = flavour.trt
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if flavour.strongly_typed else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # resolves external data beside the file
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise UserError(f"{flavour.name} {flavour.version} cannot parse {onnx_path.name}: {'; '.join(errors)[:800]}")
    return network, parser


def _profile(builder: Any, network: Any, batch: tuple[int, int, int]) -> Any:
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        shape = tuple(tensor.shape)
        if tensor.name not in (INPUT_NAME, CLASS_INPUT_NAME):
            raise UserError(f"unexpected graph input {tensor.name!r}: not an aaclip-export graph")
        if any(d < 0 for d in shape[1:]):
            raise UserError(f"graph input {tensor.name} has dynamic non-batch dims {shape}: re-export it")
        lo, opt, hi = ((b,) + shape[1:] for b in batch)
        profile.set_shape(tensor.name, lo, opt, hi)
    return profile


def _timing_cache(config: Any, path: Optional[Path]) -> None:
    blob = b""
    if path is not None and Path(path).is_file():
        blob = Path(path).read_bytes()
        log.info("timing cache %s (%d bytes)", path, len(blob))
    cache = config.create_timing_cache(blob)
    if cache is None and blob:  # an unusable (other version) cache: start afresh
        log.warning("timing cache %s is not usable by this TensorRT; starting a new one", path)
        cache = config.create_timing_cache(b"")
    config.set_timing_cache(cache, ignore_mismatch=False)


def build_engine(
    onnx_path: Path,
    engine_path: Path,
    *,
    flavour: str = "tensorrt-rtx",
    batch: tuple[int, int, int] = DEFAULT_BATCH,
    workspace_mb: int = DEFAULT_WORKSPACE_MB,
    timing_cache: Optional[Path] = None,
    fp16_flag: bool = False,
) -> dict[str, Any]:
    """Build and atomically write ``engine_path`` from ``onnx_path``; returns the manifest's ``tensorrt`` dict.

    ``fp16_flag`` asks for ``BuilderFlag.FP16``; it is honoured only by a TensorRT without strongly
    typed networks (8.x), where the FP16 graph's types would otherwise be ignored.
    """
    flav = load_flavour(flavour)
    trt = flav.trt
    logger = _Logger(trt)
    gpu_name, capability = gpu_info()
    if not flav.aot and gpu_name is None:
        raise UserError("standard TensorRT builds engines for the GPU it runs on and no CUDA GPU is visible: "
                        "build on the target device (e.g. the Jetson), or use --trt-flavour tensorrt-rtx for an "
                        "ahead-of-time build")
    builder = trt.Builder(logger.impl)
    if builder is None:
        raise UserError(f"{flav.name} could not create a builder: {'; '.join(logger.errors) or 'no CUDA device?'}")
    network, _parser = _parse(flav, builder, logger.impl, Path(onnx_path))
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_mb) << 20)
    if fp16_flag and not flav.strongly_typed and hasattr(trt.BuilderFlag, "FP16"):
        config.set_flag(trt.BuilderFlag.FP16)
    config.add_optimization_profile(_profile(builder, network, batch))
    if flav.aot and timing_cache is not None:
        log.info("TensorRT-RTX has no timing cache (it compiles kernels on the device, with its runtime cache); "
                 "--timing-cache ignored")
        timing_cache = None
    if timing_cache is not None:
        _timing_cache(config, timing_cache)
    log.info("building %s with %s %s (batch %d:%d:%d, workspace %d MB)%s", Path(engine_path).name, flav.name,
             flav.version, *batch, workspace_mb, " ahead of time" if flav.aot else f" on {gpu_name}")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise UserError(f"{flav.name} failed to build {Path(engine_path).name}: "
                        f"{'; '.join(logger.errors)[:800] or 'see the log above'}")
    atomic_write_bytes(engine_path, bytes(memoryview(serialized)))
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
    return {
        "flavour": flav.name,
        "version": flav.version,
        "gpu_name": None if flav.aot else gpu_name,
        "compute_capability": None if flav.aot else capability,
    }


def reusable_onnx(onnx_path: Path, checkpoint_sha256: str, precision: str, classes: Sequence[str],
                  input_hw: tuple[int, int], opset: int) -> bool:
    """True when ``onnx_path`` is an intact export of this checkpoint with these settings."""
    from aaclip.contract.errors import ArtifactError
    from aaclip.contract.manifest import check_artifact, load_manifest

    if not Path(onnx_path).is_file():
        return False
    try:
        manifest = load_manifest(onnx_path)
        check_artifact(manifest)
    except (ArtifactError, UserError) as exc:
        log.info("not reusing %s: %s", onnx_path, exc)
        return False
    data = manifest.data
    return (
        manifest.artifact_format == "onnx"
        and data.get("source", {}).get("checkpoint_sha256") == checkpoint_sha256
        and data.get("precision") == precision
        and list(manifest.classes) == list(classes)
        and (manifest.height, manifest.width) == tuple(input_hw)
        and data.get("tools", {}).get("opset") == opset
    )


def engine_manifest(onnx_manifest: dict, engine_path: Path, sha256: str, onnx_sha256: str,
                    batch: tuple[int, int, int], tensorrt: dict, rebuild_command: str) -> dict:
    """The engine's manifest: the ONNX graph's (same contract, classes, score) with the engine's facts."""
    import copy
    import datetime as dt

    data = copy.deepcopy(onnx_manifest)
    data["created"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    data["artifact"] = {"file": Path(engine_path).name, "format": "engine", "sha256": sha256,
                        "size_bytes": Path(engine_path).stat().st_size, "external_data": []}
    data["source"]["onnx_sha256"] = onnx_sha256
    data["input"]["batch"] = {"min": batch[0], "opt": batch[1], "max": batch[2]}
    data["tensorrt"] = dict(tensorrt)
    data["rebuild_command"] = rebuild_command
    return data


@dataclass(frozen=True)
class EngineOptions:
    """How ``--format engine`` builds: batch profile ``MIN:OPT:MAX``, builder workspace, timing cache, flavour."""

    batch: "str | Sequence[int]" = "1:4:8"
    workspace_mb: int = 2048
    timing_cache: Optional[Path] = None
    flavour: str = "tensorrt"
    discard_calibration: bool = False


def build_engine_artifact(onnx_path: Path, engine_path: Path, options: EngineOptions, command: str) -> Path:
    """Build ``engine_path`` from an exported graph and write its manifest; both replace the previous pair
    together, or not at all (``replace``)."""
    from aaclip.contract.files import sha256_file
    from aaclip.contract.manifest import open_artifact

    from .replace import commit, keep_calibration, staging

    graph = open_artifact(onnx_path)
    profile = parse_batch(options.batch)
    with staging(engine_path) as tmp:
        staged = tmp / Path(engine_path).name
        info = build_engine(onnx_path, staged, flavour=options.flavour, batch=profile,
                            workspace_mb=options.workspace_mb, timing_cache=options.timing_cache,
                            fp16_flag=graph.precision == "fp16")
        data = engine_manifest(graph.data, staged, sha256_file(staged), graph.sha256, profile, info, command)
        commit(tmp, Path(engine_path), (), keep_calibration(Path(engine_path), data, options.discard_calibration))
    return Path(engine_path)


__all__ = ["EngineOptions", "build_engine_artifact", "reusable_onnx", "engine_manifest", "Flavour", "load_flavour", "parse_batch", "gpu_info", "build_engine",
           "FLAVOURS", "DEFAULT_BATCH",
           "DEFAULT_WORKSPACE_MB"]
