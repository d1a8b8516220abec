"""``aaclip-runtime``: run an exported artifact (ONNX or TensorRT engine + manifest), or a model served by Triton
Inference Server (``grpc://HOST:8001/MODEL``), on cameras; or a whole station from one file (``--config
station.toml``: several cameras and artifacts, outputs, reload on SIGHUP, systemd notify).

The flags and the station file fill the same dataclasses (``aaclip.runtime.station``): each setting's ``flag``
(``station_flags``) says which flag sets which key; ``--print-config`` writes the station a command line describes."""
from __future__ import annotations

import copy
import functools
import getpass
import logging
import re
import sys
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Union

import click
from aaclip.contract.cli import EXIT_SOURCE_LOST, Command, FiniteFloat, setup_logging
from aaclip.contract.errors import UserError

from .backends import AUTO, RunnerOptions
from .backends.options import backend_option, backend_options
from .backends.triton import parse_endpoint
from .capture import Backoff, default_drop
from .loop import LoopConfig, Summary, one_per_camera
from .service import StopSignals, open_model, reader_of, run_station  # noqa: F401 - StopSignals: API
from .sinks import EVIDENCE_FORMATS
from .source_options import DEFAULT_OPEN_TIMEOUT_S, first_frame_options
from .station import (
    ArtifactSection,
    CameraSection,
    ConfigError,
    StationConfig,
    check_station,
    load_station,
    station_toml,
)
from .station.load import resolve_source
from .station.schema import is_section, settings
from .station.outputs import EVENT_MODES, OPCUA_MODES, OPCUA_SECURITY, HttpOutput, MqttOutput, OpcuaOutput, WebhookOutput

log = logging.getLogger(__name__)

_D = StationConfig()  # the defaults of every key: the flags' defaults are the file's


@dataclass
class RunConfig:
    """Everything ``aaclip-runtime`` is asked to do (one field per command-line option); ``station()`` turns
    it into the ``StationConfig`` that runs."""

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
    open_timeout: float = DEFAULT_OPEN_TIMEOUT_S
    wait_for_source: bool = False  # a live source without a first frame in open_timeout: wait, not exit 2
    # the line outputs: the address/URL alone, or the whole section (``station.outputs``: access, secrets files)
    http: Union[None, str, HttpOutput] = None        # [HOST]:PORT of the line view, /metrics and /healthz
    view_fps: float = 5.0
    health_timeout: float = 10.0
    mqtt: Union[None, str, MqttOutput] = None        # mqtt://HOST[:PORT]/PREFIX
    webhook: Union[None, str, WebhookOutput] = None  # http(s) URL receiving alarm events
    opcua: Union[None, str, OpcuaOutput] = None      # opcua://HOST:PORT/ROOT: the PLC's or SCADA's server
    reviews: Optional[Path] = None                   # operators' verdicts from the line view (needs http)

    @property
    def backoff(self) -> Backoff:
        return Backoff(initial=self.reconnect_delay, maximum=max(self.reconnect_max, self.reconnect_delay))

    in_flight: Optional[int] = None  # batches on a server at once (None: one per camera, at least 2)

    def loop_config(self, stop=None, sources=()) -> LoopConfig:
        """The loop's settings; ``drop`` None is decided by the ``sources`` (``capture.default_drop``)."""
        drop = self.drop if self.drop is not None else default_drop(sources)
        return LoopConfig(batch=self.batch, drop=drop, threshold=self.threshold, debounce=self.debounce,
                          max_frames=self.max_frames, stats_every=self.stats_every, stop_event=stop,
                          in_flight=self.in_flight or max(2, len(self.cameras)), backoff=self.backoff)

    def station(self) -> StationConfig:
        """The station these options describe (no limit on evidence unless ``evidence_max``: as before)."""
        values = {name: getattr(self, name) for name in station_flags() if hasattr(self, name)}
        sections = {name: values.pop(name) for name in OUTPUT_SECTIONS if is_dataclass(values.get(name))}
        values.update(loop_files=self.loop_files, device=self.runner.device, threads=self.runner.threads,
                      precision_hint=self.runner.extra.get("precision"), perf_hint=self.runner.extra.get("perf_hint"),
                      cache_dir=self.runner.extra.get("cache_dir"))
        station = apply_flags(StationConfig(), values, set(values))
        for name, section in sections.items():
            setattr(station.outputs, name, replace(section))
        station.outputs.evidence.max_files = self.evidence_max
        return with_cameras(station, str(self.artifact), self.cameras, self.classes)


