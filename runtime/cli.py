"""``aaclip-runtime``: run an exported artifact (ONNX or TensorRT engine + manifest), or a model served by Triton
Inference Server (``grpc://HOST:8001/MODEL``), on cameras."""
from __future__ import annotations

import logging
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import click
from aaclip.contract.cli import Command, setup_logging
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import Manifest, open_artifact

from .backends import AUTO, RunnerOptions, backend_names, open_runner
from .backends.triton import parse_endpoint
from .capture import Backoff
from .loop import CameraLoop, LoopConfig, Summary, source_classes
from .sinks import EVIDENCE_FORMATS, AnnotatedVideo, DisplaySink, EventLog, EvidenceWriter, Sink
from .sources import open_source

log = logging.getLogger(__name__)


def _install_signal_handlers(loop: CameraLoop) -> dict:
    """SIGINT/SIGTERM: finish the current frame, flush, summarize, exit 0. A second signal aborts.
    Returns the previous handlers (to restore)."""

    def handler(signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if loop.stop_event.is_set():
            raise KeyboardInterrupt
        log.info("%s received: finishing the current frame", name)
        loop.stop(name)

    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    for sig in previous:
        signal.signal(sig, handler)
    return previous


@dataclass
class RunConfig:
    """Everything ``aaclip-runtime`` is asked to do (one field per command-line option)."""

    artifact: Union[Path, str]  # a file, or a served model: grpc://HOST:8001/MODEL, http://HOST:8000/MODEL
    cameras: tuple[str, ...]
    backend: str = AUTO
    batch: int = 1
    classes: tuple[str, ...] = ()
    threshold: Optional[float] = None
    debounce: int = 1
    events: Optional[Path] = None
    evidence: Optional[Path] = None
    evidence_format: str = "jpg"
    video: Optional[Path] = None
    video_fps: Optional[float] = None
    show: bool = False
    drop: bool = True
    loop_files: bool = False
    max_frames: Optional[int] = None
    stats_every: float = 10.0
    reconnect_delay: float = 0.5
    reconnect_max: float = 10.0
    in_flight: Optional[int] = None  # batches on a server at once (None: one per camera, at least 2)

    def loop_config(self) -> LoopConfig:
        if self.in_flight is not None and self.in_flight < 1:
            raise UserError(f"--in-flight must be >= 1, got {self.in_flight}")
        return LoopConfig(batch=self.batch, drop=self.drop, threshold=self.threshold, debounce=self.debounce,
                          max_frames=self.max_frames, stats_every=self.stats_every,
                          in_flight=self.in_flight or max(2, len(self.cameras)),
                          backoff=Backoff(initial=self.reconnect_delay,
                                          maximum=max(self.reconnect_max, self.reconnect_delay)))


def open_sinks(config: RunConfig, sources: list) -> list[Sink]:
    """The sinks the options ask for (opened now, so a bad path fails before the first frame)."""
    sinks: list[Sink] = []
    try:
        if config.show:
            sinks.append(DisplaySink())
        if config.events:
            sinks.append(EventLog(config.events))
        if config.evidence:
            sinks.append(EvidenceWriter(config.evidence, config.evidence_format))
        if config.video:
            sinks.append(AnnotatedVideo(config.video, [config.video_fps or s.fps for s in sources]))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def open_model(config: RunConfig) -> tuple[Manifest, str, Optional[RunnerOptions]]:
    """(manifest, backend, runner options) of the artifact: a local file's manifest, or the manifest a Triton
    server publishes for its model (validated and checked against the served tensors)."""
    if parse_endpoint(config.artifact) is None:
        return open_artifact(config.artifact), config.backend, None
    if config.backend not in (AUTO, "triton"):
        raise UserError(f"{config.artifact} is a served model: it runs on the triton backend, not {config.backend}")
    from .backends.triton import served_manifest

    manifest = served_manifest(config.artifact, config.batch)
    return manifest, "triton", RunnerOptions(extra={"endpoint": str(config.artifact)})


def run(config: RunConfig) -> Summary:
    """Run the camera loop as configured; returns its summary (also on SIGINT/SIGTERM)."""
    manifest, backend, options = open_model(config)
    if not config.cameras:
        raise UserError("no camera given; pass --camera (device index, path, URL, csi://0 or a pipeline)")
    if config.debounce < 1:
        raise UserError(f"--debounce must be >= 1, got {config.debounce}")
    class_ids = source_classes(manifest, config.classes, len(config.cameras))
    sources = [open_source(c, loop=config.loop_files) for c in config.cameras]
    sinks: list[Sink] = []
    try:
        sinks = open_sinks(config, sources)
        with open_runner(manifest, backend, options) as runner:
            loop = CameraLoop(runner, manifest, sources, class_ids, config.loop_config(), sinks)
            previous = _install_signal_handlers(loop)
            log.info("running %s (%s) on %s; threshold %.4g, debounce %d, %s mode", manifest.artifact_path.name,
                     runner.name, ", ".join(s.name for s in sources), loop.params.threshold, config.debounce,
                     "live (newest frame)" if config.drop else "offline (no drop)")
            try:
                return loop.run()
            finally:
                for sig, h in previous.items():
                    signal.signal(sig, h)
    finally:
        for sink in sinks:  # the loop closed them already; this covers a failure before it ran
            sink.close()
        for s in sources:
            s.release()


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", metavar="ARTIFACT|grpc://HOST:8001/MODEL")
@click.option("--camera", "cameras", multiple=True, metavar="SPEC",
              help="Source, repeatable: device index (0), /dev/video0, v4l2:///dev/video0, csi://0, rtsp://..., "
                   "http(s)://..., video file (file://x.mp4 or x.mp4), image folder, or a GStreamer pipeline "
                   "(a string with '!').")
@click.option("--backend", type=click.Choice(backend_names()), default=AUTO, show_default=True,
              help="auto: TensorRT for .engine, ONNX Runtime (CUDA, else CPU) for .onnx.")
@click.option("--batch", type=int, default=1, show_default=True,
              help="Frames per inference call (groups frames of several cameras).")
@click.option("--class", "classes", multiple=True, metavar="NAME",
              help="Class to inspect (multi-class artifacts): once for all cameras or once per camera.")
@click.option("--threshold", type=float, default=None, help="Override the manifest's score threshold.")
@click.option("--debounce", type=int, default=1, show_default=True,
              help="Alarm only after N consecutive anomalous frames.")
@click.option("--events", type=click.Path(path_type=Path, dir_okay=False), help="Append events as JSON lines here.")
@click.option("--evidence", type=click.Path(path_type=Path, file_okay=False),
              help="Save alarm frames with their heat-map overlay into this folder.")
@click.option("--evidence-format", type=click.Choice(EVIDENCE_FORMATS), default="jpg", show_default=True)
@click.option("--video", type=click.Path(path_type=Path, dir_okay=False),
              help="Write an annotated video (.avi MJPG; one file per camera when several).")
@click.option("--video-fps", type=float, default=None, help="Frame rate of --video (default: the source's, else 15).")
@click.option("--show", is_flag=True, help="Show annotated frames in a window (needs a display; q quits).")
@click.option("--no-drop", is_flag=True, help="Process every frame (offline files) instead of only the newest.")
@click.option("--loop", "loop_files", is_flag=True, help="Restart video files and image folders at their end.")
@click.option("--max-frames", type=int, default=None, help="Stop after N processed frames.")
@click.option("--stats-every", type=float, default=10.0, show_default=True,
              help="Seconds between stats lines (0: none).")
@click.option("--reconnect-delay", type=float, default=0.5, show_default=True,
              help="First reconnect delay in seconds (doubles on each failure).")
@click.option("--reconnect-max", type=float, default=10.0, show_default=True, help="Longest reconnect delay (s).")
@click.option("--in-flight", type=int, default=None,
              help="Served model: batches on the server at once [default: one per camera, at least 2].")
@click.option("-v", "--verbose", count=True, help="More log output.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def main(artifact: str, cameras: tuple[str, ...], backend: str, batch: int, classes: tuple[str, ...],
         threshold: Optional[float], debounce: int, events: Optional[Path], evidence: Optional[Path],
         evidence_format: str, video: Optional[Path], video_fps: Optional[float], show: bool, no_drop: bool,
         loop_files: bool, max_frames: Optional[int], stats_every: float, reconnect_delay: float,
         reconnect_max: float, in_flight: Optional[int], verbose: int, quiet: bool) -> None:
    """Run ARTIFACT (model.onnx or model.engine, with its .manifest.json) on one or more cameras, or a model
    served by Triton Inference Server (grpc://HOST:8001/MODEL or http://HOST:8000/MODEL; its manifest comes
    from the server, and a lost server is reconnected to like a lost camera).

    Each frame gets a score (graph contract); an alarm fires after --debounce consecutive frames at or
    above the threshold. Ctrl-C or SIGTERM finishes the current frame, flushes outputs, prints a summary
    and exits 0.
    """
    setup_logging(verbose, quiet)
    summary = run(RunConfig(
        artifact=artifact if parse_endpoint(artifact) else Path(artifact), cameras=cameras, backend=backend, batch=batch, classes=classes, threshold=threshold,
        debounce=debounce, events=events, evidence=evidence, evidence_format=evidence_format, video=video,
        video_fps=video_fps, show=show, drop=not no_drop, loop_files=loop_files, max_frames=max_frames,
        stats_every=stats_every, reconnect_delay=reconnect_delay, reconnect_max=reconnect_max, in_flight=in_flight))
    click.echo(summary.text())


if __name__ == "__main__":
    main()
