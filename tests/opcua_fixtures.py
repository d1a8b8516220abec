"""A real OPC UA server (asyncua's) on loopback for the OPC UA output's tests, restartable on its port, with
optional Basic256Sha256 + users; a real OPC UA client that records what it reads; test certificates."""
from __future__ import annotations

import asyncio
import importlib.util
import threading
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Callable, Optional

import pytest
from line_fixtures import free_port

needs_asyncua = pytest.mark.skipif(importlib.util.find_spec("asyncua") is None,
                                   reason="asyncua not installed (pip install '.[opcua]')")
NAMESPACE = "urn:aaclip-edge"


class _LoopThread:
    """An asyncio loop on its own thread; ``call(coro)`` runs a coroutine there and waits for its result."""

    def __init__(self, name: str):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self.thread.start()

    def call(self, coro, timeout: float = 20.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def make_certificate(directory: Path, name: str, uri: str, server: bool) -> tuple[Path, Path]:
    """A self-signed OPC UA application instance certificate (DER) and its key (PEM) for ``uri``."""
    from asyncua.crypto import cert_gen
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = cert_gen.generate_private_key()
    cert = cert_gen.generate_self_signed_app_certificate(
        key, name, {}, [x509.UniformResourceIdentifier(uri), x509.DNSName("localhost")],
        [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH])
    from cryptography.hazmat.primitives.serialization import Encoding

    cert_path, key_path = directory / f"{name}.der", directory / f"{name}.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.DER))
    key_path.write_bytes(cert_gen.dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    return cert_path, key_path


class OpcServer:
    """asyncua's server on 127.0.0.1:``port``; ``stop``/``start`` restart it with a fresh address space (as a
    PLC's power cycle loses nodes a client created). ``writes`` records every value a client wrote, in order,
    as (node id string, value). With ``secure``: only Basic256Sha256 SignAndEncrypt and the user ``users``."""

    def __init__(self, directory: Path, secure: bool = False, users: Optional[dict[str, str]] = None,
                 trusted: Optional[Path] = None):
        self.port = free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}"
        self.directory, self.secure, self.users, self.trusted = directory, secure, users or {}, trusted
        directory.mkdir(parents=True, exist_ok=True)
        self.writes: list[tuple[str, Any]] = []
        self.logins: list[tuple[Optional[str], bool]] = []
        self.cert = self.key = None
        if secure:
            self.cert, self.key = make_certificate(directory, "plc-server", "urn:test:plc", server=True)
        self._loop: Optional[_LoopThread] = None
        self.server = None

    def start(self) -> None:
        self._loop = _LoopThread("opcua-server")
        self._loop.call(self._start())

    async def _start(self) -> None:
        from asyncua import Server, ua
        from asyncua.crypto.permission_rules import User, UserRole
        from asyncua.server.internal_server import InternalServer
        from asyncua.server.user_managers import UserManager

        outer = self

        class Users(UserManager):
            def get_user(self, iserver, username=None, password=None, certificate=None):
                ok = outer.users.get(username) == password if username else not outer.users
                outer.logins.append((username, ok))
                return User(role=UserRole.Admin, name=username) if ok else None

        server = Server(user_manager=Users())
        await server.init()
        server.set_endpoint(self.url)
        server.set_server_name("test PLC")
        if self.secure:
            server.set_security_policy([ua.SecurityPolicyType.Basic256Sha256_SignAndEncrypt])
            await server.load_certificate(str(self.cert))
            await server.load_private_key(str(self.key))
            await server.set_application_uri("urn:test:plc")
        server.subscribe_server_callback(_post_write(), self._record)
        await server.start()
        self.server = server

    def add_camera_nodes(self, root: str, camera: str) -> None:
        """The station's nodes made on the server's side, as a PLC programmer prepares them."""
        from asyncua import ua

        async def go():
            ns = await self.server.register_namespace(NAMESPACE)
            top = await self.server.nodes.objects.add_object(ua.NodeId(root, ns), ua.QualifiedName(root, ns))
            cam = await top.add_object(ua.NodeId(f"{root}.{camera}", ns), ua.QualifiedName(camera, ns))
            V = ua.VariantType
            for name, value, vtype in (("Alarm", False, V.Boolean), ("Score", 0.0, V.Double),
                                       ("LastAlarmTime", ua.get_win_epoch(), V.DateTime), ("FrameCounter", 0, V.UInt64),
                                       ("Heartbeat", 0, V.UInt32), ("ModelId", "", V.String)):
                var = await cam.add_variable(ua.NodeId(f"{root}.{camera}.{name}", ns), ua.QualifiedName(name, ns),
                                             ua.Variant(value, vtype))
                await var.set_writable()

        self._loop.call(go())

    def _record(self, event, dispatcher) -> None:
        for item in event.request_params.NodesToWrite:
            if item.NodeId.NamespaceIndex != 0:  # not the server's own status updates
                self.writes.append((item.NodeId.to_string(), item.Value.Value.Value))

    def stop(self) -> None:
        if self._loop is None:
            return
        try:
            self._loop.call(self.server.stop())
        finally:
            self._loop.stop()
            self._loop, self.server = None, None

    def written(self, suffix: str) -> list[Any]:
        """The values clients wrote to the node whose id ends with ``suffix``, in order."""
        return [v for n, v in self.writes if n.endswith(suffix)]


def _post_write():
    from asyncua.common.callback import CallbackType

    return CallbackType.PostWrite


class Reader:
    """A separate OPC UA client (like the PLC's HMI or a SCADA) that subscribes to nodes and records each
    value change it is told about, and reads values on demand."""

    def __init__(self, url: str):
        self.url = url
        self.changes: dict[str, list[Any]] = {}
        self._loop = _LoopThread("opcua-reader")
        self.client = None
        self._lock = threading.Lock()

    def connect(self) -> None:
        from asyncua import Client

        self.client = Client(self.url, timeout=4)
        self._loop.call(self.client.connect())

    def subscribe(self, node_ids: list[str]) -> None:
        reader = self

        class Handler:
            def datachange_notification(self, node, value, data):
                with reader._lock:
                    reader.changes.setdefault(node.nodeid.to_string(), []).append(value)

        async def go():
            sub = await self.client.create_subscription(10, Handler())
            await sub.subscribe_data_change([self.client.get_node(n) for n in node_ids], queuesize=1000)

        self._loop.call(go())

    def read(self, node_id: str) -> Any:
        return self._loop.call(self.client.get_node(node_id).read_value())

    def seen(self, node_id: str) -> list[Any]:
        with self._lock:
            return list(self.changes.get(node_id, []))

    def close(self) -> None:
        try:
            if self.client is not None:
                self._loop.call(self.client.disconnect())
        except Exception:
            pass
        self._loop.stop()


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    from line_fixtures import wait_until

    wait_until(condition, timeout, what)


def run_in_thread(function: Callable[[], Any]) -> Future:
    future: Future = Future()

    def target():
        try:
            future.set_result(function())
        except BaseException as e:  # noqa: BLE001 - handed to the test
            future.set_exception(e)

    threading.Thread(target=target, daemon=True).start()
    return future
