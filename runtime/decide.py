"""Per-frame decisions: each frame's image score (``aaclip.contract.score``) against the threshold,
debounced per source into alarms, as one ``Decision`` record that every sink consumes. ``Decision.score``
is the operator's [0, 1] score (threshold at 0.5) that pages, banners and events show;
``Decision.raw_score`` the raw image score the threshold applies to."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Optional, Sequence, Union

import numpy as np
from aaclip.contract.score import ScoreParams, image_score, operator_score

# Decision states written to the event log.
NORMAL = "normal"
ANOMALOUS = "anomalous"  # at or above the threshold, debounce not yet satisfied
ALARM = "alarm"          # at or above the threshold for at least N consecutive frames


class Debouncer:
    """An alarm fires only after ``n`` consecutive anomalous frames, and lasts while they continue. ``n`` may
    change between two frames (a reload): a running alarm goes on, a streak counts against the new ``n``."""

    def __init__(self, n: int = 1):
        if n < 1:
            raise ValueError(f"debounce must be >= 1, got {n}")
        self.n = n
        self.streak = 0
        self.alarms = 0  # number of alarm onsets (rising edges)
        self.in_alarm = False
        self.onset = False  # True on the frame where the current alarm started

    def update(self, anomalous: bool) -> str:
        """Feed one frame's raw decision; returns NORMAL, ANOMALOUS (not yet debounced) or ALARM."""
        self.onset = False
        if not anomalous:
            self.streak = 0
            self.in_alarm = False
            return NORMAL
        self.streak += 1
        if not self.in_alarm and self.streak < self.n:
            return ANOMALOUS
        if not self.in_alarm:
            self.in_alarm = self.onset = True
            self.alarms += 1
        return ALARM


@dataclass
class Decision:
    """What the loop decided about one frame. ``evidence`` is filled by the evidence sink when it saved one."""

    source: str
    source_index: int
    frame: int            # index of the frame in its source (dropped frames counted)
    class_name: str
    score: float          # shown to people: [0, 1], the threshold at 0.5 (contract.score.operator_score)
    state: str            # NORMAL, ANOMALOUS or ALARM
    onset: bool           # first frame of an alarm
    map_max: float
    cls_score: float
    threshold: float
    wall_time: float      # time.time() at capture
    latency_s: float      # capture -> decision
    run_id: str = ""      # the loop run this decision belongs to (events of several runs share a file)
    evidence: Optional[str] = None
    inference_s: float = 0.0  # the backend call that scored this frame (its whole batch)
    file: Optional[str] = None  # the image file of a frame read from a folder (relative to the folder)
    calibrated: bool = True     # False: the threshold is the export default or set by hand (--threshold)
    raw_score: float = float("nan")  # the image score the raw threshold applies to (engineers, metrics)

    @property
    def anomalous(self) -> bool:
        return self.state != NORMAL

    @property
    def alarm(self) -> bool:
        return self.state == ALARM

    def event(self) -> dict[str, Any]:
        """The event-log line (strict JSON: a non-finite model output is written as null)."""
        return {
            "timestamp": datetime.fromtimestamp(self.wall_time, timezone.utc).isoformat(timespec="milliseconds"),
            "source": self.source, "frame": self.frame, "class": self.class_name,
            "score": _finite(self.score, 6), "raw_score": _finite(self.raw_score, 6), "decision": self.state,
            "anomalous": self.anomalous,
            "alarm": self.alarm, "onset": self.onset, "map_max": _finite(self.map_max, 6), "cls_score": _finite(self.cls_score, 6),
            "threshold": _finite(self.threshold), "latency_ms": round(self.latency_s * 1e3, 3),
            "evidence": self.evidence, "run": self.run_id, "file": self.file, "calibrated": self.calibrated,
        }


def encode_event(event: dict[str, Any]) -> str:
    """One event as compact strict JSON: the event-log line, the MQTT payload and the webhook body."""
    return json.dumps(event, separators=(",", ":"), allow_nan=False)


