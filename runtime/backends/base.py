"""The one runner interface every backend implements (the shape of Polygraphy's runners)."""
from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from typing import Iterator, Mapping, Optional, Protocol, Sequence

import numpy as np


class BackendUnavailable(RuntimeError):
    """A remote backend (an inference server) cannot be reached or lost a request. The camera loop treats it
    like a camera loss: the batch's frames are counted as lost, then ``Runner.reconnect`` waits with backoff."""


class Pending(Protocol):
    """A submitted batch: ``done()`` without waiting, ``result()`` waits for ``infer``'s outputs (or raises)."""

    def done(self) -> bool: ...

    def result(self) -> dict[str, np.ndarray]: ...


class Done:
    """A batch computed at submission (every local backend)."""

    def __init__(self, outputs: dict[str, np.ndarray]):
        self._outputs = outputs

    def done(self) -> bool:
        return True

    def result(self) -> dict[str, np.ndarray]:
        return self._outputs


class Runner(ABC):
    """Runs one artifact: ``activate()``, then ``infer(feeds)`` any number of times, then ``deactivate()``.

    ``infer`` takes ``{input name: array}`` with the batch as first axis and returns
    ``{output name: array}``. ``outputs`` limits which outputs are fetched (a loop that only needs
    decisions asks for ``map_max`` and ``cls_score`` and never copies maps). Batch logic (grouping
    frames) belongs to the caller, not to backends.

    Buffers: ``lend_input`` gives the caller the array an input should be written into (TensorRT: its
    page-locked host buffer), so a frame is written once on its way to the device. The returned outputs
    may likewise be views of the runner's own buffers, valid until the next ``infer``: copy what you keep.

    Asynchronous backends (``asynchronous = True``: a server) also take ``submit(feeds)``, which returns at
    once with a ``Pending`` result, so a caller keeps several batches in flight; the feeds may be overwritten
    as soon as ``submit`` returns. Losing the server raises ``BackendUnavailable``; ``reconnect`` then waits
    for it to serve again.
    """

    name = "runner"
    asynchronous = False

    def __init__(self) -> None:
        self.is_active = False
        self.input_names: tuple[str, ...] = ()
        self.output_names: tuple[str, ...] = ()

    def activate(self) -> None:
        if not self.is_active:
            self.activate_impl()
            self.is_active = True

    def deactivate(self) -> None:
        if self.is_active:
            try:
                self.deactivate_impl()
            finally:
                self.is_active = False

    def check_input_size(self, shape: Sequence, expected_hw: Optional[tuple[int, int]]) -> None:
        """Refuse an artifact whose graph takes another frame size than its manifest says (NHWC ``shape``)."""
        if expected_hw is None or len(shape) != 4:
            return
        got = tuple(shape[1:3])
        if all(isinstance(d, int) and d > 0 for d in got) and got != tuple(expected_hw):
            from aaclip.contract.errors import ArtifactError

            raise ArtifactError(f"{self.name}: the graph takes {got[0]}x{got[1]} frames but its manifest says "
                                f"{expected_hw[0]}x{expected_hw[1]}: the manifest belongs to another export")

    def lend_input(self, name: str, shape: tuple, dtype: np.dtype) -> np.ndarray:
        """An array of ``shape``/``dtype`` to write input ``name`` into before ``infer`` (default: a new one)."""
        return np.zeros(shape, dtype)

    def infer(self, feeds: Mapping[str, np.ndarray],
              outputs: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        """Run one batch; returns the requested outputs (all when ``outputs`` is None)."""
        return self.infer_impl(feeds, self.check_call(feeds, outputs))

    def submit(self, feeds: Mapping[str, np.ndarray], outputs: Optional[Sequence[str]] = None) -> Pending:
        """Start one batch; its outputs come from ``result()`` of the returned handle. Local backends compute
        here (the handle is done); asynchronous ones send the batch and return at once."""
        return Done(self.infer(feeds, outputs))

    def reconnect(self, stop: threading.Event, delays: Iterator[float]) -> bool:
        """After ``BackendUnavailable``: wait (``delays`` between tries) until the backend serves again (True),
        or until ``stop`` is set (False). Local backends have nothing to reconnect to."""
        return not stop.is_set()

    def check_call(self, feeds: Mapping[str, np.ndarray], outputs: Optional[Sequence[str]]) -> tuple[str, ...]:
        """The output names an ``infer``/``submit`` call asks for, after checking the runner is active and
        every input is there."""
        if not self.is_active:
            raise RuntimeError(f"{self.name} runner used before activate()")
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.name}: missing input(s) {missing}; the artifact expects {list(self.input_names)}")
        names = tuple(outputs) if outputs is not None else self.output_names
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise ValueError(f"{self.name}: unknown output(s) {unknown}; the artifact has {list(self.output_names)}")
        return names

    def __enter__(self) -> "Runner":
        self.activate()
        return self

    def __exit__(self, *exc) -> None:
        self.deactivate()

    @abstractmethod
    def activate_impl(self) -> None: ...

    @abstractmethod
    def infer_impl(self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str]) -> dict[str, np.ndarray]: ...

    @abstractmethod
    def deactivate_impl(self) -> None: ...


def infer_frames(runner: Runner, spec, frames: Sequence[np.ndarray], class_ids: Optional[Sequence[int]] = None,
                 batch: int = 4, outputs: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
    """All ``outputs`` of ``frames`` through an active ``runner`` in batches of ``batch`` (copies, concatenated).

    ``spec`` is the artifact's manifest (input size, batch profile, classes): frames are fitted into the
    runner's lent input buffers by a ``FeedBuilder``, exactly as the camera loop feeds them.
    """
    from aaclip.contract.feeds import FeedBuilder

    names = tuple(outputs) if outputs is not None else runner.output_names
    if spec.batch_max is not None:
        batch = min(batch, spec.batch_max)
    builder = FeedBuilder(spec, batch, allocate=runner.lend_input)
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for part, feeds in builder.batches(frames, class_ids):
        out = runner.infer(feeds, names)
        n = part.stop - part.start
        for name in names:
            parts[name].append(np.array(out[name][:n], copy=True))
    return {name: np.concatenate(v) for name, v in parts.items()}
