"""``--opcua opcua://HOST:PORT/ROOT``: each camera's state written into an OPC UA server (asyncua, the ``opcua``
extra; imported lazily).

The station is an OPC UA *client* of the plant's server (the PLC's own, or the SCADA's / gateway's): the gate
logic lives in the PLC, which reads its own variables every scan; the station opens no port of its own; the
plant's server keeps its users, certificates and audit log; and a lost server is reconnected to like a lost
MQTT broker. Per camera, under ``Objects/ROOT/CAMERA`` (node ids ``ns=<namespace>;s=ROOT.CAMERA.NAME``):

- ``Alarm`` (Boolean): the camera is in alarm (after the debounce);
- ``Score`` (Double): the last written decision's operator score (``Decision.score``: [0, 1], 0.5 = threshold);
- ``LastAlarmTime`` (DateTime): capture time of the last alarm onset (1601-01-01: none yet);
- ``FrameCounter`` (UInt64): frames inspected on this camera (stalls when the camera stalls);
- ``Heartbeat`` (UInt32): +1 every ``heartbeat_s`` while the station runs and is connected (a PLC watchdog);
- ``ModelId`` (String): ``ARTIFACT@SHA256[:12]`` of the model deciding.

``mode = "decisions"`` writes all of them on every decision; ``"alarms"`` writes when a camera's alarm
starts or ends (Alarm, Score, LastAlarmTime, FrameCounter) and the counter with the heartbeat. Nodes that
are missing are created (AddNodes, read/write variables) on every (re)connection; a server that refuses
that gets an error naming the nodes to create on its side.

The asyncua client runs on its own thread and event loop: ``emit`` only appends to a bounded queue
(``queue``) and never waits for the network. While the server is away, alarm changes wait in the queue and
are written after the reconnect (with ``--reconnect-delay``/``--reconnect-max`` backoff); a write that finds
the queue full, or a plain decision while disconnected, is dropped and counted in ``failures``, and the
camera's newest state is written once the queue is through (a dropped alarm end never leaves Alarm true). Security: ``Basic256Sha256`` with SignAndEncrypt, the station's certificate and
key, optionally a pinned server certificate, and a user whose password comes from a file or
``$AACLIP_OPCUA_PASSWORD``.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlsplit, urlunsplit

from aaclip.contract.errors import UserError

from .capture import Backoff
from .decide import Decision
from .station.outputs import OPCUA_MODES, OPCUA_SECURITY, OpcuaOutput
from .sinks import LoopContext, Sink, slug

log = logging.getLogger(__name__)

INSTALL_HINT = "pip install 'aaclip-edge[opcua]'"
DEFAULT_PORT = 4840
REQUEST_TIMEOUT_S = 4.0
VARIABLES = ("Alarm", "Score", "LastAlarmTime", "FrameCounter", "Heartbeat", "ModelId")
NO_TIME = datetime(1601, 1, 1, tzinfo=timezone.utc)  # OPC UA's null DateTime


def parse_endpoint(url: str) -> tuple[str, str]:
    """``opcua://HOST[:PORT]/ROOT`` or ``opc.tcp://HOST[:PORT]/ROOT`` -> (``opc.tcp://HOST:PORT``, ROOT)."""
    hint = "give opcua://HOST:PORT/ROOT, e.g. opcua://plc-7:4840/aaclip"
    parts = urlsplit(url)
    if parts.scheme not in ("opcua", "opc.tcp") or not parts.hostname:
        raise UserError(f"--opcua {url!r}: {hint}")
    root = parts.path.strip("/") or "aaclip"
    if "/" in root or "." in root or parts.query:
        raise UserError(f"--opcua {url!r}: ROOT is one name without '/', '.' or '?'; {hint}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as e:
        raise UserError(f"--opcua {url!r}: {e}") from None
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    return urlunsplit(("opc.tcp", f"{host}:{port}", "", "", "")), root


@dataclass(frozen=True)
class Update:
    """One write of a camera's nodes (None: that node is not written)."""

    camera: int
    alarm: Optional[bool]
    score: Optional[float]
    last_alarm: Optional[datetime]
    frames: int
    transition: bool  # an alarm onset or end: kept while disconnected


class OpcuaSink(Sink):
    """Writes each camera's state into an OPC UA server; see the module's docstring."""

    name = "opcua"
    order = 20

    def __init__(self, options: OpcuaOutput, password: Optional[str] = None, backoff: Optional[Backoff] = None,
                 drain_s: float = 3.0):
        try:
            import asyncua  # noqa: F401
        except ImportError:
            raise UserError(f"--opcua needs asyncua: {INSTALL_HINT}") from None
        if options.mode not in OPCUA_MODES or options.security not in OPCUA_SECURITY:
            raise UserError(f"--opcua: mode is one of {', '.join(OPCUA_MODES)}, security one of "
                            f"{', '.join(OPCUA_SECURITY)}")
        if options.queue < 1 or not options.heartbeat_s > 0:
            raise UserError("--opcua: the queue must be >= 1 and the heartbeat period > 0")
        self.url, self.root = parse_endpoint(options.endpoint)
        quiet = logging.getLogger("asyncua")
        if quiet.level == logging.NOTSET and logging.getLogger().level > logging.DEBUG:
            quiet.setLevel(logging.ERROR)  # its warnings about a closed connection repeat ours; -v shows them
        self.options = options
        self._password = password
        if password and not options.username:
            raise UserError("--opcua: a password without --opcua-username; give the user too")
        self._security = _load_security(options) if options.security != "none" else None
        if password and self._security is None:
            log.warning("OPC UA %s: user and password with --opcua-security none; unless the server encrypts the "
                        "user token, the password crosses the network readable (use Basic256Sha256)", self.url)
        self.backoff = backoff or Backoff()
        self.drain_s = drain_s
        self.accepted = 0   # updates queued
        self.written = 0    # updates the server acknowledged with Good
        self.failures = 0   # dropped (queue full, decision while disconnected) or refused by the server
        self.heartbeats = 0
        self.connected = threading.Event()
        self._queue: deque[Update] = deque()
        self._lock = threading.Lock()
        self._latest: dict[int, Update] = {}  # each camera's newest state (last alarm time kept)
        self._stale: set[int] = set()          # cameras whose newest state was dropped, not queued
        self._alarm: list[bool] = []
        self._frames: list[int] = []
        self._names: list[str] = []
        self._model_ids: list[str] = []
        self._started = threading.Event()
        self._closing = threading.Event()
        self._aloop: Optional[asyncio.AbstractEventLoop] = None
        self._wake: Optional[asyncio.Event] = None  # set by emit (and close): writes are waiting
        self._halt: Optional[asyncio.Event] = None  # set by close
        self._thread = threading.Thread(target=self._run, name="opcua", daemon=True)
        self._thread.start()

    # ---- the loop's thread -----------------------------------------------------------------------
    def start(self, context: LoopContext) -> None:
        self._names = [slug(n).replace(".", "_") for n in context.source_names]
        if len(set(self._names)) < len(self._names):  # two cameras with one name: keep their nodes apart
            self._names = [f"{n}_{i}" for i, n in enumerate(self._names)]
        self._alarm = [False] * len(self._names)
        self._frames = [0] * len(self._names)
        self._model_ids = [f"{a.artifact_path.name}@{a.sha256[:12]}"  # per camera: a station runs several models
                           for a in (context.manifest_of(i) for i in range(len(self._names)))]
        self._started.set()
        self._poke()

    def emit(self, decision: Decision, view) -> None:
        i = decision.source_index
        self._frames[i] += 1
        transition = decision.alarm != self._alarm[i]
        self._alarm[i] = decision.alarm
        if not transition and self.options.mode == "alarms":
            return
        update = Update(i, decision.alarm, float(decision.score),
                        datetime.fromtimestamp(decision.wall_time, timezone.utc) if decision.onset else None,
                        self._frames[i], transition)
        with self._lock:
            self._latest[i] = _merge(self._latest.get(i), update)
            if (not transition and not self.connected.is_set()) or len(self._queue) >= self.options.queue:
                self._stale.add(i)  # the server misses this camera's newest state: written once the queue is
                self._drop("queue full" if self.connected.is_set() or transition else "server away")
                self._poke()
                return
            self._queue.append(update)
            self._stale.discard(i)  # the queue ends with its newest state
            self.accepted += 1
        self._poke()

    def _drop(self, why: str) -> None:
        self.failures += 1
        if self.failures == 1 or self.failures % 100 == 0:
            log.warning("OPC UA %s: write dropped (%s; %d dropped so far)", self.url, why, self.failures)

    def _poke(self, halt: bool = False) -> None:
        """Wake the worker: new writes (``wake``), or closing (``halt`` too: cuts a reconnect delay short)."""
        aloop, events = self._aloop, [self._wake] + ([self._halt] if halt else [])
        if aloop is not None and None not in events:
            try:
                for event in events:
                    aloop.call_soon_threadsafe(event.set)
            except RuntimeError:  # the worker's loop has ended
                pass

    @property
    def pending(self) -> int:
        with self._lock:
            return len(self._queue)

    def close(self) -> None:
        if self._closing.is_set():
            return
        self._closing.set()
        self._poke(halt=True)
        self._thread.join(self.drain_s + REQUEST_TIMEOUT_S + 2.0)
        left = self.pending
        if left:
            self.failures += left
            log.warning("OPC UA %s: %d write(s) not done at exit; counted as dropped", self.url, left)
            with self._lock:
                self._queue.clear()

    # ---- the worker thread -----------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._wake, self._halt = asyncio.Event(), asyncio.Event()
        self._aloop = asyncio.get_running_loop()
        if self._closing.is_set():
            return
        delays = self.backoff.delays()
        failures = 0
        while not self._closing.is_set():
            client = None
            try:
                client = await self._connect()
                nodes = await self._ensure_nodes(client)
                if self._closing.is_set() and not self._started.is_set():
                    break
                self.connected.set()
                log.info("OPC UA connected to %s; writing %s under %s (%s)", self.url, ", ".join(VARIABLES),
                         self.root, self.options.mode)
                delays, failures = self.backoff.delays(), 0
                await self._serve(client, nodes)
            except Exception as e:  # any failure: the network, the server, its answers; retried
                lost = self.connected.is_set()
                self.connected.clear()
                failures += 1
                if lost:
                    log.warning("OPC UA server %s lost (%s); reconnecting, alarm changes queued (at most %d)",
                                self.url, _reason(e), self.options.queue)
                elif failures == 1 or failures % 20 == 0:
                    log.error("OPC UA server %s: %s (attempt %d; retrying)", self.url, _reason(e), failures)
            finally:
                self.connected.clear()
                if client is not None:
                    await _disconnect(client)
            if not self._closing.is_set():
                await _wait(self._halt, next(delays))  # new decisions do not cut the backoff short

    async def _sleep(self, seconds: float) -> None:
        """Until new writes are waiting, close, or ``seconds``; a wake that came while writing is not lost."""
        if not self._closing.is_set():
            await _wait(self._wake, seconds)
        self._wake.clear()

    async def _connect(self):
        from asyncua import Client, ua
        from asyncua.crypto import security_policies

        client = Client(self.url, timeout=REQUEST_TIMEOUT_S)
        client.name = client.description = "aaclip-runtime"
        if self._security is not None:
            client.application_uri = self._security["application_uri"]
            await client.set_security(security_policies.SecurityPolicyBasic256Sha256,
                                      self._security["certificate"], self._security["private_key"],
                                      server_certificate=self._security["server_certificate"],
                                      mode=ua.MessageSecurityMode.SignAndEncrypt)
        if self.options.username:
            client.set_user(self.options.username)
        if self._password:
            client.set_password(self._password)
        await client.connect()
        return client

    async def _ensure_nodes(self, client) -> list[list[Any]]:
        """The NodeIds of each camera's variables, created where the server lacks them."""
        from asyncua import ua

        while not self._started.is_set():  # the loop has not said which cameras yet
            if self._closing.is_set():
                return []
            await self._sleep(0.5)
        uri = self.options.namespace
        namespaces = await client.get_namespace_array()
        if uri in namespaces:
            ns = namespaces.index(uri)
        else:
            try:
                ns = await client.register_namespace(uri)
            except Exception as e:
                raise RuntimeError(f"the server has no namespace {uri!r} and refused to add it ({_reason(e)}); add "
                                   f"it on the server or give --opcua-namespace with one it has") from None
        root = ua.NodeId(self.root, ns)
        wanted: list[tuple[ua.NodeId, ua.NodeId, str, Optional[tuple]]] = [
            (root, ua.NodeId(ua.ObjectIds.ObjectsFolder), self.root, None)]
        nodes = []
        for name in self._names:
            obj = ua.NodeId(f"{self.root}.{name}", ns)
            wanted.append((obj, root, name, None))
            ids = []
            for var, (variant_type, initial) in zip(VARIABLES, _types()):
                node = ua.NodeId(f"{self.root}.{name}.{var}", ns)
                wanted.append((node, obj, var, (variant_type, initial)))
                ids.append(node)
            nodes.append(ids)
        found = await client.uaclient.read_attributes([w[0] for w in wanted], ua.AttributeIds.NodeClass)
        missing = [w for w, r in zip(wanted, found) if r.StatusCode.value == ua.StatusCodes.BadNodeIdUnknown]
        if missing:
            results = await client.uaclient.add_nodes([_add_item(ns, *w) for w in missing])
            refused = [w[0].to_string() for w, r in zip(missing, results) if not r.StatusCode.is_good()]
            if refused:
                raise RuntimeError(f"the server lacks {', '.join(refused[:4])}{' ...' if len(refused) > 4 else ''} "
                                   f"and refused to create them ({results[0].StatusCode.name}); create them on the "
                                   f"server (docs/security.md#opc-ua), writable by the station's user")
            log.info("OPC UA %s: created %d node(s) under %s", self.url, len(missing), self.root)
        return nodes

    async def _serve(self, client, nodes: list[list[Any]]) -> None:
        """Writes the queue (then the newest state of cameras whose newest was dropped) and the heartbeat until
        close; raises when the connection fails (the update in hand goes back to the head of the queue)."""
        await self._write_all(client, nodes)
        await self._write(client, nodes, None)  # ModelId and the first heartbeat
        next_beat = time.monotonic() + self.options.heartbeat_s
        while not self._closing.is_set():
            await self._write_all(client, nodes)
            if time.monotonic() >= next_beat:
                self.heartbeats += 1
                await self._write(client, nodes, None)
                next_beat = time.monotonic() + self.options.heartbeat_s
            await self._sleep(max(0.0, next_beat - time.monotonic()))
        # closing: one last drain and the final frame counts, bounded by drain_s
        await asyncio.wait_for(self._write_all(client, nodes), self.drain_s)
        await asyncio.wait_for(self._write(client, nodes, None), self.drain_s)

    async def _write_all(self, client, nodes) -> None:
        """The queue in order; then, once it is empty, the newest state of each camera whose newest update
        was dropped (so a dropped alarm end never leaves Alarm true, and nothing older follows something newer)."""
        while True:
            with self._lock:
                if self._queue:
                    update, requeue = self._queue.popleft(), True
                elif self._stale:
                    update, requeue = self._latest[self._stale.pop()], False
                else:
                    return
            try:
                await self._write(client, nodes, update)
            except BaseException:
                with self._lock:
                    if requeue:
                        self._queue.appendleft(update)
                    else:
                        self._stale.add(update.camera)
                raise

    async def _write(self, client, nodes, update: Optional[Update]) -> None:
        """One Write request: ``update``'s nodes, or (None) every camera's Heartbeat, ModelId and FrameCounter."""
        from asyncua import ua

        ids, values = [], []
        if update is None:
            for i, cam in enumerate(nodes):
                for k, value in ((3, self._frames[i]), (4, self.heartbeats & 0xFFFFFFFF), (5, self._model_ids[i])):
                    ids.append(cam[k])
                    values.append(value)
        else:
            cam = nodes[update.camera]
            for k, value in enumerate((update.alarm, update.score, update.last_alarm, update.frames)):
                if value is not None:
                    ids.append(cam[k])
                    values.append(value)
        types = _types()
        k_of = {node: k for cam in nodes for k, node in enumerate(cam)}
        data = [ua.DataValue(ua.Variant(v, types[k_of[n]][0])) for n, v in zip(ids, values)]
        statuses = await client.uaclient.write_attributes(ids, data, ua.AttributeIds.Value)
        bad = [(n, s) for n, s in zip(ids, statuses) if not s.is_good()]
        if update is not None:
            if bad:
                self.failures += 1
            else:
                self.written += 1
        if bad and (self.failures <= 1 or self.failures % 100 == 0):
            node, status = bad[0]
            log.error("OPC UA %s refused writing %s: %s (%d refused so far)", self.url, node.to_string(), status.name,
                      self.failures)


def _merge(old: Optional[Update], new: Update) -> Update:
    """A camera's latest state: ``new``, keeping ``old``'s last alarm time when ``new`` has none."""
    if old is None or new.last_alarm is not None:
        return new
    return Update(new.camera, new.alarm, new.score, old.last_alarm, new.frames, new.transition)


def _types() -> list[tuple[Any, Any]]:
    from asyncua import ua

    V = ua.VariantType
    return [(V.Boolean, False), (V.Double, 0.0), (V.DateTime, NO_TIME), (V.UInt64, 0), (V.UInt32, 0), (V.String, "")]


def _add_item(ns: int, node, parent, name: str, variable: Optional[tuple]):
    """The AddNodes item of an object (``variable`` None) or a read/write scalar variable."""
    from asyncua import ua

    item = ua.AddNodesItem()
    item.RequestedNewNodeId = ua.ExpandedNodeId(node.Identifier, node.NamespaceIndex)
    item.BrowseName = ua.QualifiedName(name, ns)
    item.ParentNodeId = ua.ExpandedNodeId(parent.Identifier, parent.NamespaceIndex)
    if variable is None:
        item.NodeClass = ua.NodeClass.Object
        item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.Organizes)
        item.TypeDefinition = ua.ExpandedNodeId(ua.ObjectIds.BaseObjectType, 0)
        attrs = ua.ObjectAttributes()
        attrs.EventNotifier = 0
    else:
        variant_type, initial = variable
        item.NodeClass = ua.NodeClass.Variable
        item.ReferenceTypeId = ua.NodeId(ua.ObjectIds.HasComponent)
        item.TypeDefinition = ua.ExpandedNodeId(ua.ObjectIds.BaseDataVariableType, 0)
        attrs = ua.VariableAttributes()
        attrs.Value = ua.Variant(initial, variant_type)
        attrs.DataType = ua.NodeId(variant_type.value, 0)
        attrs.ValueRank = ua.ValueRank.Scalar
        rw = ua.AccessLevel.CurrentRead.mask | ua.AccessLevel.CurrentWrite.mask
        attrs.AccessLevel = attrs.UserAccessLevel = rw
        attrs.Historizing = False
    attrs.DisplayName = ua.LocalizedText(name)
    attrs.Description = ua.LocalizedText(name)
    attrs.WriteMask = attrs.UserWriteMask = 0
    item.NodeAttributes = attrs
    return item


