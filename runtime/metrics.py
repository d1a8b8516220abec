"""``/metrics`` in the Prometheus text format (prometheus_client, the ``metrics`` extra; imported lazily).

Counters the loop and the capture threads already keep (frames inspected, dropped, alarms, reconnects,
sink failures) are read at scrape time by a collector, so the loop pays nothing for them and they equal
the run's summary. Latencies are prometheus_client histograms observed per frame on the loop's thread.
Names follow the Prometheus conventions: the ``aaclip_`` prefix, base units, ``_total`` counters, a
``camera`` label; the model is described once by ``aaclip_model_info``.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Iterator, Optional

if TYPE_CHECKING:
    from .decide import Decision
    from .monitor import LineMonitor

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0)
INSTALL_HINT = "pip install 'aaclip-edge[metrics]'"


def open_metrics(monitor: "LineMonitor") -> Optional["LineMetrics"]:
    """The metrics of ``monitor``, or None (logged) when prometheus_client is not installed."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        log.warning("/metrics is off: prometheus_client is not installed (%s)", INSTALL_HINT)
        return None
    return LineMetrics(monitor)


class LineMetrics:
    """A registry with the latency histograms and a collector for the monitor's counters."""

    def __init__(self, monitor: "LineMonitor"):
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram

        self.content_type = CONTENT_TYPE_LATEST
        self.registry = CollectorRegistry(auto_describe=True)
        self.latency = Histogram("aaclip_latency_seconds", "Capture of a frame to its decision (end to end).",
                                 ["camera"], buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.inference = Histogram("aaclip_inference_seconds", "The backend call that scored a frame (per frame; "
                                   "a batch's call counts once for each of its frames).", ["camera"],
                                   buckets=LATENCY_BUCKETS_S, registry=self.registry)
        self.registry.register(_Collector(monitor))
        self._children: list = []

    def start(self, camera_labels: list[str]) -> None:
        self._children = [(self.latency.labels(c), self.inference.labels(c)) for c in camera_labels]

    def observe(self, decision: "Decision") -> None:
        latency, inference = self._children[decision.source_index]
        latency.observe(decision.latency_s)
        inference.observe(decision.inference_s)

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _Collector:
    """Reads the monitor's, the capture's and the sinks' counters when scraped."""

    def __init__(self, monitor: "LineMonitor"):
        self.monitor = monitor

    def describe(self) -> list:
        return []  # unknown until the loop starts: no up-front description

    def collect(self) -> Iterator:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, InfoMetricFamily

        m = self.monitor
        if not m.started.is_set():
            return
        counters = {
            "inspected": CounterMetricFamily("aaclip_frames_inspected", "Frames scored by the model.",
                                             labels=["camera"]),
            "anomalous": CounterMetricFamily("aaclip_frames_anomalous", "Frames at or above the threshold.",
                                             labels=["camera"]),
            "alarm_frames": CounterMetricFamily("aaclip_alarm_frames", "Frames in the alarm state (debounced).",
                                                labels=["camera"]),
            "alarms": CounterMetricFamily("aaclip_alarms", "Alarms (onsets after the debounce).", labels=["camera"]),
            "captured": CounterMetricFamily("aaclip_frames_captured", "Frames read from the camera.",
                                            labels=["camera"]),
            "dropped": CounterMetricFamily("aaclip_frames_dropped", "Frames replaced by a newer one before the "
                                           "model took them (live mode).", labels=["camera"]),
            "unreadable": CounterMetricFamily("aaclip_frames_unreadable", "Unreadable frames skipped.",
                                              labels=["camera"]),
            "reconnects": CounterMetricFamily("aaclip_source_reconnects", "Reconnections of the camera.",
                                              labels=["camera"]),
        }
        score = GaugeMetricFamily("aaclip_score", "The camera's last image score.", labels=["camera"])
        age = GaugeMetricFamily("aaclip_last_frame_age_seconds", "Seconds since the camera's last decided frame.",
                                labels=["camera"])
        now = time.perf_counter()
        for cam in m.cameras:
            values = m.counters(cam)
            for key, family in counters.items():
                family.add_metric([cam.label], values[key])
            last = cam.last
            if last is not None:
                score.add_metric([cam.label], last.score)
            age.add_metric([cam.label], now - cam.last_t)
        yield from counters.values()
        yield score
        yield age
        yield GaugeMetricFamily("aaclip_score_threshold", "The image-score threshold in use.",
                                value=m.context.params.threshold)
        failures = CounterMetricFamily("aaclip_sink_failures", "Writes or messages a sink could not deliver.",
                                       labels=["sink"])
        for sink in m.context.sinks:
            failures.add_metric([sink.name], sink.failures)
        yield failures
        info = InfoMetricFamily("aaclip_model", "The model the runtime runs.")
        info.add_metric([], {k: _label(m.identity[k]) for k in MODEL_LABELS})
        yield info


MODEL_LABELS = ("artifact", "method", "precision", "format", "backend", "sha256", "calibrated", "calibration_date")


def _label(value) -> str:
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)