def _flagged_settings(section: Any, path: str = "") -> Iterator[tuple[str, str, str]]:
    """(option, section path, field) of every station setting that names its command-line option (``flag``)."""
    for f in settings(type(section)):
        value = getattr(section, f.name)
        if is_section(value):
            yield from _flagged_settings(value, f"{path}.{f.name}" if path else f.name)
        elif f.metadata.get("flag"):
            yield f.metadata["flag"].split("/")[0], path, f.name


@functools.lru_cache(maxsize=1)
def station_flags() -> dict[str, tuple[str, str, str]]:
    """click parameter name -> (section, key, option) of the station file: read from each setting's ``flag``
    in ``aaclip.runtime.station`` (the one place a key names its flag) and this command's options."""
    by_option = {opt: p.name for p in main.params for opt in p.opts}
    return {by_option[opt]: (section, key, opt) for opt, section, key in _flagged_settings(StationConfig())}


OUTPUT_SECTIONS = ("http", "mqtt", "webhook", "opcua")  # RunConfig fields that may hold a whole section


def _section(station: StationConfig, path: str) -> Any:
    obj: Any = station
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


def apply_flags(station: StationConfig, values: dict[str, Any], given: set[str]) -> StationConfig:
    """A copy of ``station`` with the keys of the ``given`` flags set from ``values`` (relative paths made
    absolute: a printed station works from any folder)."""
    station = copy.deepcopy(station)
    flags = station_flags()
    for name in given & set(flags):
        section, key, flag = flags[name]
        value = values[name]
        if isinstance(value, Path):
            value = value.absolute()
        checked = {f.name: f for f in fields(type(_section(station, section)))}[key].metadata.get("check")
        problem = checked(value) if checked is not None and value is not None else None
        if problem:
            raise UserError(f"{flag} {value}: {problem}")
        setattr(_section(station, section), key, value)
    return station


def with_cameras(station: StationConfig, artifact: Optional[str], cameras: tuple[str, ...],
                 classes: tuple[str, ...]) -> StationConfig:
    """ARTIFACT, --camera and --class of a command line: they replace the file's artifacts / cameras / classes."""
    if artifact:
        if parse_endpoint(artifact) is None:
            path = Path(artifact).absolute()
            name = re.sub(r"[^A-Za-z0-9_-]+", "_", path.stem) or "model"
            station.artifacts = {name: ArtifactSection(str(path))}
        else:
            station.artifacts = {"served": ArtifactSection(artifact)}
        for camera in station.cameras:
            camera.artifact = None
        station.lines = None  # errors about artifacts and cameras no longer point into the file
    if cameras:
        station.cameras = [CameraSection(source=resolve_source(c, Path.cwd())) for c in cameras]
        station.lines = None
    if classes:
        for camera, name in zip(station.cameras, one_per_camera(classes, len(station.cameras))):
            camera.class_ = name
    return station


def run(config: Union[RunConfig, StationConfig]) -> Summary:
    """Run the camera loop as configured; returns its summary (also on SIGINT/SIGTERM)."""
    if isinstance(config, RunConfig):
        if config.debounce < 1:
            raise UserError(f"--debounce must be >= 1, got {config.debounce}")
        return run_station(config.station(), runner=config.runner)
    return run_station(config)


