"""aaclip-runtime's exit codes (docs/cli.md, "Exit codes") from the real command in a subprocess: finished,
stopped by a signal, bad input (a missing artifact, a camera that never delivers, a folder with nothing
readable), source lost; sources that fail fast and say why, without OpenCV's own console lines."""
import http.server
import signal
import subprocess
import sys
import threading

import cv2
import numpy as np
import pytest
from runtime_fixtures import make_onnx_artifact, runtime_env, signal_when, wait_for, write_video
from runtime_fixtures import start_runtime as start


def runtime(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aaclip.runtime.cli", *map(str, args)], capture_output=True,
                          text=True, env=runtime_env(), timeout=timeout)


@pytest.mark.both_cpus  # the subprocess inherits $AACLIP_CPU_VENDOR: openvino, then onnxruntime
def test_finished_exits_0(tmp_path):
    art = make_onnx_artifact(tmp_path)
    r = runtime(art, "--camera", write_video(tmp_path / "v.avi", 4), "-q")
    assert r.returncode == 0, r.stderr
    assert "summary: 4 frames" in r.stdout and "stopped by end" in r.stdout and "error:" not in r.stderr


def test_missing_artifact_says_it_is_missing(tmp_path):
    r = runtime(tmp_path / "missing.onnx", "--camera", write_video(tmp_path / "v.avi", 1))
    assert r.returncode == 2
    assert r.stderr == (f"error: artifact {tmp_path / 'missing.onnx'} not found: no such file (nor its manifest "
                        "missing.onnx.manifest.json)\n")


def test_a_camera_that_never_delivers_exits_2_without_opencv_chatter(tmp_path):
    art = make_onnx_artifact(tmp_path)
    r = runtime(art, "--camera", "7", "--open-timeout", "0.6")  # no /dev/video7 here
    assert r.returncode == 2
    lines = r.stderr.splitlines()
    assert lines[-1].startswith("error: camera camera7 delivered no frame within 0.6 s (")
    assert lines[-1].endswith("; --open-timeout sets how long to wait, --wait-for-source keeps waiting for a camera "
                              "that starts after this PC")
    # OpenCV's own "[ WARN:0@0.05] global cap_v4l.cpp ..." lines are silenced; the log says it once in words
    assert not [line for line in lines if line.startswith("[")], r.stderr
    # -v lets OpenCV speak (for the engineer who wants its reasons)
    r = runtime(art, "--camera", "7", "--open-timeout", "0.3", "-v")
    assert r.returncode == 2 and "VIDEOIO" in r.stderr


def test_wait_for_source_keeps_waiting_and_counts_its_tries(tmp_path):
    art = make_onnx_artifact(tmp_path)
    proc = start(art, "--camera", "7", "--open-timeout", "0.2", "--wait-for-source", "--reconnect-delay", "0.05",
                 "--reconnect-max", "0.1")
    err_lines = []
    reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
    reader.start()
    try:
        wait_for(proc, lambda: any("connect try 3 failed" in line for line in err_lines))
        assert proc.poll() is None, err_lines  # past --open-timeout and not exited 2: it waits
        proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read()
        proc.wait(timeout=30)
        reader.join(5)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = "".join(err_lines)
    assert proc.returncode == 0, err  # stopped by a signal; never delivered, so not "lost"
    assert "stopped by SIGTERM" in out and "reconnects 0 (" in out and "failed tries)" in out
    tries = int(out.split("reconnects 0 (")[1].split(" failed tries)")[0])
    assert tries >= 3 and "connect try 1 failed" in err and "reconnect try" not in err


def test_folder_without_a_readable_image_names_what_it_skipped(tmp_path):
    art = make_onnx_artifact(tmp_path)
    folder = tmp_path / "parts"
    folder.mkdir()
    (folder / "notes.txt").write_text("not a photo")
    (folder / "b.jpg").write_bytes(b"broken")
    r = runtime(art, "--camera", folder)
    assert r.returncode == 2
    assert r.stderr.splitlines()[-1] == (f"error: camera {folder}: no readable image; skipped b.jpg ("
                                         "not an image OpenCV can decode); not images: notes.txt")
    (folder / "b.jpg").unlink()
    r = runtime(art, "--camera", folder)
    assert r.returncode == 2 and r.stderr.splitlines()[-1].endswith("holds no images (.png, .jpg, .jpeg, .bmp, .tif, "
                                                                     ".tiff, .webp); skipped notes.txt")
    # unreadable files among readable ones: each named once in a warning, the run goes on
    cv2.imwrite(str(folder / "a.png"), np.full((64, 64, 3), 90, np.uint8))
    (folder / "c.jpg").write_bytes(b"broken too")
    cv2.imwrite(str(folder / "d.png"), np.full((64, 64, 3), 90, np.uint8))
    r = runtime(art, "--camera", folder, "--loop", "--max-frames", "6")
    assert r.returncode == 0, r.stderr
    assert "summary: 6 frames" in r.stdout and "unreadable 3" in r.stdout  # a, c, d three times: c counted each time
    assert r.stderr.count("skipped c.jpg") == 1 and "parts: skipped c.jpg (" in r.stderr


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_stopped_by_a_signal_exits_0(tmp_path, sig):
    art = make_onnx_artifact(tmp_path)
    events = tmp_path / "ev.jsonl"
    proc = start(art, "--camera", write_video(tmp_path / "v.avi", 5), "--loop", "--events", events)
    out, err = signal_when(proc, lambda: events.exists() and events.read_text().count("\n") >= 3, sig)
    assert proc.returncode == 0, err
    assert f"stopped by {sig.name}" in out and "source lost" not in out + err


class _OneShotVideo(http.server.BaseHTTPRequestHandler):
    """Serves the video once (a network camera's stream), then the 'camera' is gone."""

    video: bytes = b""
    served = threading.Event()

    def do_GET(self):  # noqa: N802 (http.server's name)
        if self.served.is_set():
            self.send_error(503)
            return
        self.send_response(200)
        self.send_header("Content-Type", "video/x-msvideo")
        self.send_header("Content-Length", str(len(self.video)))
        self.end_headers()
        self.wfile.write(self.video)
        self.served.set()

    def log_message(self, *args):
        pass


def test_a_source_lost_when_the_run_ends_exits_3(tmp_path):
    art = make_onnx_artifact(tmp_path)
    handler = type("Handler", (_OneShotVideo,), {"video": write_video(tmp_path / "v.avi", 6).read_bytes(),
                                                 "served": threading.Event()})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}/line.avi"
    try:
        proc = start(art, "--camera", url, "--open-timeout", "5", "--reconnect-delay", "0.05", "--reconnect-max",
                     "0.2")
        err_lines = []
        reader = threading.Thread(target=lambda: err_lines.extend(proc.stderr), daemon=True)
        reader.start()
        wait_for(proc, lambda: any("reconnect try" in line for line in err_lines))
        assert proc.poll() is None, err_lines
        proc.send_signal(signal.SIGTERM)
        out = proc.stdout.read()
        proc.wait(timeout=30)
        reader.join(5)
    finally:
        server.shutdown()
        if proc.poll() is None:
            proc.kill()
    err = "".join(err_lines)
    assert proc.returncode == 3, err
    assert "stopped by SIGTERM" in out and "; source lost: http://127.0.0.1:" in out
    assert err.splitlines()[-1].startswith("error: source lost: http://127.0.0.1:")
    assert "no frame (unplugged or stalled); reconnecting" in err
