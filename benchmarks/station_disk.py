"""The disk a station uses over months: days of a multi-camera station compressed into minutes, with a fake clock
and real files.

    python -m aaclip.benchmarks.station_disk --days 30 --cameras 4 --fps 30 --mode alarms --out disk.json

Every frame of every camera is one ``Decision`` handed to the station's real ``EventLog`` and
``EvidenceWriter`` (the station file's defaults unless overridden), writing real files into a temporary
folder; only the clock is fake: frame ``i`` of a camera is captured at ``start + i / fps``, and the evidence
writer's age cap reads the same clock. Each camera has an alarm every ``--alarm-every`` seconds lasting
``--alarm-frames`` frames (each alarm frame writes an evidence image of ``--evidence-size``, as the loop does).
The folder's size (the sum of its files' sizes) is taken after every simulated hour; the run reports the peak,
the bytes written per camera and day, and whether the peak stayed within ``budget_bytes`` (events:
``max_bytes * (keep + 1)``, evidence: ``max_bytes``).

No model runs: the decisions' scores do not change what is written, their number and their states do.
"""
from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from aaclip.runtime.decide import ALARM, NORMAL, Decision
from aaclip.runtime.overlay import View
from aaclip.runtime.sinks import EventLog, EvidenceWriter
from aaclip.runtime.station.outputs import EventsOutput, EvidenceOutput

log = logging.getLogger(__name__)

_EVENTS, _EVIDENCE = EventsOutput(), EvidenceOutput()
START = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@dataclass
class DiskRun:
    """One simulated station (defaults: the station file's outputs, a 4-camera line at 30 frames/s)."""

    days: float = 30.0
    cameras: int = 4
    fps: float = 30.0
    mode: str = _EVENTS.mode
    events_max_bytes: int = _EVENTS.max_bytes
    events_keep: int = _EVENTS.keep
    summary_every: float = _EVENTS.summary_every
    evidence_max_files: int = _EVIDENCE.max_files
    evidence_max_bytes: int = _EVIDENCE.max_bytes
    evidence_max_age_days: float = _EVIDENCE.max_age_days
    alarm_every_s: float = 600.0     # one alarm per camera every 10 minutes
    alarm_frames: int = 3            # frames in the alarm state per alarm (each writes evidence)
    evidence_size: tuple[int, int] = (240, 640)  # height, width of an evidence image (frame | overlay)


def budget_bytes(run: DiskRun) -> int:
    """The most the station's files may hold: every event file at its cap, the evidence folder at its cap."""
    return run.events_max_bytes * (run.events_keep + 1) + run.evidence_max_bytes


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _evidence_image(size: tuple[int, int]) -> np.ndarray:
    """A textured frame | overlay pair (a flat image would compress to nothing and flatter the budget)."""
    h, w = size
    rng = np.random.default_rng(0)
    base = rng.integers(90, 200, (h, w, 3), dtype=np.uint8)
    return np.ascontiguousarray(base)


def simulate(run: DiskRun, folder: Path, progress_every_days: float = 1.0) -> dict[str, Any]:
    """Run the compressed station in ``folder``; returns its figures (see the module docstring)."""
    folder = Path(folder)
    now = [START]
    events = EventLog(folder / "events.jsonl", run.mode, run.events_max_bytes, run.events_keep, run.summary_every)
    evidence = EvidenceWriter(folder / "evidence", "jpg", max_files=run.evidence_max_files,
                              max_bytes=run.evidence_max_bytes, max_age_days=run.evidence_max_age_days,
                              clock=lambda: now[0])
    image = _evidence_image(run.evidence_size)
    view = View(frame=image[:, : image.shape[1] // 2], overlay=image[:, image.shape[1] // 2:])
    decisions = [Decision(source=f"camera{c}", source_index=c, frame=0, class_name="plate", score=0.21,
                          state=NORMAL, onset=False, map_max=0.3, cls_score=0.12, threshold=0.5, wall_time=START,
                          latency_s=0.012, run_id="simulated") for c in range(run.cameras)]
    n_frames = int(round(run.days * 86400 * run.fps))
    alarm_period = max(1, int(round(run.alarm_every_s * run.fps)))
    hour_frames = max(1, int(round(3600 * run.fps)))
    peak, samples, alarms, t0 = 0, [], 0, time.perf_counter()
    next_progress = progress_every_days
    emit_events, emit_evidence = events.emit, evidence.emit
    # camera c's alarms start c seconds into each alarm period (cameras do not alarm on the same frame)
    offsets = [(c * int(run.fps)) % alarm_period for c in range(run.cameras)]
    cams = list(zip(decisions, offsets))
    for i in range(n_frames):
        t = START + i / run.fps
        now[0] = t
        phase = i % alarm_period
        for d, offset in cams:
            d.frame = i
            d.wall_time = t
            k = phase - offset
            if 0 <= k < run.alarm_frames:
                d.state, d.onset, d.score, d.evidence = ALARM, k == 0, 0.93, None
                alarms += k == 0
                emit_evidence(d, view)
                emit_events(d, view)
                d.state, d.onset, d.score, d.evidence = NORMAL, False, 0.21, None
            else:
                emit_evidence(d, None)
                emit_events(d, None)
        if (i + 1) % hour_frames == 0:
            evidence.tick(0.0)
            size = folder_bytes(folder)
            peak = max(peak, size)
            samples.append(size)
            if (i + 1) / (86400 * run.fps) >= next_progress:
                log.info("day %.0f of %.0f: %.1f MB on disk (peak %.1f MB), %.0f s", next_progress, run.days,
                         size / 1e6, peak / 1e6, time.perf_counter() - t0)
                next_progress += progress_every_days
    events.close()
    final = folder_bytes(folder)
    peak = max(peak, final)
    return {
        "run": asdict(run), "frames": n_frames * run.cameras, "alarms": alarms,
        "peak_bytes": peak, "final_bytes": final, "budget_bytes": budget_bytes(run),
        "within_budget": peak <= budget_bytes(run),
        "events_bytes": sum(p.stat().st_size for p in events.files()), "events_rotations": events.rotations,
        "events_lines_written": events.count, "summaries": events.summaries,
        "events_bytes_written_per_camera_day": events.bytes_written / run.cameras / run.days,
        "evidence_files": len(list((folder / "evidence").glob("*.jpg"))), "evidence_bytes": evidence.bytes,
        "evidence_written": evidence.count, "evidence_deleted": evidence.rotated,
        "evidence_bytes_per_image": evidence.bytes / max(1, len(evidence._kept)),
        "hourly_bytes_max_last_day": max(samples[-24:]) if samples else final,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    d = DiskRun()
    parser.add_argument("--days", type=float, default=d.days)
    parser.add_argument("--cameras", type=int, default=d.cameras)
    parser.add_argument("--fps", type=float, default=d.fps)
    parser.add_argument("--mode", choices=("decisions", "alarms"), default=d.mode)
    parser.add_argument("--alarm-every", type=float, default=d.alarm_every_s, help="seconds between alarms")
    parser.add_argument("--alarm-frames", type=int, default=d.alarm_frames)
    parser.add_argument("--dir", type=Path, default=None, help="where the files go [default: a temporary folder]")
    parser.add_argument("--out", type=Path, default=None, help="write the figures here as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    run = DiskRun(days=args.days, cameras=args.cameras, fps=args.fps, mode=args.mode, alarm_every_s=args.alarm_every,
                  alarm_frames=args.alarm_frames)
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        result = simulate(run, Path(tmp))
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if result["within_budget"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
