"""Backends by name (the Polygraphy shape): the artifact says what it is, a backend says what it runs.

An artifact's identity (file, format, hash, manifest) is a ``Manifest`` from ``aaclip.contract.manifest``;
a ``Backend`` is a small registered factory that turns one into a ``Runner`` (activate / infer /
deactivate). Everything that runs an artifact (the camera loop, calibration, the export verifier, the
benchmarks) asks ``open_runner(manifest, name)``; nothing else picks a backend.

``auto`` takes, among the installed backends that run the artifact's format and suit this machine
(``auto_when``), the one with the lowest ``auto_rank`` (``AUTO_RULE`` says it in words; every command's
``--backend`` help quotes it, and ``open_runner`` logs once per process what ``auto`` resolved to and
why). The machine facts it reads are in ``machine`` (``AACLIP_CPU_VENDOR`` pins the CPU vendor). Backends
outside the runtime register themselves on import (the PyTorch reference runner of
``aaclip.export.reference``).
"""
from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import click
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import Manifest

from .base import Runner
from .machine import describe_machine

log = logging.getLogger(__name__)

AUTO = "auto"
AUTO_RULE = ("auto: TensorRT for engines; for ONNX graphs OpenVINO on an Intel CPU (when installed and ONNX Runtime "
             "has no CUDA execution provider), else ONNX Runtime (CUDA, else CPU)")
"""The one ``--backend auto`` rule in words (what ``choose_backend`` does with the registered backends)."""
_ANNOUNCED: set = set()
_WARNED: set = set()


@dataclass(frozen=True)
class RunnerOptions:
    """How to run: ``device`` ("auto", "cpu", "cuda"), intra-op ``threads`` (None: the backend's default), and
    backend-specific ``extra`` settings (e.g. a preloaded model, or fakes in tests)."""

    device: str = "auto"
    threads: Optional[int] = None
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Backend:
    name: str
    formats: tuple[str, ...]                              # artifact formats it runs ("onnx", "engine")
    create: Callable[[Manifest, RunnerOptions], Runner]   # imports the backend's library lazily
    installed: Callable[[], bool]
    install_hint: str
    auto_rank: int = 100                                  # lower wins for --backend auto; None-like 1000: never auto
    description: str = ""
    auto_when: Callable[[], bool] = lambda: True          # whether auto may pick it on this machine (e.g. Intel CPU)


_BACKENDS: dict[str, Backend] = {}


def register_backend(backend: Backend) -> Backend:
    """Add (or replace) a backend under its name."""
    _BACKENDS[backend.name] = backend
    return backend


def backend_names(include_auto: bool = True) -> tuple[str, ...]:
    names = tuple(_BACKENDS)
    return ((AUTO,) + names) if include_auto else names


def get_backend(name: str) -> Backend:
    try:
        return _BACKENDS[name]
    except KeyError:
        raise UserError(f"unknown backend {name!r}; choose one of {', '.join(backend_names())}") from None


def module_installed(*modules: str) -> Callable[[], bool]:
    """An ``installed`` check: any of ``modules`` is importable (without importing it)."""
    return lambda: any(importlib.util.find_spec(m) is not None for m in modules)


def choose_backend(manifest: Manifest, name: str = AUTO) -> Backend:
    """The backend for ``manifest``'s artifact: ``auto`` or an explicit name checked against the format."""
    fmt = manifest.artifact_format
    if name != AUTO:
        backend = get_backend(name)
        if fmt not in backend.formats:
            runs = [b.name for b in _BACKENDS.values() if fmt in b.formats]
            raise UserError(f"{manifest.artifact_path.name} is an {fmt} artifact, which the {name} backend does not "
                            f"run; use --backend {' or '.join(runs) or 'auto'}")
        return backend
    candidates = sorted((b for b in _BACKENDS.values() if fmt in b.formats and b.auto_rank < 1000),
                        key=lambda b: b.auto_rank)
    for backend in candidates:
        if backend.installed() and backend.auto_when():
            return backend
    candidates = [b for b in candidates if b.auto_when()]
    if candidates:
        return candidates[0]  # not installed: its create() raises the install hint
    raise UserError(f"no backend runs {fmt} artifacts ({manifest.artifact_path.name})")


def resolve_backend(manifest: Manifest, name: str = AUTO) -> str:
    """The backend name ``name`` stands for with ``manifest`` on this machine (``auto`` resolved and announced)."""
    backend = choose_backend(manifest, name)
    if name == AUTO:
        announce_auto(manifest.artifact_format, backend.name)
    return backend.name


def _once_per_command(process_wide: set) -> set:
    """What was said already: in this command invocation (click's context, so two commands run in one process
    each say it), else in this process."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return process_wide
    return ctx.find_root().meta.setdefault(f"aaclip.once.{id(process_wide)}", set())


def announce_auto(fmt: str, chosen: str) -> None:
    """Log (once per command or process, and resolution) what ``--backend auto`` chose for ``fmt`` artifacts and why."""
    seen = _once_per_command(_ANNOUNCED)
    if (fmt, chosen) in seen:
        return
    seen.add((fmt, chosen))
    log.info("--backend auto -> %s for this %s artifact on this machine: %s (%s)", chosen, fmt, describe_machine(),
             AUTO_RULE)


def warn_if_unverified(manifest: Manifest, backend: str, options: Optional[RunnerOptions] = None) -> bool:
    """Warn (once per command or process, artifact, backend and precision) when ``manifest``'s artifact runs on
    a backend and precision its parity or accuracy gate was never checked on; returns whether it warned now."""
    precision = str((options.extra if options else {}).get("precision") or manifest.precision)
    key = (manifest.sha256, backend, precision)
    warned = _once_per_command(_WARNED)
    if key in warned or (backend, precision) in manifest.verified_on:
        return False
    warned.add(key)
    checked = ", ".join(f"{b} {p}" for b, p in sorted(manifest.verified_on)) or "nothing on record"
    log.warning("%s runs on %s in %s, where its outputs were never checked against PyTorch (verified on: %s); "
                "run aaclip-export --verify %s --backend %s on this machine", manifest.artifact_path.name, backend,
                precision, checked, manifest.artifact_path, backend)
    return True


def open_runner(manifest: Manifest, name: str = AUTO, options: Optional[RunnerOptions] = None) -> Runner:
    """The (not yet activated) runner of ``manifest``'s artifact on backend ``name`` (``auto`` is announced)."""
    backend = get_backend(resolve_backend(manifest, name))
    return backend.create(manifest, options or RunnerOptions())
