"""The ``[outputs.*]`` sections: one dataclass per output, filled by the command-line flags and by the station
file alike (so ``flags -> --print-config -> --config`` gives the same station).

An output is on when its main key is set (``path``, ``dir``, ``listen``, ``url``; ``show`` for the window).
The defaults bound the disk: events rotate by size with a fixed number of files kept, evidence is kept by
count, bytes and age (docs/deploy-station.md gives the budget per camera and day).

To add an output (e.g. ``[outputs.opcua]``): write its dataclass here with ``setting(...)`` fields, add one
field for it to ``Outputs`` (its name is the TOML section name), fill it from your flags in ``runtime/cli.py``
(each setting's ``flag=``, read by ``runtime.cli.station_flags``) and open its sink in ``runtime.cli.open_sinks``. The loader, the errors with lines, the
writer of ``--print-config`` and SIGHUP reload then handle it with no further code.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from aaclip.contract.reviews import DEFAULT_KEEP, DEFAULT_MAX_BYTES, DEFAULT_MAX_FRAMES

from .fields import above, at_least, one_of, setting

EVENT_MODES = ("decisions", "alarms")
EVIDENCE_FORMATS = ("jpg", "png")
OPCUA_MODES = ("decisions", "alarms")
OPCUA_SECURITY = ("none", "Basic256Sha256")
MiB = 1024 * 1024


@dataclass
class EventsOutput:
    """``[outputs.events]``: JSON lines, one per decision (``decisions``) or per alarm frame plus a summary
    line per camera every ``summary_every`` seconds (``alarms``); rotated at ``max_bytes`` into
    ``events.jsonl.1`` .. ``.{keep}`` (the oldest deleted)."""

    path: Optional[Path] = setting(None, "JSON-lines event log (off when unset)", flag="--events")
    mode: str = setting("decisions", "decisions: every frame; alarms: alarm frames + a summary per camera",
                        check=one_of(*EVENT_MODES), flag="--events-mode")
    max_bytes: int = setting(64 * MiB, "rotate the file when it would pass this size", check=at_least(4096),
                             flag="--events-max-bytes")
    keep: int = setting(4, "rotated files kept (events.jsonl.1 .. .keep); the oldest is deleted",
                        check=at_least(0), flag="--events-keep")
    summary_every: float = setting(60.0, "alarms mode: seconds between summary lines of each camera",
                                   check=above(0.0), flag="--events-summary-every")


@dataclass
class EvidenceOutput:
    """``[outputs.evidence]``: the frame and its heat-map overlay of every alarm frame, one image each; the
    oldest are deleted past ``max_files``, ``max_bytes`` or ``max_age_days``."""

    dir: Optional[Path] = setting(None, "folder of alarm images (off when unset)", flag="--evidence")
    format: str = setting("jpg", "jpg or png", check=one_of(*EVIDENCE_FORMATS), flag="--evidence-format")
    max_files: int = setting(10_000, "keep at most this many images", check=at_least(1), flag="--evidence-max")
    max_bytes: int = setting(1024 * MiB, "keep at most this many bytes of images", check=at_least(MiB),
                             flag="--evidence-max-bytes")
    max_age_days: float = setting(90.0, "delete images older than this", check=above(0.0),
                                  flag="--evidence-max-age-days")


@dataclass
class VideoOutput:
    """``[outputs.video]``: an annotated video per camera (for a run over recordings), finished at ``max_bytes``."""

    path: Optional[Path] = setting(None, "annotated video, .avi = MJPG (off when unset)", flag="--video")
    fps: Optional[float] = setting(None, "frame rate (default: the source's, else 15)", check=above(0.0),
                                   flag="--video-fps")
    max_bytes: int = setting(4096 * MiB, "a camera's video is finished at this size (later frames not written)",
                             check=at_least(MiB), flag="--video-max-bytes")


@dataclass
class DisplayOutput:
    """``[outputs.display]``: a window per camera (needs a display)."""

    show: bool = setting(False, "show annotated frames in a window; q quits", flag="--show")


@dataclass
class HttpAuthSettings:
    """``[outputs.http.auth]``: who may open the line view, its streams, thumbnails and /metrics (nobody needs
    to when all three are empty; then --http stays on loopback unless allow_anonymous)."""

    token_file: Optional[Path] = setting(None, "file holding the bearer token that opens the view and /metrics "
                                               "[else $AACLIP_HTTP_TOKEN]", flag="--http-token-file")
    users: list[str] = setting(default_factory=list, doc="\"NAME:HASH\" entries, the hash from aaclip-runtime "
                                                        "--hash-password (never a password)")
    users_file: Optional[Path] = setting(None, "file of NAME:HASH lines, more users", flag="--http-users")


@dataclass
class HttpOutput:
    """``[outputs.http]``: the live line view, /metrics and /healthz, and who may see them
    (docs/security.md)."""

    listen: Optional[str] = setting(None, "[HOST]:PORT; \":8080\" or \"127.0.0.1:8080\" = this machine only, "
                                          "\"0.0.0.0:8080\" = every interface (off when unset)", flag="--http")
    view_fps: float = setting(5.0, "most frames per second rendered for the view", check=above(0.0),
                              flag="--view-fps")
    health_timeout: float = setting(10.0, "/healthz is unhealthy when a camera gave no frame for this long (s)",
                                    check=above(0.0), flag="--health-timeout")
    auth: HttpAuthSettings = setting(default_factory=HttpAuthSettings)
    tls_cert: Optional[Path] = setting(None, "PEM certificate (chain): serve HTTPS", flag="--http-tls-cert")
    tls_key: Optional[Path] = setting(None, "its PEM private key", flag="--http-tls-key")
    healthz_open: bool = setting(True, "/healthz answers without credentials (liveness probes)",
                                 flag="--healthz-open/--healthz-auth")
    max_viewers: int = setting(10, "live streams at once, all cameras; more get 503", check=at_least(0),
                               flag="--max-viewers")
    max_connections: int = setting(128, "open connections at once; more get 503 and are closed",
                                   check=at_least(1))
    timeout: float = setting(10.0, "seconds a client may take to send its request or accept data",
                             check=above(0.0), flag="--http-timeout")
    allow_anonymous: bool = setting(False, "listen beyond this machine without credentials (warns)",
                                    flag="--http-allow-anonymous")


@dataclass
class MqttOutput:
    """``[outputs.mqtt]``: alarms (QoS 1) to PREFIX/CAMERA/alarm."""

    url: Optional[str] = setting(None, "mqtt://[USER@]HOST[:PORT]/PREFIX[?decisions=1&queue=N], no password in it "
                                       "(off when unset)", flag="--mqtt")
    password_file: Optional[Path] = setting(None, "file holding the broker password [else $AACLIP_MQTT_PASSWORD]",
                                            flag="--mqtt-password-file")


@dataclass
class WebhookOutput:
    """``[outputs.webhook]``: each alarm event POSTed as JSON, signed when a secret is given."""

    url: Optional[str] = setting(None, "http(s) URL receiving alarm events (off when unset)", flag="--webhook")
    secret_file: Optional[Path] = setting(None, "file holding the shared secret that signs each POST "
                                                "(X-Aaclip-Signature) [else $AACLIP_WEBHOOK_SECRET]",
                                          flag="--webhook-secret-file")


@dataclass
class OpcuaOutput:
    """``[outputs.opcua]``: each camera's Alarm, Score, LastAlarmTime, FrameCounter, Heartbeat and ModelId
    written into the PLC's / SCADA's OPC UA server (the station is its client; docs/security.md#opc-ua)."""

    endpoint: Optional[str] = setting(None, "opcua://HOST:PORT/ROOT or opc.tcp://HOST:PORT/ROOT (off when unset)",
                                      flag="--opcua")
    mode: str = setting("alarms", "alarms: write when an alarm starts or ends (+ heartbeat); decisions: every "
                                  "decision", check=one_of(*OPCUA_MODES), flag="--opcua-mode")
    security: str = setting("none", "none or Basic256Sha256 (SignAndEncrypt, with certificate and private_key)",
                            check=one_of(*OPCUA_SECURITY), flag="--opcua-security")
    certificate: Optional[Path] = setting(None, "the station's application instance certificate (DER or PEM)",
                                          flag="--opcua-certificate")
    private_key: Optional[Path] = setting(None, "its private key (PEM or DER, unencrypted)",
                                          flag="--opcua-private-key")
    server_certificate: Optional[Path] = setting(None, "trust only this server certificate [default: the one its "
                                                       "endpoints present]", flag="--opcua-server-certificate")
    username: Optional[str] = setting(None, "OPC UA user of the station", flag="--opcua-username")
    password_file: Optional[Path] = setting(None, "file holding its password [else $AACLIP_OPCUA_PASSWORD]",
                                            flag="--opcua-password-file")
    namespace: str = setting("urn:aaclip-edge", "namespace URI of the station's nodes", flag="--opcua-namespace")
    queue: int = setting(1000, "alarm changes kept while the server is away", check=at_least(1))
    heartbeat_s: float = setting(1.0, "seconds between Heartbeat writes", check=above(0.0))


@dataclass
class ReviewsOutput:
    """``[outputs.reviews]``: operators' verdicts from the line view (needs ``[outputs.http]``), one JSON line
    each (``aaclip.runtime.reviews``); rotated at ``max_bytes`` into ``reviews.jsonl.1`` .. ``.{keep}`` (the
    oldest deleted) like the events; the reviewed frames kept in ``<stem>-frames/``, at most ``max_frames``."""

    path: Optional[Path] = setting(None, "reviews file: the line view shows review buttons (off when unset)",
                                   flag="--reviews")
    max_bytes: int = setting(DEFAULT_MAX_BYTES, "rotate the file when it would pass this size (4 MiB: ~10,000 reviews)",
                             check=at_least(4096))
    keep: int = setting(DEFAULT_KEEP, "rotated files kept (reviews.jsonl.1 .. .keep); the oldest is deleted", check=at_least(0))
    max_frames: int = setting(DEFAULT_MAX_FRAMES, "reviewed frames kept beside the file (the oldest deleted)", check=at_least(1))


@dataclass
class Outputs:
    """Every ``[outputs.NAME]`` section: the field name is NAME, its type the section's dataclass."""

    events: EventsOutput = setting(default_factory=EventsOutput)
    evidence: EvidenceOutput = setting(default_factory=EvidenceOutput)
    video: VideoOutput = setting(default_factory=VideoOutput)
    display: DisplayOutput = setting(default_factory=DisplayOutput)
    http: HttpOutput = setting(default_factory=HttpOutput)
    mqtt: MqttOutput = setting(default_factory=MqttOutput)
    webhook: WebhookOutput = setting(default_factory=WebhookOutput)
    opcua: OpcuaOutput = setting(default_factory=OpcuaOutput)
    reviews: ReviewsOutput = setting(default_factory=ReviewsOutput)
