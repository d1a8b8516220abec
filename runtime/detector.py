"""``Detector``: the runtime as a Python API for integrators, torch-free.

    from aaclip.runtime import Detector

    with Detector("plates.onnx", backend="auto", class_name="plate") as detector:
        result = detector.predict(frame)             # a BGR uint8 image (H, W, 3), as OpenCV reads it
        print(result.score, result.raw_score, result.alarm)
        for result in detector.stream("line.mp4"):   # any camera spec of aaclip-runtime --camera
            ...

It is the camera loop's own code: the artifact is opened and checked by ``contract.manifest.open_artifact``,
run by the backend registry's runner (``open_runner``), frames go through ``contract.feeds.FeedBuilder`` into
the runner's input buffers, ``decide.Decider`` scores and debounces them, ``capture.SourceReader`` reads
``stream``'s source (reconnecting a live one). So a ``Prediction`` is what the loop's events say of the
same frame.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.feeds import FeedBuilder
from aaclip.contract.manifest import Manifest, open_artifact
from aaclip.contract.tensors import MAP_OUTPUT, SCORE_OUTPUTS

from .backends import AUTO, RunnerOptions, open_runner
from .capture import Backoff, CapturedFrame, SourceReader
from .decide import ALARM, Decider, Decision
from .sources import open_source


@dataclass
class Prediction:
    """One frame's result: ``score`` is what people are shown (the events' ``score``), ``raw_score`` the image
    score the (raw) ``threshold`` applies to; ``alarm`` after ``debounce`` anomalous frames in a row; ``map``
    the anomaly map (H, W) of the graph's input size when the detector was made with ``maps=True``."""

    score: float
    raw_score: float
    anomalous: bool
    alarm: bool
    onset: bool            # the first frame of an alarm
    state: str             # normal, anomalous (debounce not yet met) or alarm
    threshold: float
    class_name: str
    map_max: float
    cls_score: float
    frame: int             # index of the frame (in ``predict`` calls, or in the stream)
    source: str
    file: Optional[str] = None
    map: Optional[np.ndarray] = None

    @classmethod
    def of(cls, d: Decision, amap: Optional[np.ndarray]) -> "Prediction":
        return cls(score=d.score, raw_score=getattr(d, "raw_score", d.score), anomalous=d.anomalous, alarm=d.state == ALARM, onset=d.onset,
                   state=d.state, threshold=d.threshold, class_name=d.class_name, map_max=d.map_max,
                   cls_score=d.cls_score, frame=d.frame, source=d.source, file=d.file,
                   map=None if amap is None else np.array(amap, copy=True))


Frames = Union[np.ndarray, Sequence[np.ndarray]]


class Detector:
    """An artifact ready to score frames (see the module docstring). ``threshold``: a raw threshold instead of
    the manifest's; ``debounce``: consecutive anomalous frames before ``alarm`` (``predict`` calls share one
    debounce state, each ``stream`` has its own); ``runner``: device, threads and backend settings."""

    def __init__(self, artifact: Union[str, Path], backend: str = AUTO, class_name: Optional[str] = None,
                 threshold: Optional[float] = None, debounce: int = 1, maps: bool = False,
                 runner: Optional[RunnerOptions] = None):
        self.manifest: Manifest = open_artifact(artifact)
        if class_name is None and len(self.manifest.classes) > 1:
            raise UserError(f"{self.manifest.artifact_path.name} holds several classes; give class_name= one of "
                            f"{', '.join(self.manifest.classes)}")
        self.class_id = 0 if class_name is None else self.manifest.class_index(class_name)
        self.class_name = self.manifest.classes[self.class_id]
        if debounce < 1:
            raise UserError(f"debounce must be >= 1, got {debounce}")
        self.params = self.manifest.score.with_threshold(threshold)
        self.calibrated = self.manifest.calibrated and threshold is None
        self.debounce = debounce
        self.outputs = SCORE_OUTPUTS + ((MAP_OUTPUT,) if maps else ())
        self._runner = open_runner(self.manifest, backend, runner or RunnerOptions())
        self._runner.activate()
        self.backend = self._runner.name
        batch = min(8, self.manifest.batch_max or 8)
        self._feeds = FeedBuilder(self.manifest, batch, allocate=self._runner.lend_input)
        self._decider = self._new_decider()
        self._count = 0
        self._lock = threading.Lock()  # one inference at a time: the runner's buffers are shared

    def _new_decider(self) -> Decider:
        return Decider(self.params, 1, self.debounce, calibrated=self.calibrated)

    def predict(self, frames: Frames) -> Union[Prediction, list[Prediction]]:
        """One frame (H, W, 3) -> one ``Prediction``; several (a list, or an (N, H, W, 3) array) -> a list,
        in order. Any frame size: frames are resized to the graph's input like the loop's."""
        single = isinstance(frames, np.ndarray) and frames.ndim in (2, 3)
        images = [frames] if single else list(frames)
        out = []
        with self._lock:
            for start in range(0, len(images), self._feeds.batch):
                part = images[start: start + self._feeds.batch]
                captured = [CapturedFrame(0, "predict", self._count + k, img, 0.0, 0.0) for k, img in enumerate(part)]
                self._count += len(part)
                out += self._score(captured, self._decider)
        return out[0] if single else out

    def _score(self, frames: list[CapturedFrame], decider: Decider) -> list[Prediction]:
        for i, f in enumerate(frames):
            self._feeds.put(i, f.image, self.class_id)
        result = self._runner.infer(self._feeds.feeds(len(frames)), self.outputs)
        decisions = decider.decide(frames, [self.class_name] * len(frames), result, 0.0)
        maps = result.get(MAP_OUTPUT)
        return [Prediction.of(d, None if maps is None else maps[i]) for i, d in enumerate(decisions)]

    def stream(self, source: Union[str, int], loop: bool = False) -> Iterator[Prediction]:
        """Predictions of every frame of ``source`` (a camera index, a URL, a video file, an image folder, a
        GStreamer pipeline: what ``aaclip-runtime --camera`` takes), read as the caller consumes them; ends
        with the source (files) or when the caller stops iterating. Live sources reconnect after a loss."""
        src = open_source(str(source), loop=loop)
        stop = threading.Event()
        reader = SourceReader(src, 0, Backoff(), stop)
        decider = self._new_decider()
        try:
            while True:
                frame = reader.next()
                if frame is None:
                    return
                with self._lock:  # not held while the caller handles the result
                    (prediction,) = self._score([frame], decider)
                yield prediction
        finally:
            stop.set()
            src.release()

    def close(self) -> None:
        if self._runner is not None:
            self._runner.deactivate()
            self._runner = None

    def __enter__(self) -> "Detector":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
