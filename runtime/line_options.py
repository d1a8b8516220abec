"""The settings of each line output, one dataclass per output, filled by ``aaclip-runtime``'s flags (and by
the station config's ``[outputs.http]``, ``[outputs.mqtt]``, ``[outputs.webhook]``, ``[outputs.opcua]``
sections, with the same names in snake_case). Secrets are never values here, only the files that hold them
(or the environment variables named in ``credentials``). Standard library only: the modules that need
paho-mqtt, asyncua or http.server load when an output is opened, not when its options are parsed.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

DEFAULT_LISTEN = "127.0.0.1:8080"
DEFAULT_MAX_VIEWERS = 10
DEFAULT_MAX_CONNECTIONS = 128
DEFAULT_HTTP_TIMEOUT_S = 10.0
OPCUA_MODES = ("decisions", "alarms")
OPCUA_SECURITY = ("none", "Basic256Sha256")


@dataclass(frozen=True)
class HttpOptions:
    """``--http`` and its access control: the live line view, its streams and thumbnails, ``/metrics``,
    ``/healthz``."""

    listen: str = DEFAULT_LISTEN          # [HOST]:PORT; a bare :PORT is loopback, 0.0.0.0:PORT every interface
    view_fps: float = 5.0
    health_timeout: float = 10.0
    token_file: Optional[Path] = None     # bearer token (else $AACLIP_HTTP_TOKEN)
    users_file: Optional[Path] = None     # NAME:HASH lines (hashes from aaclip-runtime --hash-password)
    users: tuple[tuple[str, str], ...] = ()  # (name, hash) pairs, from the station config
    tls_cert: Optional[Path] = None       # PEM certificate (chain): serve HTTPS
    tls_key: Optional[Path] = None        # its PEM private key
    healthz_open: bool = True             # /healthz answers without credentials (liveness probes)
    max_viewers: int = DEFAULT_MAX_VIEWERS  # concurrent MJPEG streams; more get 503
    max_connections: int = DEFAULT_MAX_CONNECTIONS  # concurrent connections; more are answered 503 and closed
    timeout: float = DEFAULT_HTTP_TIMEOUT_S  # seconds a client may take to send a request or accept data
    allow_anonymous: bool = False         # listen beyond loopback without credentials (warns)


@dataclass(frozen=True)
class MqttOptions:
    """``--mqtt URL``: ``mqtt://[USER@]HOST[:PORT]/PREFIX[?decisions=1&queue=N]``; the password from
    ``password_file`` or ``$AACLIP_MQTT_PASSWORD``."""

    url: str
    password_file: Optional[Path] = None


@dataclass(frozen=True)
class WebhookOptions:
    """``--webhook URL``: alarm events POSTed as JSON, signed with the secret of ``secret_file`` (or
    ``$AACLIP_WEBHOOK_SECRET``) when one is given."""

    url: str
    secret_file: Optional[Path] = None


@dataclass(frozen=True)
class OpcuaOptions:
    """``--opcua opcua://HOST:PORT/ROOT`` (``opc.tcp://`` alike): the station writes each camera's state into an
    OPC UA server (the PLC's or the SCADA's), on nodes ``ns=<namespace>;s=ROOT.<camera>.<Variable>``."""

    endpoint: str
    mode: str = "alarms"                  # write on alarm changes only, or on every decision
    security: str = "none"                # or Basic256Sha256 (SignAndEncrypt)
    certificate: Optional[Path] = None    # the station's application instance certificate (DER or PEM)
    private_key: Optional[Path] = None    # its private key (PEM)
    server_certificate: Optional[Path] = None  # pin the server's certificate (else taken from its endpoints)
    username: Optional[str] = None
    password_file: Optional[Path] = None  # else $AACLIP_OPCUA_PASSWORD
    namespace: str = "urn:aaclip-edge"    # namespace URI of the station's nodes
    queue: int = 1000                     # writes waiting while the server is away
    heartbeat_s: float = 1.0              # Heartbeat node period
