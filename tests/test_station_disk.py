"""Bounded disk: events rotate by size with a fixed number of files kept (every decision, or alarms plus a
summary per camera and period), evidence is kept by count, bytes and age; the 30-day benchmark's budget."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from aaclip.runtime.decide import ALARM, NORMAL, Decision
from aaclip.runtime.sinks import EventLog, EvidenceWriter


def decision(source_index: int, frame: int, t: float, state: str = NORMAL, onset: bool = False,
             score: float = 0.2) -> Decision:
    return Decision(source=f"cam{source_index}", source_index=source_index, frame=frame, class_name="plate",
                    score=score, state=state, onset=onset, map_max=0.3, cls_score=0.1, threshold=0.5, wall_time=t,
                    latency_s=0.01, run_id="r1")


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_events_rotate_by_size_and_keep_the_newest(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=4096, keep=2)
    for i in range(400):
        log.write({"frame": i, "pad": "x" * 60})
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["events.jsonl", "events.jsonl.1", "events.jsonl.2"]
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir())
    kept = lines(path.with_name("events.jsonl.2")) + lines(path.with_name("events.jsonl.1")) + lines(path)
    frames = [e["frame"] for e in kept]
    assert frames == list(range(frames[0], 400))  # whole lines, the newest, in order, none twice
    per_file = 4096 // len(json.dumps({"frame": 100, "pad": "x" * 60}, separators=(",", ":")).encode() + b"\n")
    assert len(frames) > 2 * per_file and log.rotations == 400 // per_file - (400 % per_file == 0)


def test_events_keep_zero_starts_the_file_again(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path, max_bytes=4096, keep=0)
    for i in range(200):
        log.write({"frame": i, "pad": "x" * 60})
    log.close()
    assert [p.name for p in tmp_path.iterdir()] == ["events.jsonl"] and path.stat().st_size <= 4096
    assert lines(path)[-1]["frame"] == 199


def test_a_restart_continues_the_size_count(tmp_path):
    path = tmp_path / "events.jsonl"
    for run in range(3):
        log = EventLog(path, max_bytes=4096, keep=5)
        for i in range(30):
            log.write({"run": run, "frame": i, "pad": "x" * 60})
        log.close()
    assert all(p.stat().st_size <= 4096 for p in tmp_path.iterdir()) and len(list(tmp_path.iterdir())) == 2


def test_alarms_mode_writes_alarm_frames_and_a_summary_per_camera_and_period(tmp_path):
    path = tmp_path / "events.jsonl"
    log = EventLog(path, mode="alarms", summary_every=60.0)
    fps, seconds = 30, 200
    alarm_frames = {0: set(range(900, 930)) | {4000}, 1: set(range(3000, 3003))}  # cam0: 30 + 1, cam1: 3
    for frame in range(fps * seconds):
        t = 1_700_000_000.0 + frame / fps
        for cam in (0, 1):
            state = ALARM if frame in alarm_frames[cam] else NORMAL
            onset = state == ALARM and frame - 1 not in alarm_frames[cam]
            log.emit(decision(cam, frame, t, state, onset, score=0.9 if state == ALARM else 0.1 + (frame % 7) / 100),
                     None)
    log.close()
    ev = lines(path)
    alarms = [e for e in ev if e.get("type") != "summary"]
    assert sorted((e["source"], e["frame"]) for e in alarms) == sorted(
        (f"cam{c}", f) for c, fs in alarm_frames.items() for f in fs)
    summaries = [e for e in ev if e.get("type") == "summary"]
    for cam in (0, 1):
        mine = [s for s in summaries if s["source"] == f"cam{cam}"]
        assert [s["frames"] for s in mine] == [1800, 1800, 1800, 600]  # 60 s periods; the last one at close
        assert sum(s["alarms"] for s in mine) == (2 if cam == 0 else 1)
        assert sum(s["alarm_frames"] for s in mine) == len(alarm_frames[cam])
    first = next(s for s in summaries if s["source"] == "cam0")
    assert first["score_max"] == 0.9 and first["from"].startswith("2023-11-14T22:13:20")
    assert path.stat().st_size < 15_000  # 12,000 decisions, 34 alarm lines and 8 summaries


def test_evidence_kept_by_count_bytes_and_age(tmp_path):
    now = [time.time()]  # the images' mtimes and the writer's clock agree, as on a station
    folder = tmp_path / "evidence"
    folder.mkdir()
    old = folder / "old_00000001_0.900.png"  # an earlier run's image, 100 days old
    old.write_bytes(b"x" * 1000)
    os.utime(old, (now[0] - 100 * 86400, now[0] - 100 * 86400))
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    w = EvidenceWriter(folder, "png", max_files=5, max_bytes=None, max_age_days=90, clock=lambda: now[0])
    assert not old.exists()  # older than 90 days: gone at start
    for i in range(8):
        w.save(image, "cam", i, 0.9)
    assert sorted(p.name for p in folder.iterdir()) == [f"cam_{i:08d}_0.900.png" for i in range(3, 8)]
    size = (folder / "cam_00000007_0.900.png").stat().st_size
    w = EvidenceWriter(folder, "png", max_files=100, max_bytes=3 * size + size // 2, max_age_days=90,
                       clock=lambda: now[0])
    assert len(list(folder.iterdir())) == 3 and w.bytes <= 3 * size + size // 2  # the byte cap at start
    now[0] += 91 * 86400
    w.tick(0.0)
    assert list(folder.iterdir()) == [] and w.bytes == 0  # aged out without a new alarm
    assert w.save(image, "cam", 99, 0.9).exists() and w.rotated == 2 + 3  # 2 by bytes at start, 3 by age


def test_evidence_written_twice_under_one_name_counts_once(tmp_path):
    image = np.zeros((32, 32, 3), np.uint8)
    w = EvidenceWriter(tmp_path, "png", max_files=10, max_bytes=None, max_age_days=None)
    w.save(image, "cam", 1, 0.9)
    w.save(image, "cam", 1, 0.9)
    assert len(w._kept) == 1 and w.bytes == (tmp_path / "cam_00000001_0.900.png").stat().st_size


@pytest.mark.parametrize("mode, days", [("alarms", 1.0), ("decisions", 0.25)])
def test_compressed_station_stays_within_its_budget(tmp_path, mode, days):
    """The benchmark's simulation, shortened (2 cameras at 1 frame/s): real files, a fake clock, the station's
    defaults except smaller caps; the disk used never passes the stated budget."""
    from aaclip.benchmarks.station_disk import DiskRun, budget_bytes, simulate

    run = DiskRun(days=days, cameras=2, fps=1.0, mode=mode, events_max_bytes=64 * 1024, events_keep=2,
                  evidence_max_bytes=2 << 20, evidence_max_files=400, alarm_every_s=600.0)
    result = simulate(run, tmp_path)
    assert result["frames"] == 2 * 86400 * days
    assert result["alarms"] == 2 * int(days * 86400 / 600)
    assert 0 < result["peak_bytes"] <= budget_bytes(run) and result["final_bytes"] <= budget_bytes(run)
    assert result["evidence_files"] <= run.evidence_max_files
    if mode == "decisions":  # every decision: the rotation is what holds it
        assert result["events_rotations"] > 10 and result["events_bytes"] <= 3 * 64 * 1024
    else:  # alarm frames and one summary a minute per camera fit without rotating much
        assert result["summaries"] == 2 * days * 24 * 60
        assert result["evidence_deleted"] > 0 and result["evidence_files"] <= 400  # the count cap held


def test_video_is_finished_at_its_size_cap(tmp_path):
    from aaclip.runtime.overlay import View
    from aaclip.runtime.sinks import AnnotatedVideo

    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (120, 160, 3), dtype=np.uint8) for _ in range(4)]
    video = AnnotatedVideo(tmp_path / "out.avi", [10.0], max_bytes=300_000)
    for i in range(400):
        video.emit(decision(0, i, float(i)), View(frames[i % 4], frames[i % 4]))
    assert video.videos == [None]  # finished: the camera's later frames were not written
    video.close()
    size = (tmp_path / "out.avi").stat().st_size
    assert 300_000 <= size < 300_000 + 31 * 60_000 and [p.name for p in tmp_path.iterdir()] == ["out.avi"]
    import cv2

    cap = cv2.VideoCapture(str(tmp_path / "out.avi"))
    assert 0 < int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) < 400
