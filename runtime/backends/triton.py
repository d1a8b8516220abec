"""Triton Inference Server backend: the camera loop's inference on a served model (KServe v2 protocol).

``aaclip-runtime grpc://HOST:8001/MODEL`` (or ``http://HOST:8000/MODEL``) reads the model's manifest from
the server (the ``aaclip_manifest`` parameter of its configuration, written by ``aaclip-export --format
triton`` and ``aaclip-serve``), validates it with the same strict validator as a local artifact, and checks
the served inputs and outputs against it (``aaclip.contract.served``) before the first frame. Requests are
asynchronous: the loop keeps several batches on the server so that cameras feed its dynamic batcher. A lost
server raises ``BackendUnavailable`` (the loop counts the frames as lost) and ``reconnect`` waits for it
with backoff, then checks that it still serves the same artifact.

tritonclient is an optional dependency: ``pip install 'aaclip-edge[triton]'``.
"""
from __future__ import annotations

import json
import logging
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Optional, Sequence
from urllib.parse import urlsplit

import numpy as np
from aaclip.contract.errors import ArtifactError, UserError
from aaclip.contract.manifest import Manifest, validate_manifest
from aaclip.contract.served import (
    DEFAULT_GRPC_PORT,
    DEFAULT_HTTP_PORT,
    MANIFEST_PARAMETER,
    ServedTensor,
    check_served_tensors,
    served_inputs,
    served_outputs,
)

from .base import BackendUnavailable, Pending, Runner

log = logging.getLogger(__name__)

SCHEMES = {"grpc": DEFAULT_GRPC_PORT, "http": DEFAULT_HTTP_PORT}
DEFAULT_TIMEOUT_S = 10.0  # one request's deadline: a hung server counts as lost after this
INSTALL_HINT = "pip install 'aaclip-edge[triton]' (tritonclient[grpc,http])"


@dataclass(frozen=True)
class Endpoint:
    """``grpc://HOST[:PORT]/MODEL[/VERSION]`` or ``http://...``: where a model is served."""

    scheme: str
    host: str
    port: int
    model: str
    version: str = ""

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def label(self) -> str:
        """A name for messages and the manifest's path (no ``//``, which ``Path`` would fold)."""
        return f"{self.model}@{self.address}"

    def __str__(self) -> str:
        return f"{self.scheme}://{self.address}/{self.model}" + (f"/{self.version}" if self.version else "")


def parse_endpoint(text: Any) -> Optional[Endpoint]:
    """The endpoint of a served-model URL, or None when ``text`` is not one (a local artifact path)."""
    text = str(text)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if scheme not in SCHEMES:
        return None
    parts = urlsplit(text)
    path = [p for p in parts.path.split("/") if p]
    try:
        port = parts.port or SCHEMES[scheme]
    except ValueError:
        port = None
    if not parts.hostname or port is None or len(path) not in (1, 2) or (len(path) == 2 and not path[1].isdigit()):
        raise UserError(f"{text!r} is not a served model: use {scheme}://HOST:{SCHEMES[scheme]}/MODEL[/VERSION]")
    return Endpoint(scheme, parts.hostname, port, path[0], path[1] if len(path) == 2 else "")


def _import(scheme: str) -> Any:
    try:
        if scheme == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
    except ImportError as exc:
        raise UserError(f"the triton backend needs tritonclient ({exc}): {INSTALL_HINT}") from None
    return client


def _exception_types() -> tuple:
    from tritonclient.utils import InferenceServerException

    return InferenceServerException, OSError, ConnectionError, TimeoutError


