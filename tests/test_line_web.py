"""The line view (--http): /metrics against the run's summary, /healthz on a stalled camera, the MJPEG
stream rendered only while watched and never slowing the loop, and the page in headless Chromium."""
import json
import os
import shutil
import socket
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from itertools import pairwise

import cv2
import numpy as np
import pytest
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import load_manifest
from aaclip.runtime.backends import open_runner
from aaclip.runtime.loop import CameraLoop, LoopConfig
from aaclip.runtime.sinks import EventLog
from aaclip.runtime.web import BOUNDARY, HttpAccess, LineView, parse_address
from line_fixtures import (
    Feeder,
    ScriptedCamera,
    chromium_driver,
    moving_part,
    needs_browser,
    needs_prometheus,
    read_parts,
    wait_until,
)
from runtime_fixtures import frame_image, make_onnx_artifact, read_events


@contextmanager
def running_loop(tmp_path, camera, sinks, drop=True):
    """The real loop (darkness ONNX graph on ONNX Runtime) on ``camera`` in a thread; stopped on exit."""
    m = load_manifest(make_onnx_artifact(tmp_path))
    with open_runner(m, "onnxruntime") as runner:
        loop = CameraLoop(runner, m, [camera], [0], LoopConfig(drop=drop, stats_every=0, poll_s=0.02), sinks)
        camera.stop = loop.stop_event
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        try:
            yield loop
        finally:
            loop.stop("test")
            thread.join(10)
            assert not thread.is_alive()


def get(url, timeout=5.0):
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.headers.get("Content-Type"), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type"), e.read()


def test_parse_address():
    assert parse_address(":8080") == ("127.0.0.1", 8080) and parse_address("8080") == ("127.0.0.1", 8080)  # loopback
    assert parse_address("0.0.0.0:8080") == ("0.0.0.0", 8080)
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0) and parse_address("[::1]:9000") == ("::1", 9000)
    for bad in ("host:", "x:99999", "abc"):
        with pytest.raises(UserError, match="give \\[HOST\\]:PORT"):
            parse_address(bad)


def test_histogram_buckets_are_prometheus_le_buckets():
    from aaclip.runtime.monitor import BucketCounts

    h = BucketCounts((0.001, 0.005, 0.01))
    for v in (0.0005, 0.001, 0.003, 0.01, 0.02, 7.0):
        h.observe(v)
    assert h.cumulative() == [("0.001", 2), ("0.005", 3), ("0.01", 4), ("+Inf", 6)]  # a bound counts as "le"
    assert h.sum == pytest.approx(7.0345)


def test_busy_port_is_a_user_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        with pytest.raises(UserError, match="cannot listen on 127.0.0.1 port"):
            LineView(f"127.0.0.1:{s.getsockname()[1]}")