def _print_password_hash(ctx: click.Context, _param, value: bool) -> None:
    """``--hash-password``: the scrypt hash of a password read without echo (or from stdin), then exit."""
    if not value or ctx.resilient_parsing:
        return
    from .http_auth import hash_password

    if sys.stdin.isatty():
        password = getpass.getpass("password: ")
        if getpass.getpass("again: ") != password:
            raise click.UsageError("the two passwords differ; run --hash-password again")
    else:
        password = sys.stdin.readline().rstrip("\r\n")
    if not password:
        raise click.UsageError("an empty password; give one")
    click.echo(hash_password(password))
    ctx.exit(0)


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("artifact", metavar="[ARTIFACT|grpc://HOST:8001/MODEL]", required=False)
@click.option("--config", "config", type=click.Path(path_type=Path, dir_okay=True), default=None,
              metavar="STATION.toml",
              help="Run the station of this file (cameras, artifacts, outputs; docs/deploy-station.md); flags given "
                   "as well override its keys. SIGHUP reloads it.")
@click.option("--print-config", is_flag=True,
              help="Print the effective station (the file with the flags applied, or the flags alone) as a "
                   "station file and exit.")
@click.option("--systemd-unit", is_flag=True,
              help="Print a systemd unit that runs --config STATION.toml as a service (Type=notify, watchdog, "
                   "restart on failure) and exit.")
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
@click.option("--events-mode", type=click.Choice(EVENT_MODES), default=_D.outputs.events.mode, show_default=True,
              help="decisions: every frame; alarms: alarm frames plus a summary line per camera and period.")
@click.option("--events-max-bytes", type=click.IntRange(min=4096), default=_D.outputs.events.max_bytes,
              show_default=True, help="Rotate the event file before it passes this size.")
@click.option("--events-keep", type=click.IntRange(min=0), default=_D.outputs.events.keep, show_default=True,
              help="Rotated event files kept (events.jsonl.1 ..); the oldest is deleted.")
@click.option("--events-summary-every", type=FiniteFloat(min=0.0, min_open=True),
              default=_D.outputs.events.summary_every, show_default=True,
              help="--events-mode alarms: seconds between the summary lines of each camera.")
@click.option("--evidence", type=click.Path(path_type=Path, file_okay=False),
              help="Save alarm frames with their heat-map overlay into this folder.")
@click.option("--evidence-format", type=click.Choice(EVIDENCE_FORMATS), default="jpg", show_default=True)
@click.option("--evidence-max", type=click.IntRange(min=1), default=_D.outputs.evidence.max_files, show_default=True,
              help="Keep at most N evidence images (the oldest are deleted).")
@click.option("--evidence-max-bytes", type=click.IntRange(min=1 << 20), default=_D.outputs.evidence.max_bytes,
              show_default=True, help="Keep at most this many bytes of evidence images (the oldest are deleted).")
@click.option("--evidence-max-age-days", type=FiniteFloat(min=0.0, min_open=True),
              default=_D.outputs.evidence.max_age_days, show_default=True,
              help="Delete evidence images older than this.")
@click.option("--video", type=click.Path(path_type=Path, dir_okay=False),
              help="Write an annotated video (.avi MJPG; one file per camera when several).")
@click.option("--video-fps", type=FiniteFloat(min=0.0, min_open=True), default=None, help="Frame rate of --video (default: the source's, else 15).")
@click.option("--video-max-bytes", type=click.IntRange(min=1 << 20), default=_D.outputs.video.max_bytes,
              show_default=True, help="A camera's --video is finished at this size (later frames not written).")
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
@first_frame_options
@click.option("--http", metavar="[HOST]:PORT", default=None,
              help="Serve the live line view, /metrics and /healthz: ':8080' on this machine only, '0.0.0.0:8080' "
                   "on every interface (then credentials are required, or --http-allow-anonymous). Nothing "
                   "listens without it.")
@click.option("--view-fps", type=FiniteFloat(min=0.0, min_open=True), default=5.0, show_default=True,
              help="Most frames per second rendered for the line view (only while someone watches).")
