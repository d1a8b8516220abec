"""The one runner interface every backend implements (the shape of Polygraphy's runners)."""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Mapping, Optional, Sequence

import numpy as np


class Runner(ABC):
    """Runs one artifact: ``activate()``, then ``infer(feeds)`` any number of times, then ``deactivate()``.

    ``infer`` takes ``{input name: array}`` with the batch as first axis and returns
    ``{output name: array}``. ``outputs`` limits which outputs are fetched (a loop that only needs
    decisions asks for ``map_max`` and ``cls_score`` and never copies maps). Returned arrays may be
    views of the backend's own buffers, valid only until the next ``infer``: copy what you keep.
    Batch logic (grouping frames) belongs to the caller, not to backends.
    """

    name = "runner"

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

    def infer(self, feeds: Mapping[str, np.ndarray],
              outputs: Optional[Sequence[str]] = None) -> dict[str, np.ndarray]:
        """Run one batch; returns the requested outputs (all when ``outputs`` is None).

        The arrays may be views of the runner's preallocated host buffers (TensorRT: page-locked
        memory reused by every call, so the camera loop allocates nothing per frame): they are valid
        until the next ``infer``. Copy what must outlive it.
        """
        if not self.is_active:
            raise RuntimeError(f"{self.name} runner used before activate()")
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise ValueError(f"{self.name}: missing input(s) {missing}; the artifact expects {list(self.input_names)}")
        names = tuple(outputs) if outputs is not None else self.output_names
        unknown = [n for n in names if n not in self.output_names]
        if unknown:
            raise ValueError(f"{self.name}: unknown output(s) {unknown}; the artifact has {list(self.output_names)}")
        return self.infer_impl(feeds, names)

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