@needs_prometheus
def test_metrics_equal_the_summary_and_healthz_turns_unhealthy(tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    camera = ScriptedCamera()
    view = LineView("127.0.0.1:0", health_timeout_s=0.5)
    assert get(view.url + "/healthz")[0] == 503  # the loop has not started
    defects = {3, 4, 9}
    with running_loop(tmp_path, camera, [view]) as loop:
        camera.push(*[frame_image(i in defects, seed=i) for i in range(12)])  # a burst: live mode drops some
        wait_until(lambda: view.cameras and view.counters(view.cameras[0])["captured"] == 12, what="12 captured")
        wait_until(lambda: (view.cameras[0].inspected + view.counters(view.cameras[0])["dropped"]) == 12,
                   what="every frame inspected or dropped")
        status, _, body = get(view.url + "/healthz")
        assert status == 200 and json.loads(body)["cameras"][0]["healthy"] is True
        status, ctype, scraped = get(view.url + "/metrics")  # nothing arrives after this: the final numbers
        assert status == 200 and ctype.startswith("text/plain")
        time.sleep(0.6)  # the camera delivers nothing for longer than the health timeout
        status, _, body = get(view.url + "/healthz")
        health = json.loads(body)
        assert status == 503 and health["status"] == "stale camera"
        assert health["cameras"][0]["camera"] == "line1" and health["cameras"][0]["last_frame_age_s"] > 0.5
    s = loop.summary
    metrics = {f.name: f for f in text_string_to_metric_families(scraped.decode())}

    def value(name, sample=None, **labels):
        family = metrics[name]
        return next(x.value for x in family.samples if x.name == (sample or family.name + "_total")
                    and all(x.labels.get(k) == v for k, v in labels.items()))

    assert s.frames > 0 and s.captured == 12 and s.frames + s.dropped == 12
    for name, expected in (("aaclip_frames_inspected", s.frames), ("aaclip_frames_anomalous", s.anomalous),
                           ("aaclip_alarms", s.alarms), ("aaclip_alarm_frames", s.alarm_frames),
                           ("aaclip_frames_captured", s.captured), ("aaclip_frames_dropped", s.dropped),
                           ("aaclip_frames_unreadable", s.unreadable), ("aaclip_source_reconnects", s.reconnects)):
        assert value(name, camera="line1") == expected, name
    assert value("aaclip_latency_seconds", "aaclip_latency_seconds_count", camera="line1") == s.frames
    assert value("aaclip_inference_seconds", "aaclip_inference_seconds_count", camera="line1") == s.frames
    assert value("aaclip_latency_seconds", "aaclip_latency_seconds_bucket", camera="line1", le="+Inf") == s.frames
    assert 0 < value("aaclip_latency_seconds", "aaclip_latency_seconds_sum", camera="line1") < s.frames * 5.0
    assert value("aaclip_sink_failures", sink="web") == 0
    assert value("aaclip_score_threshold", "aaclip_score_threshold") == 0.5
    info = metrics["aaclip_model_info"].samples[0]
    assert info.name == "aaclip_model_info" and info.labels["method"] == "test-darkness"
    assert (info.labels["precision"], info.labels["backend"], info.labels["calibrated"]) == \
        ("fp32", "onnxruntime", "false")
    with pytest.raises(urllib.error.URLError):  # the server closed with the loop: nothing listens
        get(view.url + "/healthz")


class ViewClock:
    """The line view's clock (``time`` in aaclip.runtime.monitor), moved by the test: whether a view is due
    is the test's decision, not the machine's speed."""

    def __init__(self):
        self.t = 1024.0

    def perf_counter(self) -> float:
        return self.t


def test_stream_renders_only_while_watched_and_stalled_clients_never_slow_the_loop(tmp_path, monkeypatch):
    from aaclip.runtime import monitor, web

    clock = ViewClock()
    monkeypatch.setattr(monitor, "time", clock)
    camera = ScriptedCamera()
    access = HttpAccess(timeout=600.0)  # a client that accepts nothing stays until it leaves (set lower below)
    view = LineView("127.0.0.1:0", view_fps=8, access=access)  # a view at most every 0.125 s of the view's clock
    frames = [moving_part(frame_image(False, (240, 320), seed=i), i) for i in range(8)]

    def feed(n: int, step: float = 0.0) -> None:
        """Push ``n`` frames one at a time, each inspected before the next; the clock moves ``step`` before each."""
        for _ in range(n):
            clock.t += step
            camera.push(frames[camera.pushed % len(frames)])
            wait_until(lambda: view.cameras and view.cameras[0].inspected == camera.pushed, 30.0,
                       f"frame {camera.pushed} inspected")

    with running_loop(tmp_path, camera, [view], drop=False):
        feed(20, step=1.0)  # a view would be due at every frame
        cam = view.cameras[0]
        assert view.views == 0 and cam.jpeg is None  # nobody watches: nothing rendered for the web

        with urllib.request.urlopen(view.url + "/cam/0/stream.mjpg", timeout=30) as r:
            assert r.headers["Content-Type"] == f"multipart/x-mixed-replace; boundary={BOUNDARY}"
            assert cam.watchers == 1
            feed(5)  # the clock stands still: the first frame's view comes at once, the next four are not due
            assert view.views == 1
            parts = read_parts(r, 1)
            for _ in range(4):  # one view period per frame: each frame is rendered and streamed
                feed(1, step=view.view_period)
                parts += read_parts(r, 1)
            feed(4, step=view.view_period / 2)  # twice the view rate: every second frame
            assert view.views == 5 + 2
        images = [cv2.imdecode(np.frombuffer(p, np.uint8), cv2.IMREAD_COLOR) for p in parts]
        assert all(im.shape == (240, 320, 3) for im in images)  # the annotated frame (narrower than 640)
        assert all(np.abs(a.astype(int) - b).max() > 20 for a, b in pairwise(images))  # five different frames
        for _ in range(200):  # the stream's thread notices the closed connection at its next write
            if cam.watchers == 0:
                break
            feed(1, step=view.view_period)
        assert cam.watchers == 0, "the viewer never left"
        rendered = view.views
        feed(5, step=1.0)
        assert view.views == rendered and isinstance(cam.jpeg, bytes)  # due, but no viewer: no rendering

        # A client that never reads: its thread blocks on a full socket, the loop does not notice.
        monkeypatch.setattr(web, "STREAM_SNDBUF", 4096)
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", view.port))
        stalled.sendall(b"GET /cam/0/stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: cam.watchers == 1, 30.0, "the stalled viewer")
        rendered, sizes = view.views, []
        for _ in range(60):
            feed(1, step=view.view_period)
            sizes.append(len(cam.jpeg))
        # every frame inspected and rendered while the client accepted nothing: several times more bytes than
        # both socket buffers hold (the kernel doubles 4096 to 8192 on each side), so its thread sits in send()
        assert view.views - rendered == 60 and cam.watchers == 1
        assert sum(sizes) > 4 * 2 * 8192, sizes
        stalled.close()  # the client goes away: its blocked thread ends
        wait_until(lambda: cam.watchers == 0, 30.0, "the stalled client's thread to end")

        # with a socket timeout, a client that stays connected but never reads is dropped
        access.timeout = 0.3  # read by each new connection
        stalled = socket.socket()
        stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stalled.connect(("127.0.0.1", view.port))
        stalled.sendall(b"GET /cam/0/stream.mjpg HTTP/1.1\r\nHost: x\r\n\r\n")
        wait_until(lambda: cam.watchers == 1, 30.0, "the second stalled viewer")
        feed(30, step=view.view_period)
        wait_until(lambda: cam.watchers == 0, 30.0, "the stalled client to be dropped")
        stalled.close()


@needs_browser
def test_page_in_headless_chromium(tmp_path):
    from selenium.webdriver.common.by import By

    camera = ScriptedCamera()
    view = LineView("127.0.0.1:0", view_fps=10)
    events = tmp_path / "events.jsonl"
    feeder = Feeder(camera, fps=20)
    driver = chromium_driver()
    try:
        with running_loop(tmp_path, camera, [view, EventLog(events)], drop=False):
            feeder.start()
            driver.get(view.url + "/")
            assert driver.current_url.endswith("/cam/0")
            text = lambda element_id: driver.find_element(By.ID, element_id).text
            wait_until(lambda: text("inspected") not in ("", "0"), 10.0, "counters on the page")
            frame = driver.find_element(By.ID, "frame")
            wait_until(lambda: driver.execute_script("return arguments[0].naturalWidth", frame) == 320, 10.0,
                       "the stream in the <img>")
            shots = []
            for _ in range(4):  # the image updates: at least two different frames among four shots
                shots.append(cv2.imdecode(np.frombuffer(frame.screenshot_as_png, np.uint8), cv2.IMREAD_COLOR))
                time.sleep(0.15)
            assert max(np.abs(a.astype(int) - b).max() for a, b in pairwise(shots)) > 20

            first = int(text("inspected"))
            wait_until(lambda: int(text("inspected")) > first, 5.0, "the inspected counter to move")
            assert text("alarms-count") == "0" and not driver.find_elements(By.CSS_SELECTOR, "#alarm-list li")
            assert "test-darkness" in text("model") and "fp32" in text("model") and text("health") == "healthy"

            feeder.defect(1)
            wait_until(lambda: driver.find_elements(By.CSS_SELECTOR, "#alarm-list li"), 10.0, "an alarm listed")
            item = driver.find_element(By.CSS_SELECTOR, "#alarm-list li")
            assert int(item.get_attribute("data-frame")) == feeder.defect_frames[0]
            thumb = item.find_element(By.TAG_NAME, "img")
            wait_until(lambda: driver.execute_script("return arguments[0].naturalWidth", thumb) == 240, 5.0,
                       "the alarm thumbnail")
            # the operator's score on [0, 1], alarm at 0.50 (the default threshold 0.5 shows raw 0.62 as 0.62)
            assert "bottle score 0.62" in item.text and text("alarms-count") == "1"
            assert "(alarm at 0.50)" in text("decision") and "raw threshold 0.5000" in text("model")
            time.sleep(0.6)  # a few more frames after the alarm, for the chart
            shot = tmp_path / "line-view.png"
            driver.save_screenshot(str(shot))
            assert cv2.imread(str(shot)).shape[:2] == (driver.execute_script("return window.innerHeight"),
                                                       driver.execute_script("return window.innerWidth"))
            if os.environ.get("AACLIP_LINE_VIEW_SCREENSHOT"):  # docs/img/line-view.png is made this way
                shutil.copy(shot, os.environ["AACLIP_LINE_VIEW_SCREENSHOT"])
    finally:
        feeder.halt.set()
        driver.quit()
    alarms = [e for e in read_events(events) if e["alarm"]]
    assert [e["frame"] for e in alarms] == feeder.defect_frames


def test_bare_install_needs_none_of_the_extras(tmp_path, monkeypatch):
    import subprocess
    import sys

    code = ("import sys\nimport aaclip.runtime.cli\n"
            "print(sorted(m for m in ('prometheus_client', 'paho', 'selenium', 'http.server', 'aaclip.runtime.web',"
            " 'aaclip.runtime.mqtt', 'aaclip.runtime.webhook') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stderr[-2000:]  # loaded only when asked

    for name in ("prometheus_client", "paho", "paho.mqtt", "paho.mqtt.client"):
        monkeypatch.setitem(sys.modules, name, None)  # import -> ImportError
    view = LineView("127.0.0.1:0")
    try:
        assert view.metrics is None
        status, _, body = get(view.url + "/metrics")
        assert status == 501 and b"pip install 'aaclip-edge[metrics]'" in body
        assert get(view.url + "/healthz")[0] == 503 and get(view.url + "/cam/0")[0] == 200  # the page works
    finally:
        view.close()
    from aaclip.runtime.mqtt import MqttSink

    with pytest.raises(UserError, match=r"--mqtt needs paho-mqtt: pip install 'aaclip-edge\[mqtt\]'"):
        MqttSink("mqtt://127.0.0.1/x")
