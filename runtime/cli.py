"""``aaclip-runtime``: run an exported artifact (ONNX or TensorRT engine + manifest), or a model served by Triton
Inference Server (``grpc://HOST:8001/MODEL``), on cameras."""
from __future__ import annotations

import logging
import signal
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import click
from aaclip.contract.cli import EXIT_SOURCE_LOST, Command, FiniteFloat, setup_logging
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import Manifest, open_artifact

from .backends import AUTO, RunnerOptions, open_runner, warn_if_unverified
from .backends.options import backend_option, backend_options, runner_options
from .backends.triton import parse_endpoint
from .capture import Backoff, default_drop
from .loop import CameraLoop, LoopConfig, Summary, source_classes
from .sinks import EVIDENCE_FORMATS, AnnotatedVideo, DisplaySink, EventLog, EvidenceWriter, Sink
from .sources import DEFAULT_OPEN_TIMEOUT_MS, NoFirstFrame, open_source

log = logging.getLogger(__name__)


class StopSignals:
    """SIGINT/SIGTERM handlers, installed before any source opens (a signal during a stalled RTSP connect
    ends the run cleanly once the connect returns): the first signal asks the loop to finish the current
    frame, flush and summarize (exit 0); a second one aborts."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.reason: Optional[str] = None
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        self._previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        for sig in self._previous:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if self.event.is_set():
            raise KeyboardInterrupt
        log.info("%s received: finishing the current frame", name)
        self.reason = name
        self.event.set()

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass
class RunConfig:
    """Everything ``aaclip-runtime`` is asked to do (one field per command-line option)."""

    artifact: Union[Path, str]  # a file, or a served model: grpc://HOST:8001/MODEL, http://HOST:8000/MODEL
    cameras: tuple[str, ...]
    backend: str = AUTO
    runner: RunnerOptions = RunnerOptions()  # --device, --threads, --precision, --perf-hint, --cache-dir
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
    drop: Optional[bool] = None  # None: live mode for live sources, every frame of files and folders
    loop_files: bool = False
    max_frames: Optional[int] = None
    stats_every: float = 10.0
    reconnect_delay: float = 0.5
    reconnect_max: float = 10.0
    evidence_max: Optional[int] = None
    open_timeout: float = DEFAULT_OPEN_TIMEOUT_MS / 1000.0
    wait_for_source: bool = False  # a live source without a first frame in open_timeout: wait, not exit 2
    http: Optional[str] = None          # [HOST]:PORT of the line view, /metrics and /healthz
    view_fps: float = 5.0
    health_timeout: float = 10.0
    mqtt: Optional[str] = None          # mqtt://HOST[:PORT]/PREFIX
    webhook: Optional[str] = None       # http(s) URL receiving alarm events

    @property
    def backoff(self) -> Backoff:
        return Backoff(initial=self.reconnect_delay, maximum=max(self.reconnect_max, self.reconnect_delay))

    in_flight: Optional[int] = None  # batches on a server at once (None: one per camera, at least 2)

    def loop_config(self, stop: Optional[threading.Event] = None, sources: Sequence = ()) -> LoopConfig:
        """The loop's settings; ``drop`` None is decided by the ``sources`` (``capture.default_drop``)."""
        drop = self.drop if self.drop is not None else default_drop(sources)
        return LoopConfig(batch=self.batch, drop=drop, threshold=self.threshold, debounce=self.debounce,
                          max_frames=self.max_frames, stats_every=self.stats_every, stop_event=stop,
                          in_flight=self.in_flight or max(2, len(self.cameras)), backoff=self.backoff)


def open_sinks(config: RunConfig, sources: list) -> list[Sink]:
    """The sinks the options ask for (opened now, so a bad path fails before the first frame)."""
    sinks: list[Sink] = []
    try:
        if config.show:
            sinks.append(DisplaySink())
        if config.events:
            sinks.append(EventLog(config.events))
        if config.evidence:
            sinks.append(EvidenceWriter(config.evidence, config.evidence_format, max_files=config.evidence_max))
        if config.video:
            sinks.append(AnnotatedVideo(config.video, [config.video_fps or s.fps for s in sources]))
        sinks.extend(open_line_sinks(config))
    except BaseException:
        for sink in sinks:
            sink.close()
        raise
    return sinks


