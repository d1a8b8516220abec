"""A station in one process: the cameras, artifacts and outputs of a ``StationConfig`` (a station file, or
``aaclip-runtime``'s flags) in one camera loop, reloaded on SIGHUP.

- ``run_station``: opens every artifact the cameras name (one runner each), the sources (named as the file
  says), the outputs (``OUTPUTS``: one opener per ``[outputs.NAME]`` section), and runs one ``CameraLoop``
  whose lanes share the capture, the sinks and the line view.
- ``StationReload``: on SIGHUP the file is read again; thresholds, debounces and outputs change between two
  frames; a change that needs a restart (a source, a camera's class or artifact, an artifact's path, the
  [runtime] backend settings) is refused with one log line and the running configuration goes on.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Callable, Optional, Sequence, Union

from aaclip.contract.errors import UserError
from aaclip.contract.manifest import Manifest, open_artifact

from .backends import AUTO, RunnerOptions, open_runner, warn_if_unverified
from .backends.triton import parse_endpoint
from .capture import Backoff, default_drop
from .credentials import ENV_MQTT_PASSWORD, ENV_OPCUA_PASSWORD, ENV_WEBHOOK_SECRET, read_secret, refuse_url_password
from .loop import CameraLoop, Lane, LoopConfig, Summary
from .sinks import AnnotatedVideo, DisplaySink, EventLog, EvidenceWriter, Sink
from .sources import NoFirstFrame, open_source
from .station import RuntimeSection, StationConfig, check_station, load_station

log = logging.getLogger(__name__)
start_log = logging.getLogger("aaclip.runtime.cli")  # the start-up lines keep the command's logger name


class StopSignals:
    """SIGINT/SIGTERM handlers, installed before any source opens (a signal during a stalled RTSP connect
    ends the run cleanly once the connect returns): the first signal asks the loop to finish the current
    frame, flush and summarize (exit 0); a second one aborts. With ``reload`` (an Event), SIGHUP sets it."""

    def __init__(self, reload: Optional[threading.Event] = None) -> None:
        self.event = threading.Event()
        self.reason: Optional[str] = None
        self.reload = reload
        self._previous: dict = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach the main thread only (an embedding application handles them)
        signals = (signal.SIGINT, signal.SIGTERM) + ((signal.SIGHUP,) if self.reload is not None else ())
        self._previous = {sig: signal.getsignal(sig) for sig in signals}
        for sig in self._previous:
            signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, _frame) -> None:
        name = signal.Signals(signum).name
        if signum == getattr(signal, "SIGHUP", None):
            log.info("SIGHUP received: reloading the station file between two frames")
            self.reload.set()
            return
        if self.event.is_set():
            raise KeyboardInterrupt
        log.info("%s received: finishing the current frame", name)
        self.reason = name
        self.event.set()

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---- outputs ---------------------------------------------------------------------------------------------
@dataclass
class OutputContext:
    """What an output opener may need besides its section."""

    station: StationConfig
    sources: Sequence[Any]  # the opened sources (a video's frame rate)
    backoff: Backoff


def _events(s, ctx: OutputContext) -> Optional[Sink]:
    return EventLog(s.path, s.mode, s.max_bytes, s.keep, s.summary_every) if s.path else None


def _evidence(s, ctx: OutputContext) -> Optional[Sink]:
    if not s.dir:
        return None
    return EvidenceWriter(s.dir, s.format, max_files=s.max_files, max_bytes=s.max_bytes, max_age_days=s.max_age_days)


def _video(s, ctx: OutputContext) -> Optional[Sink]:
    return AnnotatedVideo(s.path, [s.fps or src.fps for src in ctx.sources], s.max_bytes) if s.path else None


def _display(s, ctx: OutputContext) -> Optional[Sink]:
    return DisplaySink() if s.show else None


def _http(s, ctx: OutputContext) -> Optional[Sink]:
    if s.listen is None:
        return None
    from .web import LineView

    reviews = None
    if ctx.station.outputs.reviews.path is not None:  # the review buttons of the line view
        from .reviews import ReviewLog

        reviews = ReviewLog(ctx.station.outputs.reviews)
    try:
        return LineView.from_options(s, reviews=reviews)
    except BaseException:
        if reviews is not None:
            reviews.close()
        raise


def _reviews(s, ctx: OutputContext) -> Optional[Sink]:
    """``[outputs.reviews]`` is part of the line view (``_http`` opens it); alone it has nowhere to show."""
    if s.path is not None and ctx.station.outputs.http.listen is None:
        raise UserError("reviews need the line view: give --http (or [outputs.http] listen) with --reviews")
    return None


def _mqtt(s, ctx: OutputContext) -> Optional[Sink]:
    if not s.url:
        return None
    from .mqtt import MqttSink

    refuse_url_password("--mqtt", s.url, f"give it with --mqtt-password-file FILE (password_file) or "
                                         f"${ENV_MQTT_PASSWORD}")
    password = read_secret("MQTT password", s.password_file, ENV_MQTT_PASSWORD)
    return MqttSink(s.url, backoff=ctx.backoff, password=password)


def _webhook(s, ctx: OutputContext) -> Optional[Sink]:
    if not s.url:
        return None
    from .webhook import WebhookSink

    refuse_url_password("--webhook", s.url, "sign the POSTs with --webhook-secret-file FILE (secret_file)")
    return WebhookSink(s.url, secret=read_secret("webhook secret", s.secret_file, ENV_WEBHOOK_SECRET))


def _opcua(s, ctx: OutputContext) -> Optional[Sink]:
    if not s.endpoint:
        return None
    from .opcua import OpcuaSink

    refuse_url_password("--opcua", s.endpoint, f"give --opcua-username and the password with --opcua-password-file "
                                               f"FILE (password_file) or ${ENV_OPCUA_PASSWORD}")
    password = read_secret("OPC UA password", s.password_file, ENV_OPCUA_PASSWORD)
    return OpcuaSink(s, password=password, backoff=ctx.backoff)


OUTPUTS: dict[str, Callable[[Any, OutputContext], Optional[Sink]]] = {
    "events": _events, "evidence": _evidence, "video": _video, "display": _display, "http": _http,
    "mqtt": _mqtt, "webhook": _webhook, "opcua": _opcua, "reviews": _reviews,
}
"""One opener per ``[outputs.NAME]`` section (``station.outputs.Outputs``): (section, context) -> a started-
later ``Sink``, or None when the section leaves the output off. A new output adds its opener here."""


def open_outputs(station: StationConfig, ctx: OutputContext) -> dict[str, Sink]:
    """The outputs the station turns on, by section name (opened now: a bad path fails before the first frame)."""
    sinks: dict[str, Sink] = {}
    try:
        for f in fields(station.outputs):
            try:
                sink = OUTPUTS[f.name](getattr(station.outputs, f.name), ctx)
            except UserError as exc:  # name the section of a station file
                if station.origin is None or station.lines is None:
                    raise
                line = station.lines.line_of(("outputs", f.name))
                raise UserError(f"{station.origin}{f' line {line}' if line else ''}: [outputs.{f.name}]: {exc}") from None
            if sink is not None:
                sinks[f.name] = sink
    except BaseException:
        for sink in sinks.values():
            sink.close()
        raise
    return sinks


# ---- models and cameras ----------------------------------------------------------------------------------
def runner_options_of(runtime: RuntimeSection) -> RunnerOptions:
    extra = {k: v for k, v in (("precision", runtime.precision), ("perf_hint", runtime.perf_hint),
                               ("cache_dir", runtime.cache_dir)) if v is not None}
    return RunnerOptions(device=runtime.device or "auto", threads=runtime.threads, extra=extra)


def backoff_of(runtime: RuntimeSection) -> Backoff:
    return Backoff(initial=runtime.reconnect_delay, maximum=max(runtime.reconnect_max, runtime.reconnect_delay))


def open_model(artifact: Union[str, Path], backend: str, batch: int,
               options: RunnerOptions) -> tuple[Manifest, str, RunnerOptions]:
    """(manifest, backend, runner options) of an artifact: a local file's manifest, or the manifest a Triton
    server publishes for its model (validated and checked against the served tensors)."""
    if parse_endpoint(artifact) is None:
        return open_artifact(artifact), backend, options
    if backend not in (AUTO, "triton"):
        raise UserError(f"{artifact} is a served model: it runs on the triton backend, not {backend}")
    from .backends.triton import served_manifest

    manifest = served_manifest(artifact, batch)
    return manifest, "triton", RunnerOptions(extra={"endpoint": str(artifact)})


def _artifact_arg(path: str) -> Union[str, Path]:
    return path if parse_endpoint(path) else Path(path)


def camera_class(station: StationConfig, index: int, manifest: Manifest) -> int:
    """The class index a camera inspects (its ``class``; a multi-class artifact needs one)."""
    camera = station.cameras[index]
    try:
        if camera.class_ is None:
            if len(manifest.classes) > 1:
                raise UserError(f"{manifest.artifact_path.name} holds several classes; choose with --class NAME "
                                f"(once, or once per camera) or class = \"NAME\" in the camera's section; "
                                f"available: {', '.join(manifest.classes)}")
            return 0
        return manifest.class_index(camera.class_)
    except UserError as exc:
        raise UserError(f"{station.where('cameras', index, 'class')}{exc}") from None


def alarm_settings(station: StationConfig) -> tuple[tuple, tuple]:
    """Per camera: (thresholds, debounces)."""
    return (tuple(station.camera_threshold(c) for c in station.cameras),
            tuple(station.camera_debounce(c) for c in station.cameras))


def loop_config(station: StationConfig, sources: Sequence, stop: Optional[threading.Event] = None,
                reload: Optional[threading.Event] = None,
                on_reload: Optional[Callable[[CameraLoop], None]] = None) -> LoopConfig:
    rt = station.runtime
    thresholds, debounces = alarm_settings(station)
    drop = rt.drop if rt.drop is not None else default_drop(sources)
    return LoopConfig(batch=rt.batch, drop=drop, threshold=rt.threshold, debounce=rt.debounce,
                      max_frames=rt.max_frames, stats_every=rt.stats_every, stop_event=stop,
                      in_flight=rt.in_flight or max(2, len(station.cameras)), backoff=backoff_of(rt),
                      source_thresholds=thresholds, source_debounces=debounces, reload_event=reload,
                      on_reload=on_reload)


def run_station(station: StationConfig, runner: Optional[RunnerOptions] = None,
                reload_from: Optional[Callable[[], StationConfig]] = None,
                extra_sinks: Sequence[Sink] = ()) -> Summary:
    """Run the station until its sources end, ``max_frames`` or SIGINT/SIGTERM; returns the loop's summary.

    ``runner``: runner options instead of the [runtime] ones (tests pass fakes); ``reload_from``: reads the
    station again on SIGHUP (the file with the command line's overrides); ``extra_sinks``: more outputs."""
    if not station.cameras and station.origin is None:
        raise UserError("no camera given; pass --camera (device index, path, URL, csi://0 or a pipeline)")
    check_station(station)
    rt = station.runtime
    options = runner or runner_options_of(rt)
    models = {}
    for name in dict.fromkeys(station.camera_artifact(c) for c in station.cameras):
        models[name] = open_model(_artifact_arg(station.artifacts[name].path), rt.backend, rt.batch, options)
    manifests = [models[station.camera_artifact(c)][0] for c in station.cameras]
    class_ids = [camera_class(station, i, m) for i, m in enumerate(manifests)]
    reload_event = threading.Event() if reload_from is not None else None
    sources: list = []
    sinks: dict[str, Sink] = {}
    with StopSignals(reload_event) as stop, contextlib.ExitStack() as runners:
        try:
            timeout_ms = int(rt.open_timeout * 1000)
            for camera in station.cameras:
                if stop.event.is_set():
                    break
                try:
                    source = open_source(camera.source, loop=rt.loop, open_timeout_ms=timeout_ms,
                                         read_timeout_ms=max(timeout_ms // 2, 1000), wait=rt.wait_for_source,
                                         stop=stop.event)
                except NoFirstFrame as exc:
                    how = ("open_timeout and wait_for_source of [runtime]" if station.origin is not None else
                           "--open-timeout sets how long to wait, --wait-for-source keeps waiting for a camera that "
                           "starts after this PC")
                    raise NoFirstFrame(f"{exc}; {how}") from None
                if camera.name:
                    source.name = camera.name
                sources.append(source)
            if stop.event.is_set():
                log.info("stopped by %s before the loop started", stop.reason)
                return Summary(stopped_by=stop.reason or "signal")
            ctx = OutputContext(station, sources, backoff_of(rt))
            sinks = open_outputs(station, ctx)
            lanes = []
            for name, (manifest, backend, opts) in models.items():
                active = runners.enter_context(open_runner(manifest, backend, opts))
                if backend != "triton":  # a served model's backend is the server's
                    warn_if_unverified(manifest, active.name, opts)
                lanes.append(Lane(active, manifest, tuple(i for i, c in enumerate(station.cameras)
                                                          if station.camera_artifact(c) == name)))
            reloader = StationReload(reload_from, station, sinks, ctx) if reload_from is not None else None
            config = loop_config(station, sources, stop.event, reload_event, reloader)
            notify = _notifier(station)
            loop = CameraLoop(lanes[0].runner, lanes[0].manifest, sources, class_ids, config,
                              list(sinks.values()) + list(extra_sinks) + ([notify] if notify else []), lanes)
            _log_start(station, loop, models, config)
            summary = loop.run()
            if stop.reason:
                summary.stopped_by = stop.reason
            return summary
        finally:
            for sink in sinks.values():  # the loop closed them already; this covers a failure before it ran
                sink.close()
            for s in sources:
                s.release()


def _notifier(station: StationConfig) -> Optional[Sink]:
    if not station.runtime.watchdog:
        return None
    from .systemd import SystemdNotifier

    return SystemdNotifier.from_environment()


def _log_start(station: StationConfig, loop: CameraLoop, models: dict, config: LoopConfig) -> None:
    for name, (manifest, _, _) in models.items():
        uses = [i for i, c in enumerate(station.cameras) if station.camera_artifact(c) == name]
        if not manifest.calibrated:
            start_log.warning("%s is not calibrated: its threshold is the export default, not fitted on this line's good "
                        "parts (events say calibrated: false); run aaclip-calibrate threshold %s --images "
                        "GOOD_PARTS/ first", manifest.artifact_path.name, station.artifacts[name].path)
        for i in uses:
            if manifest.calibrated and config.threshold_of(i) is not None:
                start_log.warning("--threshold %.4g replaces the calibrated threshold %.4g of %s (events say calibrated: "
                            "false)", config.threshold_of(i), manifest.score.threshold, loop.sources[i].name)
    mode = "live mode (newest frame only)" if config.drop else "offline mode (every frame)"
    why = "" if station.runtime.drop is not None else (" for a live source; --no-drop: every frame"
                                                       if config.drop else " for files; --drop: newest only")
    d = loop.decider
    for lane in loop.lanes:
        settings = {(d.source_params[i].threshold, d.source_calibrated[i], config.threshold_of(i) is not None,
                     d.debouncers[i].n) for i in lane.sources}
        if len(settings) == 1:  # one threshold and debounce for the lane's cameras
            threshold, calibrated, by_hand, debounce = settings.pop()
            alarm = (f"threshold {threshold:.4g}{'' if calibrated else ' (set by hand)' if by_hand else ' (uncalibrated)'}"
                     f", debounce {debounce}")
            cams = ", ".join(loop.sources[i].name for i in lane.sources)
        else:
            alarm = "per-camera alarm settings"
            cams = ", ".join(f"{loop.sources[i].name} (threshold {d.source_params[i].threshold:.4g}"
                             f"{'' if d.source_calibrated[i] else ', not calibrated'}, debounce {d.debouncers[i].n})"
                             for i in lane.sources)
        start_log.info("running %s (%s) on %s; %s, %s%s, run %s", lane.manifest.artifact_path.name,
                       lane.runner.name, cams, alarm, mode, why, loop.run_id)


# ---- reload ----------------------------------------------------------------------------------------------
_LIVE_RUNTIME = ("threshold", "debounce", "stats_every")
_LIVE_CAMERA = ("threshold", "debounce")


def restart_changes(old: StationConfig, new: StationConfig) -> list[str]:
    """The keys whose change needs a restart (empty: the new station can be applied between two frames)."""
    out = []
    for f in fields(old.station):
        if getattr(old.station, f.name) != getattr(new.station, f.name):
            out.append(f"[station] {f.name}")
    for f in fields(old.runtime):
        if f.name not in _LIVE_RUNTIME and getattr(old.runtime, f.name) != getattr(new.runtime, f.name):
            out.append(f"[runtime] {f.name}")
    if old.artifacts != new.artifacts:
        names = sorted(set(old.artifacts) ^ set(new.artifacts)) or sorted(
            n for n in old.artifacts if old.artifacts[n] != new.artifacts[n])
        out.append(", ".join(f"[artifacts.{n}]" for n in names))
    if len(old.cameras) != len(new.cameras):
        out.append(f"the number of cameras ({len(old.cameras)} -> {len(new.cameras)})")
    else:
        for i, (a, b) in enumerate(zip(old.cameras, new.cameras)):
            for f in fields(a):
                if f.name not in _LIVE_CAMERA and getattr(a, f.name) != getattr(b, f.name):
                    out.append(f"camera #{i + 1} {f.metadata.get('key') or f.name}")
    return out


class StationReload:
    """``LoopConfig.on_reload``: reads the station again (``read``) and applies what may change between two
    frames: thresholds, debounces, stats period and outputs (an output whose section changed is closed and
    opened again). Anything else, or a file with an error, is refused with one log line; the running
    configuration goes on."""

    def __init__(self, read: Callable[[], StationConfig], running: StationConfig, sinks: dict[str, Sink],
                 ctx: OutputContext):
        self.read, self.running, self.sinks, self.ctx = read, running, sinks, ctx
        self.applied = 0
        self.refused = 0

    def __call__(self, loop: CameraLoop) -> None:
        where = self.running.origin or "the station"
        try:
            new = self.read()
            check_station(new)
        except UserError as exc:
            self.refused += 1
            log.error("reload refused: %s; the running configuration goes on", exc)
            return
        restart = restart_changes(self.running, new)
        if restart:
            self.refused += 1
            log.error("reload of %s refused: %s changed, which needs a restart (systemctl restart the service); "
                      "the running configuration goes on", where, "; ".join(restart))
            return
        changes = loop.set_alarm_settings(*alarm_settings(new))
        if new.runtime.stats_every != self.running.runtime.stats_every:
            loop.stats.every_s = new.runtime.stats_every
            changes.append(f"stats every {new.runtime.stats_every:g} s")
        outputs = self._outputs(loop, new)
        changes += [f"[outputs.{name}]" for name in outputs]
        self.running = new
        self.applied += 1
        log.warning("reloaded %s: %s", where, "; ".join(changes) if changes else "nothing changed")

    def _outputs(self, loop: CameraLoop, new: StationConfig) -> list[str]:
        """Reopen the outputs whose section changed; one that cannot open keeps its old settings."""
        changed = []
        for f in fields(new.outputs):
            old_settings, new_settings = getattr(self.running.outputs, f.name), getattr(new.outputs, f.name)
            reviews_changed = f.name == "http" and self.running.outputs.reviews != new.outputs.reviews
            if old_settings == new_settings and not reviews_changed:  # the line view holds the reviews log
                continue
            old_sink = self.sinks.get(f.name)
            if old_sink is not None:  # closed first: a new web view may listen on the same port
                loop.replace_sinks([old_sink], [])
                self.sinks.pop(f.name)
            try:
                sink = OUTPUTS[f.name](new_settings, replace(self.ctx, station=new))
                if sink is not None:
                    loop.replace_sinks([], [sink])
                    self.sinks[f.name] = sink
                changed.append(f.name)
            except (UserError, OSError) as exc:
                log.error("reload: [outputs.%s] not changed (%s); it keeps its old settings", f.name, exc)
                setattr(new.outputs, f.name, old_settings)
                if old_sink is not None:
                    sink = OUTPUTS[f.name](old_settings, self.ctx)
                    loop.replace_sinks([], [sink])
                    self.sinks[f.name] = sink
        return changed


def reader_of(path: Path, apply_flags: Callable[[StationConfig], StationConfig]) -> Callable[[], StationConfig]:
    """Reads ``path`` again with the command line's overrides applied (they keep winning over the file)."""
    return lambda: apply_flags(load_station(path, check=False))
