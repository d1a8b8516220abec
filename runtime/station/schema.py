"""The station file's schema: ``[station]``, ``[runtime]``, ``[artifacts.NAME]``, ``[[cameras]]`` and
``[outputs.*]`` (``outputs``), as dataclasses whose fields are declared with ``fields.setting``."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Optional

from ..source_options import DEFAULT_OPEN_TIMEOUT_S  # one default for flags and station files
from .fields import at_least, one_of, setting
from .outputs import Outputs

LOG_LEVELS = ("debug", "info", "warning")
PRECISIONS = ("fp32", "bf16")
PERF_HINTS = ("latency", "throughput")


def _backend(value: str):
    from ..backends import backend_names  # the registry knows every backend, added ones included

    return one_of(*backend_names())(value)


@dataclass
class StationSection:
    """``[station]``."""

    name: str = setting("station", "the station's name (logs, the unit's description)")
    log_level: str = setting("info", "debug, info or warning", check=one_of(*LOG_LEVELS))
    state_dir: Optional[Path] = setting(None, "relative output paths are taken from here [default: the file's "
                                              "folder]")


@dataclass
class RuntimeSection:
    """``[runtime]``: how models run, and the defaults of every camera."""

    backend: str = setting("auto", "auto, tensorrt, onnxruntime, openvino or triton", check=lambda v: _backend(v),
                           flag="--backend")
    precision: Optional[str] = setting(None, "openvino: fp32 or bf16 (bf16 only after aaclip-calibrate bf16)",
                                       check=one_of(*PRECISIONS), flag="--precision")
    device: str = setting("auto", "auto, cpu, cuda, or an OpenVINO device (GPU, GPU.1, NPU)", flag="--device")
    threads: Optional[int] = setting(None, "inference threads [default: the backend's]", check=at_least(1),
                                     flag="--threads")
    perf_hint: Optional[str] = setting(None, "openvino: latency or throughput", check=one_of(*PERF_HINTS),
                                       flag="--perf-hint")
    cache_dir: Optional[str] = setting(None, "openvino: model cache folder, or \"none\"", flag="--cache-dir")
    batch: int = setting(1, "frames per inference call (several cameras of one artifact share it)",
                         check=at_least(1), flag="--batch")
    threshold: Optional[float] = setting(None, "raw score threshold of every camera [default: the manifest's]",
                                         flag="--threshold")
    debounce: int = setting(1, "an alarm after this many consecutive anomalous frames", check=at_least(1),
                            flag="--debounce")
    drop: Optional[bool] = setting(None, "true: newest frame only; false: every frame [default: true for live "
                                         "sources]", flag="--drop/--no-drop")
    loop: bool = setting(False, "restart video files and image folders at their end", flag="--loop")
    max_frames: Optional[int] = setting(None, "stop after this many frames", check=at_least(1), flag="--max-frames")
    stats_every: float = setting(10.0, "seconds between stats lines (0: none)", check=at_least(0.0),
                                 flag="--stats-every")
    reconnect_delay: float = setting(0.5, "first reconnect delay (s), doubling", check=at_least(0.0),
                                     flag="--reconnect-delay")
    reconnect_max: float = setting(10.0, "longest reconnect delay (s)", check=at_least(0.0), flag="--reconnect-max")
    open_timeout: float = setting(DEFAULT_OPEN_TIMEOUT_S, "seconds a camera may take to deliver its first frame",
                                  check=at_least(0.1), flag="--open-timeout")
    wait_for_source: bool = setting(False, "wait for a camera that is not up at start instead of exiting 2 after "
                                           "open_timeout", flag="--wait-for-source")
    in_flight: Optional[int] = setting(None, "served model: batches on the server at once", check=at_least(1),
                                       flag="--in-flight")
    watchdog: bool = setting(True, "under systemd (NOTIFY_SOCKET): READY=1 after every camera's first frame, "
                                   "WATCHDOG=1 from the loop")


@dataclass
class ArtifactSection:
    """``[artifacts.NAME]``: one exported model (``path``: file, or grpc://HOST:8001/MODEL)."""

    path: str = setting(doc="model.onnx / model.engine (its manifest beside it), or grpc://HOST:8001/MODEL")


@dataclass
class CameraSection:
    """``[[cameras]]``: one source, its product class and its alarm settings."""

    source: str = setting(doc="device index, /dev/video0, csi://0, rtsp://..., a video file, an image folder "
                              "or a GStreamer pipeline")
    name: Optional[str] = setting(None, "name in events, topics and the view [default: from the source]")
    class_: Optional[str] = setting(None, "product class (multi-class artifacts)", key="class", flag="--class")
    artifact: Optional[str] = setting(None, "the [artifacts.NAME] it runs (needed when there are several)")
    threshold: Optional[float] = setting(None, "raw score threshold [default: runtime.threshold, else the "
                                               "manifest's]")
    debounce: Optional[int] = setting(None, "consecutive anomalous frames before an alarm [default: "
                                            "runtime.debounce]", check=at_least(1))


@dataclass
class StationConfig:
    """A whole station. ``origin`` (the file it came from) and ``lines`` (where each key is) are not keys."""

    station: StationSection = setting(default_factory=StationSection)
    runtime: RuntimeSection = setting(default_factory=RuntimeSection)
    artifacts: dict[str, ArtifactSection] = setting(default_factory=dict)
    cameras: list[CameraSection] = setting(default_factory=list)
    outputs: Outputs = setting(default_factory=Outputs)
    origin: Optional[Path] = field(default=None, compare=False, metadata={"internal": True})
    lines: Any = field(default=None, compare=False, repr=False, metadata={"internal": True})

    def camera_artifact(self, camera: CameraSection) -> str:
        """The artifact name a camera runs (the only one when it names none)."""
        return camera.artifact or next(iter(self.artifacts))

    def camera_threshold(self, camera: CameraSection) -> Optional[float]:
        return camera.threshold if camera.threshold is not None else self.runtime.threshold

    def camera_debounce(self, camera: CameraSection) -> int:
        return camera.debounce if camera.debounce is not None else self.runtime.debounce

    def where(self, *path: Any) -> str:
        """``FILE line N: `` of a key (``where("cameras", 1, "class")``), for errors found after loading."""
        if self.origin is None or self.lines is None:
            return ""
        from .lines import describe

        line = self.lines.line_of(tuple(path[:-1]), path[-1])
        return f"{self.origin}{f' line {line}' if line else ''}: {describe(tuple(path[:-1]), path[-1])}: "


def settings(cls) -> list:
    """The key fields of a section dataclass (internal fields left out)."""
    return [f for f in fields(cls) if not f.metadata.get("internal")]


def is_section(value: Any) -> bool:
    return is_dataclass(value) and not isinstance(value, type)