class _Client:
    """The calls the backend makes, the same for gRPC and HTTP (tritonclient's two clients differ in detail)."""

    def __init__(self, endpoint: Endpoint, timeout_s: float = DEFAULT_TIMEOUT_S, concurrency: int = 4):
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.lib = _import(endpoint.scheme)
        if endpoint.scheme == "grpc":
            self.client = self.lib.InferenceServerClient(endpoint.address)
        else:
            self.client = self.lib.InferenceServerClient(endpoint.address, concurrency=concurrency,
                                                         connection_timeout=timeout_s, network_timeout=timeout_s)

    def _json(self, value: Any) -> dict:
        return value if isinstance(value, dict) else json.loads(value)

    def ready(self) -> bool:
        e = self.endpoint
        return bool(self.client.is_server_live() and self.client.is_model_ready(e.model, e.version))

    def config(self) -> dict:
        e = self.endpoint
        if e.scheme == "grpc":
            return self.client.get_model_config(e.model, e.version, as_json=True)["config"]
        return self.client.get_model_config(e.model, e.version)

    def metadata(self) -> dict:
        e = self.endpoint
        if e.scheme == "grpc":
            return self.client.get_model_metadata(e.model, e.version, as_json=True)
        return self.client.get_model_metadata(e.model, e.version)

    def statistics(self) -> dict:
        e = self.endpoint
        if e.scheme == "grpc":
            return self.client.get_inference_statistics(e.model, e.version, as_json=True)
        return self.client.get_inference_statistics(e.model, e.version)

    def models(self) -> list[str]:
        index = self.client.get_model_repository_index(as_json=True) if self.endpoint.scheme == "grpc" else \
            self.client.get_model_repository_index()
        entries = index.get("models", []) if isinstance(index, dict) else index
        return sorted(m.get("name", "?") for m in entries)

    def submit(self, inputs: list, outputs: list) -> Any:
        """Send one request; returns a handle with ``done()``/``result()`` (the raw InferResult)."""
        e = self.endpoint
        if e.scheme == "grpc":
            future: Future = Future()

            def done(result, error) -> None:
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

            self.client.async_infer(e.model, inputs, done, model_version=e.version, outputs=outputs,
                                    client_timeout=self.timeout_s)
            return future
        return _HttpRequest(self.client.async_infer(e.model, inputs, model_version=e.version, outputs=outputs),
                            self.timeout_s)

    def close(self) -> None:
        try:
            self.client.close()
        except Exception:  # noqa: BLE001 - closing a dead connection
            log.debug("closing the %s client failed", self.endpoint.scheme, exc_info=True)


class _HttpRequest:
    """tritonclient.http's asynchronous request behind ``done()``/``result()`` (it runs on gevent: the request
    progresses while this thread waits in ``result``)."""

    def __init__(self, request: Any, timeout_s: float):
        self.request, self.timeout_s = request, timeout_s

    def done(self) -> bool:
        return False

    def result(self) -> Any:
        return self.request.get_result(block=True, timeout=self.timeout_s)


class _Request:
    """One submitted batch: converts the server's answer into the runner's outputs, or into ``BackendUnavailable``."""

    def __init__(self, runner: "TritonRunner", handle: Any, names: Sequence[str]):
        self.runner, self.handle, self.names = runner, handle, names

    def done(self) -> bool:
        return self.handle.done()

    def result(self) -> dict[str, np.ndarray]:
        try:
            answer = self.handle.result()
        except _exception_types() as exc:
            raise self.runner.failure(exc) from None
        out = {}
        for name in self.names:
            value = answer.as_numpy(name)
            tensor = self.runner.outputs[name]
            if tensor.reshape is not None:
                value = value.reshape((value.shape[0], *tensor.reshape))
            out[name] = value
        return out


@dataclass(frozen=True)
class ServerStats:
    """A model's counters from the server's statistics endpoint (cumulative; ``minus`` gives a window)."""

    requests: int = 0          # successful requests
    inferences: int = 0        # images inferred (a request of batch n counts n)
    executions: int = 0        # model executions (batches the dynamic batcher formed)
    queue_ns: int = 0          # summed over requests: waiting in the scheduler queue
    compute_ns: int = 0        # summed over requests: input copy + inference + output copy
    batches: tuple[tuple[int, int], ...] = ()  # (batch size, executions of that size)

    @classmethod
    def from_json(cls, data: Mapping) -> "ServerStats":
        model = (data.get("model_stats") or [{}])[0]
        stats = model.get("inference_stats", {})

        def ns(key: str) -> int:
            return int((stats.get(key) or {}).get("ns", 0) or 0)

        batches = tuple(sorted((int(b.get("batch_size", 0)), int((b.get("compute_infer") or {}).get("count", 0) or 0))
                               for b in model.get("batch_stats", [])))
        return cls(requests=int((stats.get("success") or {}).get("count", 0) or 0),
                   inferences=int(model.get("inference_count", 0) or 0),
                   executions=int(model.get("execution_count", 0) or 0), queue_ns=ns("queue"),
                   compute_ns=ns("compute_input") + ns("compute_infer") + ns("compute_output"), batches=batches)

    def minus(self, before: "ServerStats") -> "ServerStats":
        old = dict(before.batches)
        return ServerStats(self.requests - before.requests, self.inferences - before.inferences,
                           self.executions - before.executions, self.queue_ns - before.queue_ns,
                           self.compute_ns - before.compute_ns,
                           tuple((b, n - old.get(b, 0)) for b, n in self.batches if n > old.get(b, 0)))

    @property
    def mean_batch(self) -> float:
        return self.inferences / self.executions if self.executions else float("nan")

    @property
    def queue_ms(self) -> float:
        """Mean time a request waited in the server's queue."""
        return self.queue_ns / self.requests / 1e6 if self.requests else float("nan")

    @property
    def compute_ms(self) -> float:
        """Mean time the server computed a request (its batch's input copy, inference and output copy)."""
        return self.compute_ns / self.requests / 1e6 if self.requests else float("nan")