@click.option("--health-timeout", type=FiniteFloat(min=0.0, min_open=True), default=10.0, show_default=True,
              help="/healthz turns unhealthy when a camera delivered no frame for this many seconds.")
@click.option("--http-token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File holding a bearer token that opens the line view and /metrics (Authorization: Bearer); "
                   "else $AACLIP_HTTP_TOKEN.")
@click.option("--http-users", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File of NAME:HASH lines (hashes from aaclip-runtime --hash-password): users who may open the "
                   "line view with their password (HTTP Basic).")
@click.option("--http-tls-cert", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="PEM certificate (chain): serve HTTPS (with --http-tls-key).")
@click.option("--http-tls-key", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The PEM private key of --http-tls-cert.")
@click.option("--healthz-open/--healthz-auth", default=_D.outputs.http.healthz_open, show_default=True,
              help="/healthz answers without credentials (for probes), or asks for them like every other page.")
@click.option("--max-viewers", type=click.IntRange(min=0), default=_D.outputs.http.max_viewers, show_default=True,
              help="Concurrent live streams (all cameras); more viewers get 503.")
@click.option("--http-timeout", type=FiniteFloat(min=0.0, min_open=True), default=_D.outputs.http.timeout,
              show_default=True,
              help="Seconds a client may take to send its request or to accept data before it is dropped.")
@click.option("--http-allow-anonymous", is_flag=True,
              help="Allow --http beyond this machine without credentials (logs a warning).")
@click.option("--mqtt", metavar="URL", default=None,
              help="Publish alarms (QoS 1) to mqtt://[USER@]HOST[:PORT]/PREFIX on PREFIX/CAMERA/alarm; "
                   "?decisions=1 adds every decision, ?queue=N bounds the outage queue (default 1000).")
@click.option("--mqtt-password-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File holding the MQTT password (else $AACLIP_MQTT_PASSWORD); never in the URL.")
@click.option("--webhook", metavar="URL", default=None, help="POST each alarm event (JSON) to this http(s) URL.")
@click.option("--webhook-secret-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File holding the shared secret that signs each POST (X-Aaclip-Signature: t=...,v1=HMAC-SHA256); "
                   "else $AACLIP_WEBHOOK_SECRET.")
@click.option("--opcua", metavar="URL", default=None,
              help="Write each camera's Alarm, Score, LastAlarmTime, FrameCounter, Heartbeat and ModelId into the "
                   "OPC UA server at opcua://HOST:PORT/ROOT (or opc.tcp://...), nodes ns=NAMESPACE;s=ROOT.CAMERA.NAME.")
@click.option("--opcua-mode", type=click.Choice(OPCUA_MODES), default=_D.outputs.opcua.mode, show_default=True,
              help="Write on every decision, or only when a camera's alarm starts or ends (plus the heartbeat).")
@click.option("--opcua-security", type=click.Choice(OPCUA_SECURITY), default=_D.outputs.opcua.security,
              show_default=True,
              help="Basic256Sha256: signed and encrypted with --opcua-certificate and --opcua-private-key.")
@click.option("--opcua-certificate", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The station's application instance certificate (DER or PEM) for --opcua-security.")
@click.option("--opcua-private-key", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Its private key (PEM or DER).")
@click.option("--opcua-server-certificate", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Trust only this server certificate [default: the one the server's endpoints present].")
@click.option("--opcua-username", default=None, help="OPC UA user (the password from --opcua-password-file).")
@click.option("--opcua-password-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="File holding the OPC UA password (else $AACLIP_OPCUA_PASSWORD).")
@click.option("--opcua-namespace", default=_D.outputs.opcua.namespace, show_default=True,
              help="Namespace URI of the station's nodes in the server.")
@click.option("--reviews", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Let operators mark alarms 'real defect' / 'false alarm' and flag missed defects on the line "
                   "view (needs --http); one JSON line per review appended here, reviewed frames kept in "
                   "FILE's <stem>-frames/ folder. Refit with: aaclip-calibrate threshold ARTIFACT --reviews FILE.")
@click.option("--in-flight", type=click.IntRange(min=1), default=None,
              help="Served model: batches on the server at once [default: one per camera, at least 2].")
@click.option("-v", "--verbose", count=True, help="More log output.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
@click.option("--hash-password", is_flag=True, is_eager=True, expose_value=False, callback=_print_password_hash,
              help="Read a password (asked twice on a terminal, else one line of stdin), print its scrypt hash for "
                   "--http-users, and exit.")
def main(**options: Any) -> None:
    """Run ARTIFACT (model.onnx or model.engine, with its .manifest.json) on one or more cameras, or a model
    served by Triton Inference Server (grpc://HOST:8001/MODEL or http://HOST:8000/MODEL; its manifest comes
    from the server, and a lost server is reconnected to like a lost camera); or a whole station:
    --config station.toml (several cameras and artifacts; --print-config writes one from a command line).

    Each frame gets a score (graph contract); an alarm fires after --debounce consecutive frames at or
    above the threshold. --http serves a live page, /metrics and /healthz (behind a token or passwords, over
    HTTPS: docs/security.md); --mqtt, --webhook and --opcua send alarms to the line's systems, their secrets
    read from files. Ctrl-C or SIGTERM finishes the current frame, flushes outputs, prints a
    summary and exits 0; SIGHUP re-reads --config (thresholds, debounce and outputs change between two frames).

    Exit status: 0 finished (end of the files, --max-frames) or stopped by Ctrl-C/SIGTERM; 2 bad input (one
    'error:' line: a bad option or station file, a missing artifact, a camera without a first frame within
    --open-timeout, a folder without a readable image); 3 a source that had delivered frames was lost when the
    run ended; 130 a second Ctrl-C. See docs/cli.md.
    """
    ctx = click.get_current_context()
    given = {name for name in options
             if ctx.get_parameter_source(name) not in (click.core.ParameterSource.DEFAULT, None)}
    config_path: Optional[Path] = options["config"]
    if config_path is None and not options["artifact"]:
        raise click.UsageError("give ARTIFACT (model.onnx, model.engine, grpc://HOST:8001/MODEL) or --config "
                               "STATION.toml")
    if options["systemd_unit"] and config_path is None:
        raise UserError("--systemd-unit runs a station file: give --config STATION.toml (write one with "
                        "--print-config)")
    base = load_station(config_path, check=False) if config_path is not None else StationConfig()
    flags = given if config_path is not None else set(options)

    def effective(station: StationConfig) -> StationConfig:
        station = apply_flags(station, options, flags)
        return with_cameras(station, options["artifact"], options["cameras"],
                            options["classes"] if "classes" in given else ())

    station = effective(base)
    if not (options["verbose"] or options["quiet"]) and config_path is not None:
        level = station.station.log_level
        setup_logging(1 if level == "debug" else 0, level == "warning")
    else:
        setup_logging(options["verbose"], options["quiet"])
    if options["print_config"]:
        if not station.cameras:
            raise UserError("no camera given; pass --camera (device index, path, URL, csi://0 or a pipeline)")
        check_station(station)
        click.echo(station_toml(station), nl=False)
        return
    if options["systemd_unit"]:
        from .systemd import unit_text

        check_station(station)
        click.echo(unit_text(config_path, station.station.name), nl=False)
        return
    summary = run_station(station, reload_from=reader_of(config_path, effective) if config_path else None)
    click.echo(summary.text())
    if summary.sources_lost:
        click.echo(f"error: source lost: {', '.join(summary.sources_lost)} stopped delivering frames and had not come "
                   "back when the run ended", err=True)
        sys.exit(EXIT_SOURCE_LOST)


__all__ = ["ConfigError", "RunConfig", "apply_flags", "main", "open_model", "run", "station_flags", "with_cameras"]


if __name__ == "__main__":
    main()
