"""The real things the line-output tests talk to: a scripted camera, a Mosquitto broker on loopback, a
webhook receiver (http.server on loopback), headless Chromium through Selenium; and their skip marks."""
from __future__ import annotations

import getpass
import http.server
import importlib.util
import json
import queue
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np
import pytest
from aaclip.runtime.sources import Source
from aaclip.runtime.web import BOUNDARY
from runtime_fixtures import frame_image

MOSQUITTO = shutil.which("mosquitto") or shutil.which("mosquitto", path="/usr/sbin:/usr/local/sbin")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if Path("/usr/bin/chromedriver").exists()
                                                else None)


def _module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


needs_prometheus = pytest.mark.skipif(not _module("prometheus_client"),
                                      reason="prometheus_client not installed (pip install '.[metrics]')")
needs_paho = pytest.mark.skipif(not _module("paho"), reason="paho-mqtt not installed (pip install '.[mqtt]')")
needs_mosquitto = pytest.mark.skipif(not MOSQUITTO, reason="mosquitto not installed (apt-get install mosquitto; "
                                                           ".ci/run installs it)")
needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER and _module("selenium")),
    reason="headless Chromium tests need chromium, chromium-driver (apt) and selenium (pip); .ci/run installs them")


def wait_until(condition: Callable[[], bool], timeout: float = 5.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- camera ---------------------------------------------------------------------------------------------
class ScriptedCamera(Source):
    """A live camera whose frames the test pushes; ``read`` waits for the next one (or ``stop``)."""

    def __init__(self, name: str = "line1", live: bool = True):
        self.name, self.is_live, self.fps = name, live, None
        self.frames: queue.Queue = queue.Queue()
        self.stop = threading.Event()  # set to the loop's stop_event
        self.pushed = 0

    def push(self, *images: np.ndarray) -> None:
        for image in images:
            self.frames.put(image)
            self.pushed += 1

    def open(self) -> bool:
        return True

    def read(self):
        while not self.stop.is_set():
            try:
                return True, self.frames.get(timeout=0.02)
            except queue.Empty:
                continue
        return False, None


def moving_part(image: np.ndarray, i: int) -> np.ndarray:
    """A white (never anomalous) part at position ``i`` of 8 on the conveyor: frames that look different."""
    h, w = image.shape[:2]
    x = (w // 8) * (i % 8)
    cv2.rectangle(image, (x, h // 3), (x + w // 10, h // 3 + h // 4), (255, 255, 255), -1)
    return image


class Feeder(threading.Thread):
    """Pushes textured clean frames into a camera at ``fps``; ``defect()`` makes the next frame a defect."""

    def __init__(self, camera: ScriptedCamera, fps: float = 20.0, size: tuple[int, int] = (240, 320)):
        super().__init__(daemon=True)
        self.camera, self.period, self.size = camera, 1.0 / fps, size
        self.halt = threading.Event()
        self._defects = 0
        self.defect_frames: list[int] = []
        self._clean = [moving_part(frame_image(False, size, seed=i), i) for i in range(8)]
        self._defect = frame_image(True, size, seed=99)

    def defect(self, n: int = 1) -> None:
        self._defects += n

    def run(self) -> None:
        i = 0
        while not self.halt.wait(self.period):
            if self._defects:
                self._defects -= 1
                self.defect_frames.append(self.camera.pushed)
                self.camera.push(self._defect)
            else:
                self.camera.push(self._clean[i % len(self._clean)])
            i += 1


# ---- MQTT broker --------------------------------------------------------------------------------------
class Mosquitto:
    """A Mosquitto broker on 127.0.0.1:``port`` with persistence in ``directory`` (restartable)."""

    def __init__(self, directory: Path, users: Optional[dict[str, str]] = None):
        self.port = free_port()
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.config = directory / "mosquitto.conf"
        access = "allow_anonymous true\n"
        if users:  # only these users, their passwords hashed by mosquitto_passwd
            passwords = directory / "passwords"
            passwords.touch(0o600)
            for name, password in users.items():
                subprocess.run([shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd", "-b", str(passwords),
                                name, password], check=True, capture_output=True, timeout=30)
            access = f"allow_anonymous false\npassword_file {passwords}\n"
        # ``user``: as root, mosquitto would drop to user "mosquitto", which cannot write the test's folder
        self.config.write_text(f"user {getpass.getuser()}\nlistener {self.port} 127.0.0.1\n{access}"
                               f"persistence true\n"
                               f"persistence_location {directory}/\nlog_dest file {directory}/mosquitto.log\n")
        self.proc: Optional[subprocess.Popen] = None

    def start(self, timeout: float = 5.0) -> None:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    log = self.directory / "mosquitto.log"
                    raise RuntimeError(f"mosquitto did not start: {log.read_text() if log.exists() else ''}")
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistence file
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def url(self, prefix: str = "factory/line1", **query) -> str:
        q = "&".join(f"{k}={v}" for k, v in query.items())
        return f"mqtt://127.0.0.1:{self.port}/{prefix}" + (f"?{q}" if q else "")


class Subscriber:
    """A paho subscriber with a persistent session (QoS 1 messages survive a broker restart)."""

    def __init__(self, port: int, topic: str, client_id: str = "aaclip-test-sub",
                 credentials: Optional[tuple[str, str]] = None):
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, dict]] = []
        self.subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if credentials:
            self.client.username_pw_set(*credentials)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda c, u, mid, rcs, p: self.subscribed.set()
        self.client.on_message = lambda c, u, m: self.messages.append((m.topic, json.loads(m.payload)))
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.client.loop_start()
        wait_until(self.subscribed.is_set, 5.0, "the subscription")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# ---- webhook receiver ---------------------------------------------------------------------------------
class Receiver:
    """An HTTP server on loopback recording POSTs; ``statuses`` are answered in turn (then 200);
    ``delay_s`` holds each answer back; ``hold`` (an event) holds every answer until it is set."""

    def __init__(self, statuses: tuple[int, ...] = (), delay_s: float = 0.0, hold: Optional[threading.Event] = None):
        self.calls: list[dict] = []
        self.statuses = list(statuses)
        self.answered = 0
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                receiver.calls.append({"body": body, "type": self.headers["Content-Type"], "status": status,
                                       "path": self.path, "headers": dict(self.headers)})
                time.sleep(delay_s)
                if hold is not None:
                    hold.wait()
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                receiver.answered += 1

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()

    def events(self, status: int = 200) -> list[dict]:
        return [json.loads(c["body"]) for c in self.calls if c["status"] == status]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def chromium_driver(width: int = 1280, height: int = 820, page_load: str = "normal"):
    """Headless Chromium (the system's browser and chromedriver) through Selenium. ``page_load="eager"``: ``get``
    returns once the document is parsed (an MJPEG <img> of a camera that sends nothing yet never "loads")."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.page_load_strategy = page_load
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                f"--window-size={width},{height}", "--disable-extensions", "--no-first-run"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


def read_parts(response, n):
    """The next ``n`` JPEG parts of an MJPEG (multipart/x-mixed-replace) response."""
    parts = []
    while len(parts) < n:
        assert response.readline() == f"--{BOUNDARY}\r\n".encode()
        headers = {}
        while (line := response.readline()) != b"\r\n":
            key, _, val = line.decode().partition(":")
            headers[key.lower()] = val.strip()
        assert headers["content-type"] == "image/jpeg"
        parts.append(response.read(int(headers["content-length"])))
        assert response.read(2) == b"\r\n"
    return parts