def _served(client: _Client, batch: int) -> tuple[Manifest, int]:
    """The manifest the server publishes for the endpoint's model, validated and checked against what the
    model takes and returns; with the model's max_batch_size."""
    e = client.endpoint
    config, metadata = client.config(), client.metadata()
    raw = ((config.get("parameters") or {}).get(MANIFEST_PARAMETER) or {}).get("string_value")
    if not raw:
        raise ArtifactError(f"{e} serves model {e.model!r} without an aaclip manifest (config parameter "
                            f"'{MANIFEST_PARAMETER}'): write the model repository with aaclip-export --format triton "
                            "or serve the artifact with aaclip-serve")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ArtifactError(f"{e}: the '{MANIFEST_PARAMETER}' parameter is not valid JSON ({exc})") from None
    manifest = validate_manifest(data, Path(e.label), Path(e.model))
    max_batch = int(config.get("max_batch_size", 0))
    problems = check_served_tensors(manifest, max_batch, metadata.get("inputs", []), metadata.get("outputs", []),
                                    batch)
    if problems:
        raise ArtifactError(f"{e} does not serve what its manifest describes: {'; '.join(problems)}",
                            manifest.rebuild_command)
    return manifest, max_batch


def _reach(endpoint: Endpoint, exc: BaseException) -> UserError:
    return UserError(f"cannot use the Triton server at {endpoint}: {str(exc).strip() or type(exc).__name__}")


def served_manifest(url: Any, batch: int = 1, timeout_s: float = DEFAULT_TIMEOUT_S) -> Manifest:
    """Fetch, validate and check the manifest of the model served at ``url`` (``grpc://HOST:PORT/MODEL``);
    a clear ``UserError`` when the server cannot be reached, lacks the model or serves something else."""
    endpoint = parse_endpoint(url)
    if endpoint is None:
        raise UserError(f"{url!r} is not a served model URL (grpc://HOST:PORT/MODEL or http://HOST:PORT/MODEL)")
    client = _Client(endpoint, timeout_s)
    errors = _exception_types()
    try:
        try:
            ready = client.ready()
        except errors as exc:
            raise _reach(endpoint, exc) from None
        if not ready:
            try:
                models = ", ".join(client.models()) or "none"
            except errors:
                models = "unknown"
            raise UserError(f"the Triton server at {endpoint.address} has no model {endpoint.model!r} ready "
                            f"(its repository: {models})")
        try:
            return _served(client, batch)[0]
        except errors as exc:
            raise _reach(endpoint, exc) from None
    finally:
        client.close()


