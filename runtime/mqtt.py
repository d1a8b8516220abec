"""``--mqtt mqtt://[USER@]HOST[:PORT]/PREFIX``: alarms published to an MQTT broker (paho-mqtt, the
``mqtt`` extra; imported lazily).

One message per alarm onset on ``PREFIX/CAMERA/alarm``, QoS 1, its payload the event line itself
(``aaclip.runtime.decide.encode_event``); with ``?decisions=1`` also one message per decision on
``PREFIX/CAMERA/decision`` (QoS 0). paho's network thread connects, reconnects with backoff (the
``--reconnect-delay``/``--reconnect-max`` doubling) and keeps unacknowledged QoS 1 messages in a bounded
queue (``?queue=N``, default 1000) while the broker is away; they go out after the reconnect. A message
that finds the queue full (or a QoS 0 message while disconnected) is dropped and counted in
``failures``. ``publish`` only queues: the camera loop never waits for the network. ``mqtts://`` uses
TLS with the system's CAs. On close, unacknowledged messages get ``drain_s`` seconds, then count as dropped.
The password comes from ``--mqtt-password-file`` or ``$AACLIP_MQTT_PASSWORD`` (``credentials``), never the URL.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Optional
from urllib.parse import parse_qs, unquote, urlsplit

from aaclip.contract.errors import UserError

from .capture import Backoff
from .decide import Decision, encode_event
from .sinks import LoopContext, Sink, slug

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'aaclip-edge[mqtt]'"
DEFAULT_QUEUE = 1000
DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}
ALARM_QOS = 1
DECISION_QOS = 0


@dataclass(frozen=True)
class MqttTarget:
    """Where ``--mqtt`` publishes (parsed from its URL)."""

    host: str
    port: int
    prefix: str
    tls: bool = False
    username: Optional[str] = None
    password: Optional[str] = None
    queue: int = DEFAULT_QUEUE
    decisions: bool = False
    client_id: str = ""

    @property
    def display(self) -> str:
        """The URL without credentials (for logs)."""
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}/{self.prefix}"


def parse_mqtt_url(url: str) -> MqttTarget:
    """``mqtt://[user:pass@]host[:port]/prefix[?queue=N&decisions=1&client_id=ID]`` -> ``MqttTarget``."""
    hint = "give mqtt://HOST[:PORT]/TOPIC-PREFIX, e.g. mqtt://broker:1883/factory/line1"
    parts = urlsplit(url)
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise UserError(f"--mqtt {url!r}: {hint}")
    prefix = parts.path.strip("/")
    if not prefix or "+" in prefix or "#" in url or "//" in prefix:  # urlsplit reads '#' as a fragment
        raise UserError(f"--mqtt {url!r}: the topic prefix must be non-empty, without '+', '#' or empty levels; {hint}")
    query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
    unknown = set(query) - {"queue", "decisions", "client_id"}
    if unknown:
        raise UserError(f"--mqtt: unknown option(s) {', '.join(sorted(unknown))}; known: queue, decisions, client_id")
    try:
        port = parts.port or DEFAULT_PORTS[parts.scheme]
        queue = int(query.get("queue", DEFAULT_QUEUE))
    except ValueError as e:
        raise UserError(f"--mqtt {url!r}: {e}") from None
    if queue < 1:
        raise UserError(f"--mqtt: queue must be >= 1, got {queue}")
    return MqttTarget(host=parts.hostname, port=port, prefix=prefix, tls=parts.scheme == "mqtts",
                      username=unquote(parts.username) if parts.username else None,
                      password=unquote(parts.password) if parts.password else None, queue=queue,
                      decisions=query.get("decisions", "0") in ("1", "true", "yes"),
                      client_id=query.get("client_id", ""))


class MqttSink(Sink):
    """Publishes alarms (and optionally every decision) to an MQTT broker; see the module's docstring."""

    name = "mqtt"
    order = 20  # after the evidence writer: the event carries the evidence path

    def __init__(self, url: str, backoff: Optional[Backoff] = None, drain_s: float = 3.0,
                 password: Optional[str] = None):
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise UserError(f"--mqtt needs paho-mqtt: {INSTALL_HINT}") from None
        self._mqtt = mqtt
        self.target = parse_mqtt_url(url)
        self.drain_s = drain_s
        self.accepted = 0   # messages handed to paho (queued or sent)
        self.delivered = 0  # acknowledged by the broker (QoS 1) or written (QoS 0)
        self.failures = 0   # dropped: queue full, QoS 0 while disconnected, unacknowledged at close
        self.connected = threading.Event()
        self._closing = False
        self._topics: list[str] = []
        t = self.target
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=t.client_id, clean_session=True)
        client.max_queued_messages_set(t.queue)
        backoff = backoff or Backoff()
        client.reconnect_delay_set(backoff.initial, max(backoff.maximum, backoff.initial))
        if t.username:
            client.username_pw_set(t.username, password if password is not None else t.password)
        if t.tls:
            client.tls_set()
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self.client = client
        client.connect_async(t.host, t.port, keepalive=30)
        client.loop_start()  # paho's network thread: connects, retries with backoff, sends the queue

    # ---- paho's network thread -------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason, properties) -> None:
        if reason.is_failure:
            log.error("MQTT broker %s refused the connection: %s", self.target.display, reason)
            return
        self.connected.set()
        log.info("MQTT connected to %s", self.target.display)

    def _on_disconnect(self, client, userdata, flags, reason, properties) -> None:
        if self.connected.is_set() and not self._closing:
            log.warning("MQTT broker %s lost (%s); reconnecting, alarms queued (at most %d)", self.target.display,
                        reason, self.target.queue)
        self.connected.clear()

    def _on_publish(self, client, userdata, mid, reason, properties) -> None:
        self.delivered += 1  # only this thread writes it

    # ---- the loop's thread -----------------------------------------------------------------------
    def start(self, context: LoopContext) -> None:
        self._topics = [f"{self.target.prefix}/{slug(n)}" for n in context.source_names]

    def emit(self, decision: Decision, view) -> None:
        if not (decision.onset or self.target.decisions):
            return
        topic, payload = self._topics[decision.source_index], encode_event(decision.event())
        if decision.onset:
            self._publish(f"{topic}/alarm", payload, ALARM_QOS)
        if self.target.decisions:
            self._publish(f"{topic}/decision", payload, DECISION_QOS)

    def _publish(self, topic: str, payload: str, qos: int) -> None:
        rc = self.client.publish(topic, payload, qos).rc
        m = self._mqtt
        if rc == m.MQTT_ERR_SUCCESS or (rc == m.MQTT_ERR_NO_CONN and qos > 0):  # NO_CONN + QoS 1: queued
            self.accepted += 1
            return
        self.failures += 1
        if self.failures == 1 or self.failures % 100 == 0:
            log.warning("MQTT message to %s dropped (%s; %d dropped so far)", topic,
                        "queue full" if rc == m.MQTT_ERR_QUEUE_SIZE else m.error_string(rc), self.failures)

    @property
    def pending(self) -> int:
        """Messages accepted but not yet acknowledged."""
        return self.accepted - self.delivered

    def close(self) -> None:
        if self.client is None:
            return
        deadline = time.monotonic() + self.drain_s
        while self.pending > 0 and time.monotonic() < deadline:
            time.sleep(0.02)
        if self.pending > 0:
            self.failures += self.pending
            log.warning("MQTT: %d message(s) not acknowledged by %s at exit; counted as dropped", self.pending,
                        self.target.display)
            self.accepted = self.delivered
        self._closing = True
        self.client.disconnect()
        self.client.loop_stop()
        self.client = None
