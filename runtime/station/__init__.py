"""The station file: one TOML file that configures a whole station (``aaclip-runtime --config station.toml``).

    [station]            name, log_level, state_dir
    [runtime]            backend, precision, device, threads, batch, threshold, debounce, ... (defaults of
                         every camera)
    [artifacts.NAME]     path = "plates.onnx"   (one or several; a camera names one)
    [[cameras]]          source, name, class, artifact, threshold, debounce   (per camera)
    [outputs.events]     path, mode = "decisions"|"alarms", max_bytes, keep, summary_every
    [outputs.evidence]   dir, format, max_files, max_bytes, max_age_days
    [outputs.video] [outputs.display] [outputs.http] [outputs.mqtt] [outputs.webhook] [outputs.opcua]
    [outputs.reviews]    path, max_bytes, keep, max_frames   (operators' verdicts from the line view)

Modules: ``schema`` (the sections as dataclasses), ``outputs`` (one dataclass per ``[outputs.NAME]``),
``fields`` (``setting(...)``: how a key is declared, its doc line and its check), ``lines`` (where each key is
in the file's text: ``tomllib`` gives no lines), ``load`` (``load_station``: file -> ``StationConfig`` or one
``ConfigError`` naming the file, line, key and fix), ``write`` (``station_toml``: the ``--print-config`` text).

The command-line flags and the file fill the same dataclasses: ``aaclip-runtime`` builds a ``StationConfig``
from its flags (``runtime.cli.station_from_flags``), a file's keys are overridden by the flags given, and
``--print-config`` writes what would run, so ``flags -> --print-config -> --config`` reproduces a station.

Adding a section (e.g. ``[outputs.opcua]``, ``[outputs.reviews]``):

1. write its dataclass in ``outputs.py`` (or beside your code, imported there), each key a field declared
   with ``setting(default, "one-line doc", check=..., flag="--your-flag")``; supported types: ``str``,
   ``int``, ``float``, ``bool``, ``Path`` (relative ones are taken from the file's folder), ``list[X]`` /
   ``tuple[X, ...]`` of one of those (a TOML array) and ``Optional`` of those; a nested dataclass is a
   nested table (``[outputs.http.auth]``);
2. add one field to ``Outputs`` (``opcua: OpcUaOutput = setting(default_factory=OpcUaOutput)``): the field
   name is the section name;
3. in ``runtime/cli.py``: map your flags to the fields (each setting's ``flag=``, read by ``runtime.cli.station_flags``) and open your sink in ``open_sinks``.

Loading, unknown-key/wrong-type errors with lines, ``--print-config`` and SIGHUP reload (an output whose
section changed is closed and opened again between two frames) then cover it without more code.
A top-level section (not an output) is a field of ``StationConfig`` read in ``load.station_from_dict``.
"""
from __future__ import annotations

from .fields import above, at_least, one_of, setting
from .load import ConfigError, check_station, load_station, station_from_dict
from .outputs import (
    HttpAuthSettings,
    DisplayOutput,
    EventsOutput,
    EvidenceOutput,
    HttpOutput,
    MqttOutput,
    OpcuaOutput,
    Outputs,
    ReviewsOutput,
    VideoOutput,
    WebhookOutput,
)
from .schema import ArtifactSection, CameraSection, RuntimeSection, StationConfig, StationSection
from .write import station_toml

__all__ = [
    "ArtifactSection", "CameraSection", "ConfigError", "DisplayOutput", "EventsOutput", "EvidenceOutput",
    "HttpAuthSettings", "HttpOutput", "MqttOutput", "OpcuaOutput", "Outputs", "ReviewsOutput", "RuntimeSection", "StationConfig", "StationSection", "VideoOutput",
    "WebhookOutput", "above", "at_least", "check_station", "load_station", "one_of", "setting",
    "station_from_dict", "station_toml",
]
