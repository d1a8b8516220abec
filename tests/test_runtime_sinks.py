"""Outputs: stats line numbers, event log appending, atomic evidence and video files."""
import json
import re

import cv2
import numpy as np
import pytest
from aaclip.contract.score import ScoreParams
from aaclip.runtime.overlay import heat_overlay
from aaclip.runtime.sinks import EventLog, EvidenceWriter, LatencyHistogram, StatsReporter, VideoSink, slug, video_paths


def test_stats_line_known_numbers():
    stats = StatsReporter(every_s=2.0, start=100.0)
    for ms in (10, 20, 30, 40):
        stats.record(ms / 1e3)
    assert stats.maybe_report(101.0, captured=10, dropped=6, unreadable=0, reconnects=0) is None  # too early
    line = stats.maybe_report(102.0, captured=10, dropped=6, unreadable=1, reconnects=2)
    m = re.fullmatch(r"capture 5.0 fps \| infer 2.0 fps \| dropped 6 \| unreadable 1 \| reconnects 2 \| "
                     r"latency p50 ([\d.]+) ms p95 ([\d.]+) ms", line)
    assert m and float(m[1]) == pytest.approx(20.0, rel=0.012) and float(m[2]) == pytest.approx(40.0, rel=0.012)
    # an interval without frames (a stalled camera) still reports, at 0 fps and no latency
    assert stats.maybe_report(104.0, captured=10, dropped=6, unreadable=1, reconnects=2).startswith(
        "capture 0.0 fps | infer 0.0 fps")


def test_latency_percentiles_cover_the_whole_run():
    """Not a window of the last frames: 10,000 fast frames after 10,000 slow ones keep p95 slow."""
    stats = StatsReporter(every_s=1.0)
    for i in range(20000):
        stats.record(0.200 if i < 10000 else 0.010)
        if i % 3000 == 0:
            stats.maybe_report(float(i), captured=i, dropped=0, unreadable=0, reconnects=0)
    p50, p95 = stats.percentiles_ms()
    assert p50 == pytest.approx(10.0, rel=0.012) and p95 == pytest.approx(200.0, rel=0.012)
    values = np.random.default_rng(0).lognormal(np.log(0.03), 0.5, 5000)
    h = LatencyHistogram()
    for v in values:
        h.add(float(v))
    for q in (50, 95, 99):
        exact = np.sort(values)[int(np.ceil(q / 100 * values.size)) - 1]
        assert h.percentile_s(q) == pytest.approx(exact, rel=0.012)


def test_event_log_appends_whole_lines(tmp_path):
    path = tmp_path / "ev.jsonl"
    for run in range(2):
        log = EventLog(path)
        log.write({"frame": run, "score": 0.5})
        assert path.read_text().endswith("\n")  # flushed per line, before close
        log.close()
    assert [json.loads(x)["frame"] for x in path.read_text().splitlines()] == [0, 1]


def test_evidence_atomic_and_failure_leaves_nothing(tmp_path):
    w = EvidenceWriter(tmp_path / "ev", "jpg")
    p = w.save(np.zeros((8, 8, 3), np.uint8), "rtsp://cam/1", 42, 0.73456)
    assert p.name == "rtsp_cam_1_00000042_0.735.jpg" and p.read_bytes()[:2] == b"\xff\xd8"
    assert w.save(np.zeros((0, 0, 3), np.uint8), "cam", 1, 0.9) is None  # cv2 refuses an empty image
    assert (w.count, w.failures) == (1, 1)
    assert [x.name for x in (tmp_path / "ev").iterdir()] == [p.name]


def test_video_sink_renamed_into_place_on_close(tmp_path):
    path = tmp_path / "out.avi"
    sink = VideoSink(path, fps=5)
    for i in range(3):
        sink.write(np.full((32, 48, 3), i * 40, np.uint8))
    assert not path.exists() and len(list(tmp_path.iterdir())) == 1  # still a temp file
    sink.close()
    cap = cv2.VideoCapture(str(path))
    assert cap.get(cv2.CAP_PROP_FRAME_COUNT) == 3 and cap.get(cv2.CAP_PROP_FRAME_WIDTH) == 48
    assert [x.name for x in tmp_path.iterdir()] == ["out.avi"]
    assert video_paths(path, 1) == [path] and video_paths(path, 2) == [tmp_path / "out_0.avi", tmp_path / "out_1.avi"]
    assert slug("../x y") == "x_y"


def test_heat_overlay_marks_hot_pixels():
    p = ScoreParams(0.0, 1.0, 0.0, 1.0, 0.5, 0.5, pixel_threshold=0.5)
    frame = np.full((64, 64, 3), 128, np.uint8)
    amap = np.zeros((32, 32), np.float32)
    amap[8:16, 8:16] = 1.0
    out = heat_overlay(frame, amap, p, alpha=0.5)
    assert out.shape == frame.shape and frame.max() == 128  # new image, frame untouched
    hot, cold = out[24, 24], out[56, 56]  # map is upsampled x2: hot square at 16..32
    assert hot[2] > hot[0] and cold[0] > cold[2]  # red where anomalous, blue where normal (BGR)


def test_atomic_files_get_umask_permissions(tmp_path):
    import os
    import stat

    from aaclip.contract.files import atomic_write_text

    old = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "x.json", "{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]
