"""``/metrics`` in the Prometheus text format (prometheus_client, the ``metrics`` extra; imported lazily).

Everything is read at scrape time by a collector: the counters the loop and the capture threads already
keep (frames inspected, dropped, alarms, reconnects, sink failures), so they equal the run's summary, and
the latency histograms' bucket counts the monitor fills (``monitor.BucketCounts``, about a microsecond per
frame; prometheus_client's own ``Histogram`` takes a lock per bucket and costs several).
Names follow the Prometheus conventions: the ``aaclip_`` prefix, base units, ``_total`` counters, a
``camera`` label; the model is described once by ``aaclip_model_info``.
"""
from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Iterator, Optional

if TYPE_CHECKING:
    from .monitor import LineMonitor

log = logging.getLogger(__name__)

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
    """A registry holding the collector of ``monitor``'s numbers, and their text exposition."""

    def __init__(self, monitor: "LineMonitor"):
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry

        self.content_type = CONTENT_TYPE_LATEST
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Collector(monitor))

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
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
            InfoMetricFamily,
        )

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
        latency = HistogramMetricFamily("aaclip_latency_seconds", "Capture of a frame to its decision (end to end).",
                                        labels=["camera"])
        inference = HistogramMetricFamily("aaclip_inference_seconds", "The backend call that scored a frame (per "
                                          "frame; a batch's call counts once for each of its frames).",
                                          labels=["camera"])
        score = GaugeMetricFamily("aaclip_score", "The camera's last score on the operator scale [0, 1]; alarm at "
                                  ">= 0.5.", labels=["camera"])
        raw = GaugeMetricFamily("aaclip_raw_score", "The camera's last raw image score (compared with "
                                "aaclip_score_threshold).", labels=["camera"])
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
                raw.add_metric([cam.label], last.raw_score)
            age.add_metric([cam.label], now - cam.last_t)
            with cam.cond:
                for family, counts in ((latency, cam.latency_buckets), (inference, cam.inference_buckets)):
                    family.add_metric([cam.label], counts.cumulative(), counts.sum)
        yield from counters.values()
        yield latency
        yield inference
        yield score
        yield raw
        yield age
        yield GaugeMetricFamily("aaclip_score_threshold",
                                "The raw image-score threshold in use (0.5 on the operator scale).",
                                value=m.context.params.threshold)
        failures = CounterMetricFamily("aaclip_sink_failures", "Writes or messages a sink could not deliver.",
                                       labels=["sink"])
        for sink in m.context.sinks:
            failures.add_metric([sink.name], sink.failures)
        yield failures
        if m.reviews is not None:
            # a gauge: an operator's undo takes a verdict back, so the numbers may go down
            reviews = GaugeMetricFamily("aaclip_reviewed_frames", "Frames operators reviewed on the line view, by "
                                        "standing verdict (confirmed, false_alarm, missed).",
                                        labels=["camera", "verdict"])
            counts_by_camera = {cam.name: dict.fromkeys(("confirmed", "false_alarm", "missed"), 0) for cam in m.cameras}
            counts_by_camera.update(m.reviews.counts())
            for camera, counts in counts_by_camera.items():
                for verdict, n in counts.items():
                    reviews.add_metric([camera, verdict], n)
            yield reviews
        info = InfoMetricFamily("aaclip_model", "The model the runtime runs.")
        info.add_metric([], {k: _label(m.identity[k]) for k in MODEL_LABELS})
        yield info


MODEL_LABELS = ("artifact", "method", "precision", "format", "backend", "sha256", "calibrated", "calibration_date")


def _label(value) -> str:
    if value is None:
        return ""
    return str(value).lower() if isinstance(value, bool) else str(value)
