"""What the line outputs cost the camera loop: throughput with the web view open in a browser, with MQTT
on, with both, and with both off, on the same video, interleaved in one run.

    python -m aaclip.benchmarks.sink_overhead --reps 7 --out bench-sinks

Every run is the runtime's own ``CameraLoop`` (the ``loop_timing`` wrappers read the clock) in offline
no-drop mode on the same MJPG video, as fast as it goes, with an event log; the configurations add:

- ``web-idle``: ``--http`` with nobody watching (anomaly maps fetched, nothing rendered);
- ``web``: ``--http`` with the page open in headless Chromium (the stream watched: views rendered at
  ``--view-fps`` and encoded on the loop's thread; the browser runs on the same machine);
- ``mqtt``: ``--mqtt`` to a local Mosquitto (no subscriber): one QoS 1 message per alarm;
- ``mqtt-decisions``: ``--mqtt ...?decisions=1``: also one QoS 0 message per frame, the heaviest setting;
- ``web+mqtt``: the web view watched in the browser and MQTT alarms together.

So that alarms happen, the runs use the threshold that makes ``--alarm-fraction`` of the video's frames
anomalous (from an untimed first pass), unless ``--threshold`` is given.

Repetitions interleave the configurations (round robin, the order rotated each repetition), so slow
drifts of a shared machine hit every configuration alike. Each run's throughput is frames over the
wall time after ``--warmup`` frames; the ratio to ``off`` is taken within a repetition, and the table
reports medians. Overhead = 1 - median ratio (target: under 5%).
"""
from __future__ import annotations

import getpass
import json
import logging
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

import click
from aaclip.contract.cli import Command, setup_logging
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import Manifest, open_artifact
from aaclip.runtime.backends import RunnerOptions, open_runner
from aaclip.runtime.backends.base import Runner
from aaclip.runtime.loop import LoopConfig
from aaclip.runtime.sinks import EventLog, Sink
from aaclip.runtime.sources import Source, open_source

from .loop_timing import TimedLoop, TimedRunner, TimedSource, steady_state

log = logging.getLogger(__name__)

CONFIGS = ("off", "web-idle", "web", "mqtt", "mqtt-decisions", "web+mqtt")
DISTINCT_FRAMES = 100  # the video cycles through this many different frames
WATCHED = ("web", "web+mqtt")  # configurations with the page open in the browser
OTHER_PROCESSES = {"browser": ("chrom",), "broker": ("mosquitto",)}  # /proc command names


class CpuTimedLoop(TimedLoop):
    """``TimedLoop`` that also reads the CPU clocks at the end of each batch: the whole runtime process's
    (loop, capture, HTTP server and MQTT threads), the loop thread's own, and the loop thread's time in
    the emit step (rendering when wanted, then every sink: where the line outputs spend on the loop)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.emit_cpu = 0.0

    def _emit(self, decision, frame, amap) -> None:
        t0 = time.thread_time()
        super()._emit(decision, frame, amap)
        self.emit_cpu += time.thread_time() - t0

    def _process(self, frames):
        decisions = super()._process(frames)
        self.records[-1].update(cpu_process=time.process_time(), cpu_thread=time.thread_time(),
                                cpu_emit=self.emit_cpu)
        return decisions


def cpu_ms_per_frame(records: list[dict], warmup: int, key: str) -> float:
    """CPU milliseconds per frame over the batches after the warm-up (``key``: cpu_process, cpu_thread or
    cpu_emit)."""
    timed = records[warmup:]
    frames = sum(r["frames"] for r in timed)
    return 1e3 * (timed[-1][key] - records[warmup - 1][key]) / frames


def other_cpu_s(names: tuple[str, ...]) -> float:
    """CPU seconds used so far by the processes whose command name starts with one of ``names`` (Linux)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        comm, rest = text[text.index("(") + 1: text.rindex(")")], text[text.rindex(")") + 2:].split()
        if comm.startswith(names):
            total += int(rest[11]) + int(rest[12])  # utime, stime
    return total / tick


class GatedSource(Source):
    """Holds the first frame back until ``gate`` opens (the browser is watching, the broker connected)."""

    def __init__(self, inner: Source, gate: threading.Event):
        self.inner, self.gate = inner, gate
        self.name, self.is_live, self.fps = inner.name, inner.is_live, inner.fps

    def open(self) -> bool:
        return self.inner.open()

    def read(self):
        if not self.gate.wait(60.0):
            raise RuntimeError("the run was never released (browser or broker not ready within 60 s)")
        return self.inner.read()

    def release(self) -> None:
        self.inner.release()


