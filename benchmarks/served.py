"""Served rows (``aaclip-bench --backends triton``): the model behind Triton Inference Server, per number of
concurrent camera clients.

Each precision's exported graph is served by ``aaclip-serve`` (started from its own environment on loopback and
stopped after the rows; or ``--server URL``, a server already running that model). N clients, one thread and
one ``triton`` runner each, send one frame per request like N cameras and wait for its answer; after
``warmup`` untimed requests each, all clients start together and send ``reps`` timed requests. Throughput is
all timed frames over the wall time from the common start to the last answer; latency is per request as the
client sees it. The server's own statistics over the same window split that time into queueing (waiting for
the dynamic batcher and a free instance) and compute, and give the mean batch it formed.
"""
from __future__ import annotations

import logging
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import numpy as np
from aaclip.contract.feeds import FeedBuilder
from aaclip.contract.manifest import Manifest
from aaclip.runtime.backends import RunnerOptions, open_runner

from .inputs import batch_of
from .measure import latency_stats

log = logging.getLogger(__name__)

SERVED_PRECISIONS = ("fp32", "fp16")
BACKEND = "triton"
LABEL = "Triton (aaclip-serve)"
QUEUE_DELAY_US = 1000


@contextmanager
def _served_model(ctx, artifact_path: Path, device: str) -> Iterator[str]:
    """The URL of a server running ``artifact_path``: ``--server``, or an ``aaclip-serve`` started for it."""
    from aaclip.serve.launch import serve_python, start_server

    cfg = ctx.cfg
    if cfg.server:
        yield cfg.server
        return
    python = Path(cfg.serve_python) if cfg.serve_python else serve_python(Path(__file__))
    if python is None or not python.is_file():
        raise RuntimeError("no aaclip-serve environment: create .venv-serve (python3 -m venv .venv-serve && "
                           ".venv-serve/bin/pip install '.[serve]'), pass --serve-python, or --server URL")
    args = ["--device", device, "--max-batch", str(max(cfg.clients)), "--max-queue-delay-us", str(QUEUE_DELAY_US)]
    server = start_server(python, artifact_path, args, log_path=ctx.work / f"serve-{artifact_path.stem}.log")
    try:
        server.wait_ready()
        yield server.grpc_url
    finally:
        server.stop()


def measure_clients(url: str, manifest: Manifest, frames: np.ndarray, clients: int, reps: int,
                    warmup: int) -> dict:
    """Timing and server-statistics fields of ``clients`` concurrent one-frame-per-request clients."""
    options = RunnerOptions(extra={"endpoint": url})
    runners = [open_runner(manifest, BACKEND, options) for _ in range(clients)]
    for runner in runners:
        runner.activate()
    try:
        feeds = []
        for i in range(len(frames)):
            builder = FeedBuilder(manifest, 1)
            builder.put(0, batch_of(frames, 1, i)[0])
            feeds.append(builder.feeds(1))
        start = threading.Barrier(clients + 1)
        latencies: list[list[float]] = [[] for _ in range(clients)]
        errors: list[BaseException] = []

        def client(k: int) -> None:
            try:
                for i in range(warmup):
                    runners[k].infer(feeds[(k + i) % len(feeds)])
                start.wait()
                for i in range(reps):
                    t0 = time.perf_counter()
                    runners[k].infer(feeds[(k + i) % len(feeds)])
                    latencies[k].append(time.perf_counter() - t0)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
                errors.append(exc)
                start.abort()

        threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
        for t in threads:
            t.start()
        start.wait()
        before = runners[0].statistics()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        window = runners[0].statistics().minus(before)
        if errors:
            raise errors[0]
    finally:
        for runner in runners:
            runner.deactivate()
    fields = latency_stats([x for per in latencies for x in per], 1)
    images = clients * reps
    fields.update(images_per_s=images / wall, ms_per_image=1e3 * wall / images, clients=clients,
                  server_queue_ms=window.queue_ms, server_compute_ms=window.compute_ms,
                  server_batch_mean=window.mean_batch)
    return fields


def served_rows(ctx, precisions: list[str], base_row, parity_fields) -> list[dict]:
    """Every served row: per precision (one server each), per number of clients."""
    from aaclip.runtime.backends.triton import served_manifest

    from . import rows as R

    cfg = ctx.cfg
    device = "remote" if cfg.server else ("cuda" if R.detect_capabilities(False).cuda else "cpu")
    out = []
    for precision in precisions:
        specs = [R.RowSpec(BACKEND, device, precision, 1, clients=n) for n in cfg.clients]
        rows = [base_row(s, cfg) for s in specs]
        if precision not in SERVED_PRECISIONS:
            for row in rows:
                row.update(status="skipped", reason="served rows run the exported fp32/fp16 graphs")
            out += rows
            continue
        try:
            artifact = ctx.graph(precision)
            with _served_model(ctx, artifact.path, device if device != "remote" else "auto") as url:
                manifest = served_manifest(url)
                parity: Optional[dict] = None
                for spec, row in zip(specs, rows):
                    row.update(artifact=artifact.path.name, artifact_size_mb=artifact.size_mb, clients=spec.clients)
                    log.info("timing %s (%d clients x %d requests)", spec.key, spec.clients, cfg.reps)
                    row.update(measure_clients(url, manifest, ctx.frames, spec.clients, cfg.reps, cfg.warmup))
                    if parity is None:
                        with open_runner(manifest, BACKEND, RunnerOptions(extra={"endpoint": url})) as runner:
                            parity = parity_fields(ctx, spec, runner, manifest)
                    row.update(parity, status="ok", loop_status="skipped",
                               loop_reason="the served rows are the loop's own inference path (see docs)")
        except Exception as exc:  # noqa: BLE001 - a row that cannot run is reported, the others go on
            text = str(exc).strip().splitlines()
            reason = f"{type(exc).__name__}: {text[0][:300] if text else ''}"
            log.warning("served %s rows failed: %s", precision, reason)
            for row in rows:
                if row.get("status") != "ok":
                    row.update(status="failed", reason=reason)
        out += rows
    return out


__all__ = ["served_rows", "measure_clients", "SERVED_PRECISIONS", "LABEL"]
