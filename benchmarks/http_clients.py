"""Does a crowd at the line view slow the camera loop? The loop's frame rate alone vs with idle and streaming
HTTP clients, on loopback, in alternating windows.

    python -m aaclip.benchmarks.http_clients --idle 50 --streams 50 --seconds 15 --reps 4 --out bench-http

The runtime's own ``CameraLoop`` runs the artifact (default: the tiny random AA-CLIP, FP32 ONNX) on a looping
MJPG video in offline no-drop mode, as fast as it goes, with ``--http`` on loopback behind a bearer token
(every request pays the access check) and ``--max-viewers`` = ``--streams``. Windows of ``--seconds``
alternate: ``alone`` (nobody connected) and ``clients``: a separate process opens ``--idle`` connections that
send nothing (each is dropped after the HTTP timeout and opens again) and ``--streams`` clients reading
``/cam/0/stream.mjpg`` as fast as the server sends. The loop's rate is its inspected frames over the window;
the ratio of each ``clients`` window to the mean of the ``alone`` windows around it cancels slow drifts of a
shared machine. Bounded: at most 200 clients and 120 s per window.
"""
from __future__ import annotations

import json
import logging
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Optional

import click
from aaclip.contract.cli import Command, FiniteFloat, setup_logging
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import open_artifact
from aaclip.runtime.backends import RunnerOptions, open_runner
from aaclip.runtime.station.outputs import HttpAuthSettings, HttpOutput
from aaclip.runtime.loop import CameraLoop, LoopConfig
from aaclip.runtime.sources import open_source

log = logging.getLogger(__name__)

MAX_CLIENTS = 200
MAX_WINDOW_S = 120.0
DISTINCT_FRAMES = 100


def _idle_client(port: int, stop: threading.Event) -> None:
    """Holds a connection that never sends a request; opens another when the server drops it."""
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2.0) as s:
                s.settimeout(0.5)
                while not stop.is_set():
                    try:
                        if not s.recv(1024):
                            break  # dropped by the server's timeout (or answered 503 when full)
                    except socket.timeout:
                        continue
        except OSError:
            stop.wait(0.2)


def _stream_client(url: str, token: str, stop: threading.Event, counts: list, i: int) -> None:
    """Reads the MJPEG stream as fast as it comes; ``counts[i]``: bytes received."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    while not stop.is_set():
        try:
            with urllib.request.urlopen(request, timeout=5.0) as r:
                while not stop.is_set():
                    chunk = r.read1(65536)
                    if not chunk:
                        break
                    counts[i] += len(chunk)
        except OSError:
            counts[-1] += 1  # refused (503) or failed; retried
            stop.wait(0.2)


def swarm(port: int, token: str, idle: int, streams: int, stop_event, result) -> None:
    """The clients' process: ``idle`` idle connections and ``streams`` stream readers until ``stop_event``."""
    stop = threading.Event()
    counts = [0] * (streams + 1)
    url = f"http://127.0.0.1:{port}/cam/0/stream.mjpg"
    threads = [threading.Thread(target=_idle_client, args=(port, stop), daemon=True) for _ in range(idle)]
    threads += [threading.Thread(target=_stream_client, args=(url, token, stop, counts, i), daemon=True)
                for i in range(streams)]
    for t in threads:
        t.start()
    c0 = time.process_time()
    stop_event.wait()
    cpu = time.process_time() - c0
    stop.set()
    for t in threads:
        t.join(6.0)
    result.put({"stream_bytes": counts[:-1], "refused_or_failed": counts[-1], "clients_cpu_s": cpu})


def window(view, loop_clock: int, seconds: float) -> dict:
    """Frames the loop inspected, the runtime process's CPU and the loop thread's own CPU over ``seconds``."""
    cam = view.cameras[0]
    f0, c0, l0, t0 = cam.inspected, time.process_time(), time.clock_gettime(loop_clock), time.perf_counter()
    connections = viewers = 0
    while time.perf_counter() - t0 < seconds:  # the most connections and streams open at once
        time.sleep(min(0.25, max(0.0, seconds - (time.perf_counter() - t0))))
        connections, viewers = max(connections, view.server.connections), max(viewers, view.server.viewers)
    f1, c1, l1, t1 = cam.inspected, time.process_time(), time.clock_gettime(loop_clock), time.perf_counter()
    n = max(f1 - f0, 1)
    return {"frames": f1 - f0, "seconds": t1 - t0, "fps": (f1 - f0) / (t1 - t0),
            "cpu_ms_per_frame": 1e3 * (c1 - c0) / n, "loop_cpu_ms_per_frame": 1e3 * (l1 - l0) / n,
            "views": view.views, "connections": connections, "viewers": viewers}


@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--artifact", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="An exported artifact (model.onnx + manifest); default: the tiny random AA-CLIP (needs torch).")
@click.option("--backend", default="onnxruntime", show_default=True)
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
@click.option("--idle", type=click.IntRange(min=0), default=50, show_default=True, help="Idle connections.")
@click.option("--streams", type=click.IntRange(min=0), default=50, show_default=True, help="Streaming clients.")
@click.option("--seconds", type=FiniteFloat(min=1.0), default=15.0, show_default=True, help="Seconds per window.")
@click.option("--reps", type=click.IntRange(min=1), default=4, show_default=True,
              help="Window pairs (alone, clients); one more alone window closes the run.")
@click.option("--view-fps", type=FiniteFloat(min=0.0, min_open=True), default=5.0, show_default=True)
@click.option("--size", default="480x640", show_default=True, help="Video frame size HxW.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path, file_okay=False), default=Path("bench-http"),
              show_default=True)