@contextmanager
def local_broker(work: Path) -> Iterator[Optional[str]]:
    """A Mosquitto broker on a free loopback port for the run (None when mosquitto is not installed)."""
    exe = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
    if exe is None:
        yield None
        return
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = work / "mosquitto.conf"
    config.write_text(f"user {getpass.getuser()}\nlistener {port} 127.0.0.1\nallow_anonymous true\n")
    proc = subprocess.Popen([exe, "-c", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5.0
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise UserError("the local mosquitto broker did not start") from None
                time.sleep(0.05)
        yield f"mqtt://127.0.0.1:{port}/bench"
    finally:
        proc.terminate()
        proc.wait(5)


def chromium():
    """Headless Chromium via Selenium and the system's chromedriver, or None (logged) when absent."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_exe = shutil.which("chromedriver")
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        browser = None
    if not (browser and driver_exe):
        log.warning("no chromium/chromedriver/selenium: the 'web' configurations are skipped")
        return None
    options = webdriver.ChromeOptions()
    options.binary_location = browser
    options.page_load_strategy = "eager"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,820"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver_exe), options=options)


@dataclass
class Bench:
    """What every run shares."""

    runner: Runner
    manifest: Manifest
    video: Path
    work: Path
    mqtt_url: Optional[str]
    driver: Any           # Selenium WebDriver, or None
    view_fps: float
    warmup: int           # frames excluded at the start of a run
    threshold: Optional[float] = None  # the score threshold of the runs (None: the manifest's)


def run_once(config: str, b: Bench) -> dict:
    """One loop over the whole video with the outputs of ``config``; its steady-state numbers."""
    from aaclip.runtime.mqtt import MqttSink
    from aaclip.runtime.web import LineView

    runner, manifest, video, work, driver = b.runner, b.manifest, b.video, b.work, b.driver

    gate = threading.Event()
    source = TimedSource(GatedSource(open_source(str(video)), gate))
    with ExitStack() as stack:
        sinks = [EventLog(work / f"events-{config}.jsonl")]
        view = mqtt = None
        if config.startswith("web"):
            view = LineView("127.0.0.1:0", view_fps=b.view_fps)
            sinks.append(view)
        if "mqtt" in config:
            mqtt = MqttSink(f"{b.mqtt_url}?queue=100000" + ("&decisions=1" if "decisions" in config else ""))
            sinks.append(mqtt)
        stack.callback(lambda: [s.close() for s in sinks])  # the loop closed them; this covers a failure
        timed = TimedRunner(runner)
        timed.activate()
        loop = CpuTimedLoop(timed, manifest, source, LoopConfig(drop=False, stats_every=0.0, threshold=b.threshold),
                            sinks)
        outcome: dict = {}
        thread = threading.Thread(target=lambda: outcome.update(summary=loop.run()), daemon=True)
        thread.start()
        if mqtt is not None and not mqtt.connected.wait(10.0):
            raise RuntimeError("the MQTT sink did not connect to the local broker")
        if config in WATCHED:
            if not view.started.wait(10.0):
                raise RuntimeError("the loop did not start")
            driver.get(view.url + "/cam/0")
            deadline = time.monotonic() + 20.0
            while view.cameras[0].watchers < 1:
                if time.monotonic() > deadline:
                    raise RuntimeError("the browser did not open the stream")
                time.sleep(0.02)
        others0 = {k: other_cpu_s(v) for k, v in OTHER_PROCESSES.items()}
        gate.set()
        thread.join()
        others = {k: other_cpu_s(v) - others0[k] for k, v in OTHER_PROCESSES.items()}
        if driver is not None:
            driver.get("about:blank")
    if "summary" not in outcome:
        raise RuntimeError(f"the {config} run failed (see the log)")
    result = steady_state(loop.records, loop.t_run, b.warmup)
    n = outcome["summary"].frames
    return {"config": config, "images_per_s": result["images_per_s"], "frames": result["frames"],
            "latency_p50_ms": result["latency_p50_ms"], "latency_p95_ms": result["latency_p95_ms"],
            "alarms": outcome["summary"].alarms,
            "cpu_ms": cpu_ms_per_frame(loop.records, b.warmup, "cpu_process"),
            "loop_cpu_ms": cpu_ms_per_frame(loop.records, b.warmup, "cpu_thread"),
            "emit_cpu_ms": cpu_ms_per_frame(loop.records, b.warmup, "cpu_emit"),
            "browser_cpu_ms": 1e3 * others["browser"] / n, "broker_cpu_ms": 1e3 * others["broker"] / n,
            "views_sent": view.views if config in WATCHED else 0,
            "mqtt_messages": mqtt.delivered if mqtt is not None else 0,
            "mqtt_dropped": mqtt.failures if mqtt is not None else 0}


class _Scores(Sink):
    def __init__(self):
        self.scores: list[float] = []

    def emit(self, decision, view) -> None:
        self.scores.append(decision.raw_score)


def alarm_threshold(runner, manifest: Manifest, video: Path, fraction: float) -> float:
    """The score threshold that makes ``fraction`` of ``video``'s frames anomalous (one untimed pass)."""
    from aaclip.runtime.loop import CameraLoop

    recorder = _Scores()
    CameraLoop(runner, manifest, [open_source(str(video))], [0], LoopConfig(drop=False, stats_every=0.0),
               [recorder]).run()
    scores = sorted(recorder.scores)
    k = max(1, round(fraction * len(scores)))
    threshold = scores[-k]  # the k-th highest score: at least k frames at or above it
    log.info("threshold %.6g: %d of %d frames at or above it", threshold, sum(x >= threshold for x in scores),
             len(scores))
    return threshold


def prepare_artifact(artifact: Optional[Path], work: Path) -> tuple[Path, str]:
    """The artifact to run: the one given, or the tiny random AA-CLIP exported to ONNX (needs torch)."""
    if artifact is not None:
        return artifact, artifact.name
    from aaclip.train.checkpoint import load_checkpoint

    from .models import export_graph, prepare_checkpoint

    ckpt, description = prepare_checkpoint(None, True, None, work)
    model = load_checkpoint(ckpt)
    graph = export_graph(ckpt, model, "fp32", work / "artifacts", next(iter(model.config.classes)))
    return graph.path, f"{description}, fp32 ONNX"


def added_cpu_ms(run: dict, base: dict) -> float:
    """The runtime CPU a configuration adds per frame over ``off`` in the same repetition: the loop
    thread's emit step (rendering, encoding, the sinks) plus the process's other threads (HTTP server,
    MQTT network thread). Measured by the parts, so the decode/inference time (and its noise) drops out."""
    other, other_base = run["cpu_ms"] - run["loop_cpu_ms"], base["cpu_ms"] - base["loop_cpu_ms"]
    return (run["emit_cpu_ms"] - base["emit_cpu_ms"]) + (other - other_base)


def summarize(runs: list[dict], configs: list[str]) -> list[dict]:
    """Per configuration: medians over the repetitions, and medians (with ranges) of the comparisons with
    ``off`` made within each repetition: throughput ratio, and added runtime CPU over ``off``'s CPU."""
    base = {r["rep"]: r for r in runs if r["config"] == "off"}
    rows = []
    for config in configs:
        mine = [r for r in runs if r["config"] == config]
        wall = [r["images_per_s"] / base[r["rep"]]["images_per_s"] - 1.0 for r in mine]
        added = [added_cpu_ms(r, base[r["rep"]]) / base[r["rep"]]["cpu_ms"] for r in mine]
        row = {"config": config, "reps": len(mine), "throughput_change": statistics.median(wall),
               "throughput_change_range": (min(wall), max(wall)), "added_cpu": statistics.median(added),
               "added_cpu_range": (min(added), max(added)),
               "added_cpu_ms": statistics.median(added_cpu_ms(r, base[r["rep"]]) for r in mine),
               "other_threads_cpu_ms": statistics.median(r["cpu_ms"] - r["loop_cpu_ms"] for r in mine)}
        for key in ("alarms", "images_per_s", "latency_p50_ms", "cpu_ms", "loop_cpu_ms", "emit_cpu_ms", "browser_cpu_ms",
                    "broker_cpu_ms", "views_sent", "mqtt_messages", "mqtt_dropped"):
            row[key] = statistics.median(r[key] for r in mine)
        rows.append(row)
    return rows


def _pct(x: float) -> str:
    return f"{100 * x:+.1f}%"


def table(rows: list[dict]) -> str:
    header = ("| configuration | images/s | throughput vs off (min..max) | runtime CPU ms/frame | emit step ms/frame "
              "| other threads ms/frame | added runtime CPU vs off (min..max) | browser ms/frame | broker ms/frame "
              "| alarms / run | web frames / run | MQTT messages / run |")
    lines = [header, "|---" * header.count(" | ") + "|---|"]
    for r in rows:
        (wl, wh), (al, ah) = r["throughput_change_range"], r["added_cpu_range"]
        lines.append(
            f"| {r['config']} | {r['images_per_s']:.0f} | {_pct(r['throughput_change'])} ({_pct(wl)}..{_pct(wh)}) "
            f"| {r['cpu_ms']:.3f} | {r['emit_cpu_ms']:.3f} | {r['other_threads_cpu_ms']:.3f} "
            f"| {_pct(r['added_cpu'])} ({_pct(al)}..{_pct(ah)}) | {r['browser_cpu_ms']:.3f} "
            f"| {r['broker_cpu_ms']:.3f} | {r['alarms']:.0f} | {r['views_sent']:.0f} | {r['mqtt_messages']:.0f} |")
    return "\n".join(lines)


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--artifact", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="An exported artifact (model.onnx or .engine + manifest); default: the tiny random AA-CLIP.")
@click.option("--backend", default="auto", show_default=True, help="Backend of the runner.")
@click.option("--threads", type=int, default=1, show_default=True,
              help="Intra-op threads of the backend (1: no spinning worker threads in the CPU times).")
@click.option("--reps", type=int, default=7, show_default=True, help="Repetitions of every configuration.")
@click.option("--frames", type=int, default=600, show_default=True, help="Frames of the video (one run each).")
@click.option("--warmup", type=int, default=30, show_default=True, help="Frames excluded at the start of a run.")
@click.option("--size", default="480x640", show_default=True, help="Camera frame size HxW of the video.")
@click.option("--view-fps", type=float, default=5.0, show_default=True, help="--view-fps of the web runs.")
@click.option("--threshold", type=float, default=None, help="Score threshold of the runs (default: see --alarm-fraction).")
@click.option("--alarm-fraction", type=float, default=0.01, show_default=True,
              help="Without --threshold: the threshold that makes this fraction of the frames anomalous.")
@click.option("--configs", default=",".join(CONFIGS), show_default=True, help="Comma-separated configurations.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("bench-sinks"),
              show_default=True, help="Folder for sink_overhead.json and .md.")
@click.option("-v", "--verbose", count=True, help="More log output.")
@click.option("-q", "--quiet", is_flag=True, help="Warnings and errors only.")
def main(artifact: Optional[Path], backend: str, threads: int, reps: int, frames: int, warmup: int, size: str,
         view_fps: float, threshold: Optional[float], alarm_fraction: float, configs: str, out_dir: Path, verbose: int,
         quiet: bool) -> None:
    """Loop throughput with the web view (in a browser) and MQTT on and off, interleaved on one video."""
    from .inputs import bench_frames, write_video

    setup_logging(verbose, quiet)
    wanted = [c.strip() for c in configs.split(",") if c.strip()]
    if "off" not in wanted or set(wanted) - set(CONFIGS):
        raise UserError(f"--configs: choose from {', '.join(CONFIGS)}, including off (the baseline)")
    h, w = (int(v) for v in size.lower().split("x"))
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="aaclip-sinks-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        path, description = prepare_artifact(artifact, work)
        manifest = open_artifact(path)
        video = write_video(bench_frames(manifest.height, DISTINCT_FRAMES, frame_hw=(h, w)), work / "line.avi", frames)
        mqtt_url = stack.enter_context(local_broker(work))
        if mqtt_url is None:
            log.warning("no mosquitto: the 'mqtt' configurations are skipped")
            wanted = [c for c in wanted if "mqtt" not in c]
        driver = chromium() if any(c in WATCHED for c in wanted) else None
        if driver is None:
            wanted = [c for c in wanted if c not in WATCHED]
        else:
            stack.callback(driver.quit)
        runner = stack.enter_context(open_runner(manifest, backend, RunnerOptions(threads=threads)))
        if threshold is None:
            threshold = alarm_threshold(runner, manifest, video, alarm_fraction)
        bench = Bench(runner, manifest, video, work, mqtt_url, driver, view_fps, warmup, threshold)
        runs = []
        for rep in range(reps):
            order = wanted[rep % len(wanted):] + wanted[: rep % len(wanted)]  # rotated: no fixed position
            for config in order:
                r = run_once(config, bench)
                r["rep"] = rep
                runs.append(r)
                log.info("rep %d %-9s %.1f images/s", rep, config, r["images_per_s"])
        rows = summarize(runs, wanted)
    text = table(rows)
    meta = {"model": description, "backend": runner.name, "frames": frames, "warmup": warmup, "size": [h, w],
            "threshold": bench.threshold,
            "reps": reps, "view_fps": view_fps, "threads": threads, "cpus": os.cpu_count(),
            "command": "python -m aaclip.benchmarks.sink_overhead " + " ".join(sys.argv[1:])}
    (out_dir / "sink_overhead.json").write_text(json.dumps({"meta": meta, "rows": rows, "runs": runs}, indent=1))
    (out_dir / "sink_overhead.md").write_text(f"{description}, {runner.name}, {frames} frames {w}x{h}, "
                                              f"{reps} reps\n\n{text}\n")
    click.echo(text)


if __name__ == "__main__":
    main()