def open_line_sinks(config: RunConfig) -> list[Sink]:
    """The line outputs asked for (``--http``, ``--mqtt``, ``--webhook``); their modules load only then."""
    sinks: list[Sink] = []
    try:
        if config.http is not None:
            if not config.view_fps > 0 or not config.health_timeout > 0:
                raise UserError("--view-fps and --health-timeout must be > 0")
            from .web import LineView

            sinks.append(LineView(config.http, view_fps=config.view_fps, health_timeout_s=config.health_timeout))
        if config.mqtt:
            from .mqtt import MqttSink

            sinks.append(MqttSink(config.mqtt, backoff=config.backoff))
        if config.webhook:
            from .webhook import WebhookSink

            sinks.append(WebhookSink(config.webhook))
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
    sources: list = []
    sinks: list[Sink] = []
    with StopSignals() as stop:
        try:
            timeout_ms = int(config.open_timeout * 1000)
            for camera in config.cameras:
                if stop.event.is_set():
                    break
                try:
                    sources.append(open_source(camera, loop=config.loop_files, open_timeout_ms=timeout_ms,
                                               read_timeout_ms=max(timeout_ms // 2, 1000),
                                               wait=config.wait_for_source, stop=stop.event))
                except NoFirstFrame as exc:
                    raise NoFirstFrame(f"{exc}; --open-timeout sets how long to wait, --wait-for-source keeps "
                                       "waiting for a camera that starts after this PC") from None
            if stop.event.is_set():
                log.info("stopped by %s before the loop started", stop.reason)
                return Summary(stopped_by=stop.reason or "signal")
            sinks = open_sinks(config, sources)
            with open_runner(manifest, backend, options or config.runner) as runner:
                if backend != "triton":  # a served model's backend is the server's
                    warn_if_unverified(manifest, runner.name, options or config.runner)
                loop_config = config.loop_config(stop.event, sources)
                loop = CameraLoop(runner, manifest, sources, class_ids, loop_config, sinks)
                if not manifest.calibrated:
                    log.warning("%s is not calibrated: its threshold is the export default, not fitted on this "
                                "line's good parts (events say calibrated: false); run aaclip-calibrate threshold "
                                "%s --images GOOD_PARTS/ first", manifest.artifact_path.name, config.artifact)
                elif config.threshold is not None:
                    log.warning("--threshold %.4g replaces the calibrated threshold %.4g (events say calibrated: "
                                "false)", config.threshold, manifest.score.threshold)
                mode = "live mode (newest frame only)" if loop_config.drop else "offline mode (every frame)"
                why = "" if config.drop is not None else (" for a live source; --no-drop: every frame"
                                                          if loop_config.drop else " for files; --drop: newest only")
                log.info("running %s (%s) on %s; threshold %.4g%s, debounce %d, %s%s, run %s",
                         manifest.artifact_path.name, runner.name, ", ".join(s.name for s in sources),
                         loop.params.threshold, "" if loop.decider.calibrated else " (set by hand)"
                         if config.threshold is not None else " (uncalibrated)", config.debounce,
                         mode, why, loop.run_id)
                summary = loop.run()
                if stop.reason:
                    summary.stopped_by = stop.reason
                return summary
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
@backend_option()
@backend_options
@click.option("--batch", type=click.IntRange(min=1), default=1, show_default=True,
              help="Frames per inference call (groups frames of several cameras).")
@click.option("--class", "classes", multiple=True, metavar="NAME",
              help="Class to inspect (multi-class artifacts): once for all cameras or once per camera.")
@click.option("--threshold", type=FiniteFloat(), default=None, help="Override the manifest's score threshold.")
@click.option("--debounce", type=click.IntRange(min=1), default=1, show_default=True,
              help="Alarm only after N consecutive anomalous frames.")
@click.option("--events", type=click.Path(path_type=Path, dir_okay=False), help="Append events as JSON lines here.")
@click.option("--evidence", type=click.Path(path_type=Path, file_okay=False),
              help="Save alarm frames with their heat-map overlay into this folder.")
@click.option("--evidence-format", type=click.Choice(EVIDENCE_FORMATS), default="jpg", show_default=True)
@click.option("--evidence-max", type=click.IntRange(min=1), default=None,
              help="Keep at most N evidence images (the oldest are deleted) [default: no limit].")
@click.option("--video", type=click.Path(path_type=Path, dir_okay=False),
              help="Write an annotated video (.avi MJPG; one file per camera when several).")
@click.option("--video-fps", type=FiniteFloat(min=0.0, min_open=True), default=None, help="Frame rate of --video (default: the source's, else 15).")
@click.option("--show", is_flag=True, help="Show annotated frames in a window (needs a display; q quits).")
@click.option("--drop/--no-drop", default=None,
              help="--drop: only the newest frame of each source (bounded latency); --no-drop: every frame "
                   "[default: --drop for cameras and streams, --no-drop for video files and image folders].")
@click.option("--loop", "loop_files", is_flag=True, help="Restart video files and image folders at their end.")
@click.option("--max-frames", type=click.IntRange(min=1), default=None, help="Stop after N processed frames.")
@click.option("--stats-every", type=FiniteFloat(min=0.0), default=10.0, show_default=True,
              help="Seconds between stats lines (0: none).")
@click.option("--reconnect-delay", type=FiniteFloat(min=0.0), default=0.5, show_default=True,
              help="First reconnect delay in seconds (doubles on each failure; at least 0.05).")
@click.option("--reconnect-max", type=FiniteFloat(min=0.0), default=10.0, show_default=True,
              help="Longest reconnect delay (s).")
@click.option("--open-timeout", type=FiniteFloat(min=0.1), default=DEFAULT_OPEN_TIMEOUT_MS / 1000.0,
              show_default=True, help="Seconds a camera or stream may take to deliver its first frame at start; "
                                      "none by then: exit 2 (network reads time out after half of it, >= 1 s).")
@click.option("--wait-for-source", is_flag=True,
              help="Wait for a camera that is not up at start (one that boots after this PC) instead of exiting 2 "
                   "after --open-timeout; the wait is retried like a reconnect.")
@click.option("--http", metavar="[HOST]:PORT", default=None,
              help="Serve the live line view, /metrics and /healthz: ':8080' on all interfaces, "
                   "'127.0.0.1:8080' on this machine only. Nothing listens without it.")
@click.option("--view-fps", type=FiniteFloat(min=0.0, min_open=True), default=5.0, show_default=True,
              help="Most frames per second rendered for the line view (only while someone watches).")
@click.option("--health-timeout", type=FiniteFloat(min=0.0, min_open=True), default=10.0, show_default=True,
              help="/healthz turns unhealthy when a camera delivered no frame for this many seconds.")
@click.option("--mqtt", metavar="URL", default=None,
              help="Publish alarms (QoS 1) to mqtt://[USER:PASS@]HOST[:PORT]/PREFIX on PREFIX/CAMERA/alarm; "
                   "?decisions=1 adds every decision, ?queue=N bounds the outage queue (default 1000).")
@click.option("--webhook", metavar="URL", default=None, help="POST each alarm event (JSON) to this http(s) URL.")
@click.option("--in-flight", type=click.IntRange(min=1), default=None,
              help="Served model: batches on the server at once [default: one per camera, at least 2].")
@click.option("-v", "--verbose", count=True, help="More log output.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def main(artifact: str, cameras: tuple[str, ...], backend: str, device: str, threads: Optional[int],
         precision_hint: Optional[str], perf_hint: Optional[str], cache_dir: Optional[str], batch: int,
         classes: tuple[str, ...],
         threshold: Optional[float], debounce: int, events: Optional[Path], evidence: Optional[Path],
         evidence_format: str, evidence_max: Optional[int], video: Optional[Path], video_fps: Optional[float],
         show: bool, drop: Optional[bool], loop_files: bool, max_frames: Optional[int], stats_every: float,
         reconnect_delay: float, reconnect_max: float, open_timeout: float, wait_for_source: bool,
         http: Optional[str], view_fps: float,
         health_timeout: float, mqtt: Optional[str], webhook: Optional[str], in_flight: Optional[int], verbose: int,
         quiet: bool) -> None:
    """Run ARTIFACT (model.onnx or model.engine, with its .manifest.json) on one or more cameras, or a model
    served by Triton Inference Server (grpc://HOST:8001/MODEL or http://HOST:8000/MODEL; its manifest comes
    from the server, and a lost server is reconnected to like a lost camera).

    Each frame gets a score (graph contract); an alarm fires after --debounce consecutive frames at or
    above the threshold. --http serves a live page, /metrics and /healthz; --mqtt and --webhook send
    alarms to the line's systems. Ctrl-C or SIGTERM finishes the current frame, flushes outputs, prints a
    summary and exits 0.

    Exit status: 0 finished (end of the files, --max-frames) or stopped by Ctrl-C/SIGTERM; 2 bad input (one
    'error:' line: a bad option, a missing artifact, a camera without a first frame within --open-timeout, a
    folder without a readable image); 3 a source that had delivered frames was lost when the run ended; 130 a
    second Ctrl-C. See docs/cli.md.
    """
    setup_logging(verbose, quiet)
    summary = run(RunConfig(
        artifact=artifact if parse_endpoint(artifact) else Path(artifact), cameras=cameras, backend=backend,
        runner=runner_options(device, threads, precision_hint, perf_hint, cache_dir), batch=batch, classes=classes,
        threshold=threshold,
        debounce=debounce, events=events, evidence=evidence, evidence_format=evidence_format, video=video,
        video_fps=video_fps, show=show, drop=drop, loop_files=loop_files, max_frames=max_frames,
        stats_every=stats_every, reconnect_delay=reconnect_delay, reconnect_max=reconnect_max,
        evidence_max=evidence_max, open_timeout=open_timeout, wait_for_source=wait_for_source, http=http,
        view_fps=view_fps,
        health_timeout=health_timeout, mqtt=mqtt, webhook=webhook, in_flight=in_flight))
    click.echo(summary.text())
    if summary.sources_lost:
        click.echo(f"error: source lost: {', '.join(summary.sources_lost)} stopped delivering frames and had not come "
                   "back when the run ended", err=True)
        sys.exit(EXIT_SOURCE_LOST)


if __name__ == "__main__":
    main()
