"""Per-frame decisions: a frame's image score against the threshold, debounced into alarms."""
from __future__ import annotations

# Decision names written to the event log.
NORMAL = "normal"
ANOMALOUS = "anomalous"  # above threshold, debounce not yet satisfied
ALARM = "alarm"          # above threshold for at least N consecutive frames


class Debouncer:
    """An alarm fires only after ``n`` consecutive anomalous frames, and lasts while they continue."""

    def __init__(self, n: int = 1):
        if n < 1:
            raise ValueError(f"debounce must be >= 1, got {n}")
        self.n = n
        self.streak = 0
        self.alarms = 0  # number of alarm onsets (rising edges)

    def update(self, anomalous: bool) -> str:
        """Feed one frame's raw decision; returns NORMAL, ANOMALOUS (not yet debounced) or ALARM."""
        if not anomalous:
            self.streak = 0
            return NORMAL
        self.streak += 1
        if self.streak < self.n:
            return ANOMALOUS
        if self.streak == self.n:
            self.alarms += 1
        return ALARM

    @property
    def onset(self) -> bool:
        """True on the frame where the current alarm started."""
        return self.streak == self.n