class TritonRunner(Runner):
    """Runs the model served at ``endpoint`` for ``manifest`` (the manifest read from that server)."""

    name = "triton"
    asynchronous = True

    def __init__(self, manifest: Manifest, endpoint: Endpoint, timeout_s: float = DEFAULT_TIMEOUT_S):
        super().__init__()
        self.manifest = manifest
        self.endpoint = endpoint
        self.timeout_s = timeout_s
        self.inputs: dict[str, ServedTensor] = {t.name: t for t in served_inputs(manifest)}
        self.outputs: dict[str, ServedTensor] = {t.name: t for t in served_outputs(manifest)}
        self.max_batch = 0
        self._client: Optional[_Client] = None

    # ---- lifecycle -----------------------------------------------------------------------------------
    def _connect(self) -> None:
        """A fresh client (a new channel: gRPC's own reconnect backoff grows to minutes) that checks the
        server still serves this artifact."""
        if self._client is not None:
            self._client.close()
        self._client = _Client(self.endpoint, self.timeout_s)
        if not self._client.ready():
            raise BackendUnavailable(f"{self.endpoint}: the model is not ready")
        manifest, self.max_batch = _served(self._client, 1)
        if manifest.sha256 != self.manifest.sha256:
            raise ArtifactError(f"{self.endpoint} now serves another artifact (sha256 {manifest.sha256[:12]}..., "
                                f"this run started with {self.manifest.sha256[:12]}...): restart the runtime")

    def activate_impl(self) -> None:
        try:
            self._connect()
        except BackendUnavailable as exc:
            raise UserError(str(exc)) from None
        except _exception_types() as exc:
            raise _reach(self.endpoint, exc) from None
        self.input_names = tuple(self.inputs)
        self.output_names = tuple(self.outputs)
        log.info("triton: %s (max batch %d) over %s", self.endpoint, self.max_batch, self.endpoint.scheme)

    def deactivate_impl(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def lend_input(self, name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        if self.is_active and shape[0] > self.max_batch:
            raise UserError(f"--batch {shape[0]} exceeds the served model's max_batch_size {self.max_batch}")
        return np.zeros(shape, dtype)

    # ---- inference -----------------------------------------------------------------------------------
    def failure(self, exc: BaseException) -> Exception:
        """``BackendUnavailable`` when the server or its model is gone (probed), else a plain error: a request
        the server refuses while serving is a bug, not an outage."""
        try:
            alive = self._client is not None and self._client.ready()
        except _exception_types():
            alive = False
        if not alive:
            return BackendUnavailable(f"{self.endpoint}: {str(exc).strip() or type(exc).__name__}")
        return RuntimeError(f"{self.endpoint} refused a request: {exc}")

    def submit(self, feeds: Mapping[str, np.ndarray], outputs: Optional[Sequence[str]] = None) -> Pending:
        names = self.check_call(feeds, outputs)
        lib = self._client.lib
        inputs = []
        for name, tensor in self.inputs.items():
            value = np.ascontiguousarray(feeds[name])
            if tensor.reshape is not None:
                value = value.reshape(value.shape[0], *tensor.dims)
            item = lib.InferInput(name, list(value.shape), tensor.wire_type)
            item.set_data_from_numpy(value)  # copies: the caller may reuse its buffers at once
            inputs.append(item)
        wanted = [lib.InferRequestedOutput(n) for n in names]
        try:
            handle = self._client.submit(inputs, wanted)
        except _exception_types() as exc:
            raise self.failure(exc) from None
        return _Request(self, handle, names)

    def infer_impl(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]:
        return self.submit(feeds, outputs).result()

    def reconnect(self, stop: threading.Event, delays: Iterator[float]) -> bool:
        last = None
        for attempt, delay in enumerate(delays, start=1):
            if stop.wait(delay):
                return False
            try:
                self._connect()
                log.warning("triton: %s serves again (try %d)", self.endpoint, attempt)
                return True
            except (BackendUnavailable, *_exception_types()) as exc:
                if delay != last or attempt % 10 == 0:
                    log.warning("triton: %s still unavailable (try %d: %s); retrying every %.2g s or slower",
                                self.endpoint, attempt, str(exc).strip().splitlines()[0][:200] if str(exc) else
                                type(exc).__name__, delay)
                    last = delay
        return False

    def statistics(self) -> ServerStats:
        """The server's inference statistics of this model (KServe v2 statistics extension)."""
        return ServerStats.from_json(self._client.statistics())


def make_triton_runner(manifest: Manifest, options) -> Runner:
    """The registry's factory: ``options.extra["endpoint"]`` names the served model (``aaclip-runtime`` sets it
    from a ``grpc://``/``http://`` artifact)."""
    url = options.extra.get("endpoint")
    endpoint = parse_endpoint(url) if url is not None else None
    if endpoint is None:
        raise UserError("the triton backend runs a served model: give grpc://HOST:8001/MODEL (or http://HOST:8000/"
                        f"MODEL) as the artifact instead of {manifest.artifact_path.name}")
    return TritonRunner(manifest, endpoint, float(options.extra.get("timeout_s", DEFAULT_TIMEOUT_S)))


__all__ = ["Endpoint", "ServerStats", "parse_endpoint", "served_manifest", "TritonRunner", "make_triton_runner", "SCHEMES",
           "DEFAULT_TIMEOUT_S", "INSTALL_HINT"]