@click.option("-v", "--verbose", count=True)
@click.option("-q", "--quiet", is_flag=True)
def main(artifact: Optional[Path], backend: str, threads: int, idle: int, streams: int, seconds: float, reps: int,
         view_fps: float, size: str, out_dir: Path, verbose: int, quiet: bool) -> None:
    """The camera loop's frame rate alone vs with IDLE idle and STREAMS streaming HTTP clients."""
    from .inputs import bench_frames, write_video
    from .sink_overhead import prepare_artifact

    setup_logging(verbose, quiet)
    if idle + streams > MAX_CLIENTS or seconds > MAX_WINDOW_S:
        raise UserError(f"at most {MAX_CLIENTS} clients and {MAX_WINDOW_S:.0f} s per window")
    h, w = (int(v) for v in size.lower().split("x"))
    out_dir.mkdir(parents=True, exist_ok=True)
    from aaclip.runtime.web import LineView

    with tempfile.TemporaryDirectory(prefix="aaclip-http-") as tmp:
        work = Path(tmp)
        path, description = prepare_artifact(artifact, work)
        manifest = open_artifact(path)
        video = write_video(bench_frames(manifest.height, DISTINCT_FRAMES, frame_hw=(h, w)), work / "line.avi",
                            DISTINCT_FRAMES)
        token = os.urandom(16).hex()
        (work / "token").write_text(token)
        (work / "token").chmod(0o600)
        view = LineView.from_options(HttpOutput(listen="127.0.0.1:0", view_fps=view_fps, max_viewers=max(streams, 1),
                                                auth=HttpAuthSettings(token_file=work / "token")))
        source = open_source(str(video), loop=True)
        ctx = multiprocessing.get_context("spawn")
        windows = []
        with open_runner(manifest, backend, RunnerOptions(threads=threads)) as runner:
            loop = CameraLoop(runner, manifest, [source], [0], LoopConfig(drop=False, stats_every=0), [view])
            thread = threading.Thread(target=loop.run, daemon=True)
            thread.start()
            loop_clock = time.pthread_getcpuclockid(thread.ident)
            try:
                deadline = time.monotonic() + 60
                while not (view.cameras and view.cameras[0].inspected > 20):
                    if time.monotonic() > deadline or not thread.is_alive():
                        raise UserError("the loop did not start")
                    time.sleep(0.1)
                for rep in range(reps):
                    windows.append({"rep": rep, "phase": "alone", **window(view, loop_clock, seconds)})
                    stop, result = ctx.Event(), ctx.Queue()
                    proc = ctx.Process(target=swarm, args=(view.port, token, idle, streams, stop, result))
                    proc.start()
                    time.sleep(3.0)  # the clients' process starts and connects
                    r = {"rep": rep, "phase": "clients", **window(view, loop_clock, seconds)}
                    stop.set()
                    r.update(result.get(timeout=30))
                    proc.join(10)
                    windows.append(r)
                    log.info("rep %d: alone %.1f fps, clients %.1f fps (at most %d connections)", rep,
                             windows[-2]["fps"], r["fps"], r["connections"])
                    time.sleep(1.0)
                windows.append({"rep": reps, "phase": "alone", **window(view, loop_clock, seconds)})
            finally:
                loop.stop("benchmark")
                thread.join(20)
                view.close()
                source.release()
    alone = [x for x in windows if x["phase"] == "alone"]
    ratios = []
    for x in windows:
        if x["phase"] == "clients":
            around = (alone[x["rep"]]["fps"] + alone[x["rep"] + 1]["fps"]) / 2
            x["ratio"] = x["fps"] / around
            ratios.append(x["ratio"])
    rows = ["| window | rep | loop fps | vs alone around it | runtime CPU ms/frame | loop thread CPU ms/frame | "
            "most connections | most streams | stream MB received | clients' process CPU s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for x in windows:
        ratio = f"{x['ratio']:.3f}" if "ratio" in x else "-"
        mb = f"{sum(x['stream_bytes']) / 1e6:.1f}" if "stream_bytes" in x else "-"
        clients_cpu = f"{x['clients_cpu_s']:.1f}" if "clients_cpu_s" in x else "-"
        rows.append(f"| {x['phase']} | {x['rep']} | {x['fps']:.1f} | {ratio} | {x['cpu_ms_per_frame']:.2f} | "
                    f"{x['loop_cpu_ms_per_frame']:.2f} | {x['connections']} | {x['viewers']} | {mb} | {clients_cpu} |")
    median = statistics.median(ratios)
    load = os.getloadavg()
    text = "\n".join(rows) + (f"\n\nmedian ratio (clients / alone): {median:.3f}; load average at the end "
                              f"{load[0]:.1f} {load[1]:.1f} {load[2]:.1f} on {os.cpu_count()} CPUs")
    meta = {"model": description, "backend": backend, "threads": threads, "idle": idle, "streams": streams,
            "seconds": seconds, "reps": reps, "view_fps": view_fps, "size": [h, w], "cpus": os.cpu_count(),
            "median_ratio": median, "command": "python -m aaclip.benchmarks.http_clients " + " ".join(sys.argv[1:])}
    (out_dir / "http_clients.json").write_text(json.dumps({"meta": meta, "windows": windows}, indent=1))
    (out_dir / "http_clients.md").write_text(f"{description}, {backend}, {w}x{h}\n\n{text}\n")
    click.echo(text)


if __name__ == "__main__":
    main()