def _load_security(options: OpcuaOutput) -> dict[str, Any]:
    """The certificate, key, pinned server certificate and application URI for Basic256Sha256 (read now, so a
    missing file fails before the first frame)."""
    from cryptography import x509

    if options.certificate is None or options.private_key is None:
        raise UserError("--opcua-security Basic256Sha256 needs --opcua-certificate and --opcua-private-key (the "
                        "station's application instance certificate, trusted by the server)")
    files = {"certificate": options.certificate, "private_key": options.private_key,
             "server_certificate": options.server_certificate}
    data: dict[str, Optional[bytes]] = {}
    for key, path in files.items():
        if path is None:
            data[key] = None
            continue
        try:
            data[key] = Path(path).read_bytes()
        except OSError as e:
            raise UserError(f"cannot read the OPC UA {key.replace('_', ' ')} {path}: {e.strerror or e}") from None
    raw = data["certificate"]
    try:
        cert = x509.load_pem_x509_certificate(raw) if _is_pem(raw) else \
            x509.load_der_x509_certificate(raw)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        uris = san.value.get_values_for_type(x509.UniformResourceIdentifier)
    except (ValueError, x509.ExtensionNotFound) as e:
        raise UserError(f"the OPC UA certificate {options.certificate} is not an application instance certificate "
                        f"with a URI in its subject alternative names ({e})") from None
    if not uris:
        raise UserError(f"the OPC UA certificate {options.certificate} has no application URI (a URI subject "
                        f"alternative name)")
    from cryptography.hazmat.primitives import serialization

    key = data["private_key"]
    try:
        (serialization.load_pem_private_key if _is_pem(key) else serialization.load_der_private_key)(key, None)
    except (ValueError, TypeError) as e:
        raise UserError(f"the OPC UA private key {options.private_key} cannot be read ({e}); give the certificate's "
                        f"unencrypted key, PEM or DER") from None
    return {"application_uri": uris[0], **{k: _properties(path, data[k]) for k, path in files.items()}}


def _is_pem(data: bytes) -> bool:
    return data.lstrip().startswith(b"-----")


def _properties(path: Optional[Path], data: Optional[bytes]):
    """asyncua's handle of a certificate or key file, its format told by the content (asyncua would guess
    from the extension, and a PEM key is often named .key)."""
    if path is None or data is None:
        return None
    from asyncua.crypto import uacrypto

    return uacrypto.CertProperties(str(path), extension="pem" if _is_pem(data) else "der")


async def _wait(event: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        pass


async def _disconnect(client) -> None:
    try:
        await asyncio.wait_for(client.disconnect(), REQUEST_TIMEOUT_S)
    except Exception:  # a dead connection: its socket is closed either way
        try:
            client.disconnect_socket()
        except Exception:
            pass


def _reason(e: BaseException) -> str:
    if isinstance(e, asyncio.TimeoutError):
        return "no answer"
    return str(e) or type(e).__name__