def _finite(value: float, digits: Optional[int] = None) -> Optional[float]:
    if not math.isfinite(value):
        return None
    return float(value) if digits is None else round(float(value), digits)


class Decider:
    """Scores a batch and keeps one debouncer per source. ``params``, ``debounce`` and ``calibrated`` are one
    value for every source or one per source (cameras of several artifacts, per-camera thresholds);
    ``set_source`` changes a source's between two frames (a reload)."""

    def __init__(self, params: Union[ScoreParams, Sequence[ScoreParams]], n_sources: int,
                 debounce: Union[int, Sequence[int]] = 1, run_id: str = "",
                 calibrated: Union[bool, Sequence[bool]] = True):
        self.run_id = run_id
        self.source_params = _per_source(params, n_sources, ScoreParams)
        # calibrated: the threshold in use was fitted by aaclip-calibrate (not the export default, not by hand)
        self.source_calibrated = _per_source(calibrated, n_sources, bool)
        self.debouncers = [Debouncer(n) for n in _per_source(debounce, n_sources, int)]

    @property
    def params(self) -> ScoreParams:
        """The first source's score parameters (all sources' when they share one artifact and threshold)."""
        return self.source_params[0]

    @params.setter
    def params(self, params: ScoreParams) -> None:
        self.source_params = [params] * len(self.source_params)

    @property
    def calibrated(self) -> bool:
        return all(self.source_calibrated)

    @calibrated.setter
    def calibrated(self, value: bool) -> None:
        self.source_calibrated = [value] * len(self.source_calibrated)

    def set_source(self, index: int, params: ScoreParams, debounce: int, calibrated: bool) -> None:
        self.source_params[index] = params
        self.debouncers[index].n = debounce
        self.source_calibrated[index] = calibrated

    @property
    def alarms(self) -> int:
        return sum(d.alarms for d in self.debouncers)

    def decide(self, frames: Sequence, class_names: Sequence[str], scores: dict[str, np.ndarray],
               t_done: float, inference_s: float = 0.0) -> list[Decision]:
        """One decision per captured frame of the batch (``scores``: the runner's map_max and cls_score;
        ``inference_s``: how long the backend call took)."""
        map_max, cls_score = scores["map_max"], scores["cls_score"]
        raws, shown = self._scores(frames, map_max, cls_score)
        out = []
        for i, f in enumerate(frames):
            params = self.source_params[f.source_index]
            raw = float(raws[i])
            debouncer = self.debouncers[f.source_index]
            # NaN never reaches the threshold: a broken output is reported as normal with a null score
            state = debouncer.update(bool(raw >= params.threshold))
            out.append(Decision(
                source=f.source_name, source_index=f.source_index, frame=f.index, class_name=class_names[i],
                score=float(shown[i]), raw_score=raw, state=state,
                onset=state == ALARM and debouncer.onset, map_max=float(map_max[i]),
                cls_score=float(cls_score[i]), threshold=params.threshold, wall_time=f.wall_time,
                latency_s=t_done - f.t_capture, inference_s=inference_s, run_id=self.run_id, file=f.file,
                calibrated=self.source_calibrated[f.source_index]))
        return out

    def _scores(self, frames: Sequence[Any], map_max: np.ndarray, cls_score: np.ndarray):
        """Raw and shown scores of a batch, one vectorized call per distinct score parameters (one, unless the
        batch mixes sources of other thresholds)."""
        raws = np.empty(len(frames), dtype=np.float64)
        shown = np.empty(len(frames), dtype=np.float64)
        groups: dict[ScoreParams, list[int]] = {}  # frozen: equal parameters are one group
        for i, f in enumerate(frames):
            groups.setdefault(self.source_params[f.source_index], []).append(i)
        for params, rows in groups.items():
            raws[rows] = image_score(map_max[rows], cls_score[rows], params)
            shown[rows] = operator_score(raws[rows], params.threshold)
        return raws, shown


def _per_source(value, n: int, kind) -> list:
    if isinstance(value, kind):
        return [value] * n
    values = list(value)
    if len(values) != n:
        raise ValueError(f"{len(values)} values for {n} sources")
    return values
