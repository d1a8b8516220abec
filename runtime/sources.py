"""Video sources as URIs, one small class each (the jetson-inference convention).

``open_source(spec)`` understands what production lines have::

    0, 1, ...                 device index (V4L2 on Linux)
    /dev/video0               V4L2 device path (also v4l2:///dev/video0)
    csi://0                   Jetson CSI camera (builds an nvarguscamerasrc pipeline; ?width=&height=&fps=&flip=)
    rtsp://..., rtmp://...    network streams (FFmpeg)
    http://..., https://...   MJPEG/HLS streams (FFmpeg)
    file://x.mp4, x.mp4       video file
    a directory, an image     image folder (sorted by name) or a single image
    '... ! ... ! appsink'     any string containing '!' is a GStreamer pipeline

Every source has ``name``, ``is_live``, ``open() -> bool``, ``read() -> (ok, frame)`` and ``release()``.
``read`` returns ``(True, frame)`` for a frame, ``(True, None)`` for an unreadable frame (skip it), and
``(False, None)`` when no frame came: end of a file (when not looping) or a failed/stalled live source
(reconnect it).

``open_source`` fails fast: a live source that delivers no first frame within its open timeout, a video
file OpenCV cannot decode and a folder without a readable image are ``SourceError``s (exit 2, the source
or the skipped files named); ``wait=True`` (``--wait-for-source``) instead hands back a live source that is
not up yet, for the loop to keep trying. OpenCV's own console messages are silenced
(``aaclip.contract.cli.setup_logging``; ``-v`` lets them through).
"""
from __future__ import annotations

import logging
import re
import threading
import time
from pathlib import Path
from typing import Optional, Sequence
from urllib.parse import parse_qs, urlsplit

import cv2
import numpy as np
from aaclip.contract.errors import UserError
from aaclip.contract.files import image_files, is_image_file, name_some
from aaclip.contract.images import ImageError, read_image

log = logging.getLogger(__name__)

NETWORK_SCHEMES = ("rtsp", "rtsps", "rtmp", "http", "https", "udp", "tcp")
DEFAULT_OPEN_TIMEOUT_MS = 10_000
DEFAULT_READ_TIMEOUT_MS = 5_000

Frame = Optional[np.ndarray]
RETRY_OPEN_S = 0.5  # how often a live source that is not up is retried while opening


class SourceError(UserError):
    """A source that cannot deliver (never opened, nothing readable); the message names it and why."""


class NoFirstFrame(SourceError):
    """A live source without a first frame within its open timeout."""


class Source:
    """One video source. Subclasses implement ``open``, ``read`` and ``release``."""

    name: str = "source"
    is_live: bool = False
    fps: Optional[float] = None  # nominal frame rate when the source knows it
    frame_file: Optional[str] = None  # the file the last read frame came from (image folders), for events

    def open(self) -> bool:
        """(Re)open the source; True when it delivers frames."""
        raise NotImplementedError

    def read(self) -> tuple[bool, Frame]:
        raise NotImplementedError

    def release(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r}, live={self.is_live})"


class CaptureSource(Source):
    """Anything ``cv2.VideoCapture`` opens: devices, files, network streams, GStreamer pipelines."""

    def __init__(self, target: int | str, name: str, is_live: bool, api: int = cv2.CAP_ANY,
                 params: Sequence[int] = (), loop: bool = False):
        self.target = target
        self.name = name
        self.is_live = is_live
        self.api = api
        self.params = list(params)
        self.loop = loop and not is_live
        self._cap: Optional[cv2.VideoCapture] = None
        self._held: Frame = None  # the first frame, read while opening; the next read() returns it

    def hold(self, frame: np.ndarray) -> None:
        self._held = frame

    def open(self) -> bool:
        self.release()
        cap = cv2.VideoCapture(self.target, self.api, self.params) if self.params else \
            cv2.VideoCapture(self.target, self.api)
        if not cap.isOpened():
            cap.release()
            return False
        self._cap = cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if fps and 0 < fps < 1000 else None
        return True

    def read(self) -> tuple[bool, Frame]:
        if self._held is not None:
            frame, self._held = self._held, None
            return True, frame
        if self._cap is None:
            return False, None
        ok, frame = self._cap.read()
        if not ok and self.loop:  # end of file: rewind, or reopen when the container cannot seek
            self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
            ok, frame = self._cap.read()
            if not ok and self.open():
                ok, frame = self._cap.read()
        if not ok:
            return False, None
        if frame is None or frame.size == 0:
            return True, None
        return True, frame

    def release(self) -> None:
        self._held = None
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class ImageFolderSource(Source):
    """Image files read in name order; an unreadable file is reported as an unreadable frame."""

    def __init__(self, files: Sequence[Path], name: str, loop: bool = False, folder: Optional[Path] = None):
        self.files = list(files)
        self.name = name
        self.loop = loop
        self.folder = folder  # file names in events are relative to it
        self._next = 0
        self._warned: set = set()  # unreadable files, each named once

    def open(self) -> bool:
        self._next = 0
        return bool(self.files)

    def read(self) -> tuple[bool, Frame]:
        if self._next >= len(self.files):
            if not self.loop or not self.files:
                return False, None
            self._next = 0
        path = self.files[self._next]
        self._next += 1
        self.frame_file = path.relative_to(self.folder).as_posix() if self.folder is not None else path.name
        try:
            frame, _ = read_image(path)
        except ImageError as exc:  # counted as an unreadable frame by the reader
            if path not in self._warned:
                self._warned.add(path)
                log.warning("%s: skipped %s (%s)", self.name, self.frame_file, exc)
            return True, None
        return True, frame

    def check_readable(self) -> None:
        """Refuse a folder of which no image can be read, naming each file and why (reads up to the first
        readable one; unreadable files before it are each warned about once)."""
        skipped = []
        for path in self.files:
            try:
                read_image(path)
                return
            except ImageError as exc:
                why = str(exc).removeprefix(f"{path}: ")
                skipped.append(f"{path.name} ({why})" if len(skipped) < 5 else path.name)
        where = self.folder if self.folder is not None else self.name
        others = ""
        if self.folder is not None:
            names = sorted(p.name for p in self.folder.iterdir() if p.is_file() and not is_image_file(p))
            others = f"; not images: {name_some(names)}" if names else ""
        raise SourceError(f"camera {where}: no readable image; skipped {name_some(skipped)}{others}")


def gstreamer_available(build_info: Optional[str] = None) -> bool:
    """True when this cv2 was built with GStreamer (parsed from ``cv2.getBuildInformation()``)."""
    info = cv2.getBuildInformation() if build_info is None else build_info
    m = re.search(r"^\s*GStreamer:\s*(\S+)", info, re.MULTILINE)
    return bool(m and m.group(1).upper().startswith("YES"))


def require_gstreamer(spec: str, build_info: Optional[str] = None) -> None:
    if not gstreamer_available(build_info):
        raise UserError(
            f"camera {spec!r} needs GStreamer, but this OpenCV ({cv2.__version__}, {Path(cv2.__file__).parent}) "
            "was built without it (cv2.getBuildInformation() says 'GStreamer: NO'). On Jetson a pip "
            "opencv-python wheel is shadowing JetPack's OpenCV: pip uninstall opencv-python "
            "opencv-python-headless and keep the system one (see runtime/README.md)")


def csi_pipeline(sensor_id: int = 0, width: int = 1920, height: int = 1080, fps: int = 30, flip: int = 0) -> str:
    """GStreamer pipeline for a Jetson CSI camera (nvarguscamerasrc) delivering BGR frames to OpenCV."""
    return (f"nvarguscamerasrc sensor-id={sensor_id} ! "
            f"video/x-raw(memory:NVMM), width=(int){width}, height=(int){height}, framerate=(fraction){fps}/1 ! "
            f"nvvidconv flip-method={flip} ! video/x-raw, format=(string)BGRx ! "
            "videoconvert ! video/x-raw, format=(string)BGR ! appsink drop=true max-buffers=1 sync=false")


def _public_name(spec: str) -> str:
    """The spec without credentials (rtsp://user:pass@host -> rtsp://host) for logs and events."""
    return re.sub(r"(//)[^/@]*@", r"\1", spec)


def _network_params(open_timeout_ms: int, read_timeout_ms: int) -> list[int]:
    return [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(open_timeout_ms), cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(read_timeout_ms)]


def parse_source(spec: str | int, loop: bool = False, open_timeout_ms: int = DEFAULT_OPEN_TIMEOUT_MS,
                 read_timeout_ms: int = DEFAULT_READ_TIMEOUT_MS) -> Source:
    """Build (without opening) the source for ``spec``; raises UserError for what cannot exist."""
    spec = str(spec).strip()
    if not spec:
        raise UserError("empty --camera; give a device index, a path, a URL or a GStreamer pipeline")
    if "!" in spec:
        require_gstreamer(spec)
        return CaptureSource(spec, name="gstreamer", is_live=True, api=cv2.CAP_GSTREAMER)
    if spec.isdigit():
        return CaptureSource(int(spec), name=f"camera{spec}", is_live=True)
    lower = spec.lower()
    scheme = lower.split("://", 1)[0] if "://" in lower else ""
    if scheme == "csi":
        parts = urlsplit(spec)
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        sensor = (parts.netloc or parts.path.strip("/") or "0")
        if not sensor.isdigit():
            raise UserError(f"bad CSI camera {spec!r}; write csi://0 (sensor id), optionally ?width=&height=&fps=&flip=")
        try:
            pipeline = csi_pipeline(int(sensor), int(q.get("width", 1920)), int(q.get("height", 1080)),
                                    int(q.get("fps", 30)), int(q.get("flip", 0)))
        except ValueError:
            raise UserError(f"bad CSI camera options in {spec!r}; width/height/fps/flip are integers") from None
        require_gstreamer(spec)
        return CaptureSource(pipeline, name=f"csi{sensor}", is_live=True, api=cv2.CAP_GSTREAMER)
    if scheme == "v4l2" or lower.startswith("/dev/video"):
        path = spec[len("v4l2://"):] if scheme == "v4l2" else spec
        return CaptureSource(path, name=Path(path).name, is_live=True, api=cv2.CAP_V4L2)
    if scheme in NETWORK_SCHEMES:
        return CaptureSource(spec, name=_public_name(spec), is_live=True, api=cv2.CAP_FFMPEG,
                             params=_network_params(open_timeout_ms, read_timeout_ms))
    if scheme and scheme != "file":
        raise UserError(f"unknown camera scheme {scheme!r} in {spec!r}; use csi://, v4l2://, rtsp://, http(s)://, "
                        "file://, a device index, a path or a GStreamer pipeline")
    path = Path(spec[len("file://"):] if scheme == "file" else spec).expanduser()
    if path.is_dir():
        return ImageFolderSource(image_files(path), name=path.name or str(path), loop=loop, folder=path)
    if not path.exists():
        raise UserError(f"camera source {spec!r} not found: not a device index, URL, pipeline or existing path")
    if is_image_file(path):
        return ImageFolderSource([path], name=path.name, loop=loop)
    return CaptureSource(str(path), name=path.name, is_live=False, loop=loop)


def open_source(spec: str | int, loop: bool = False, open_timeout_ms: int = DEFAULT_OPEN_TIMEOUT_MS,
                read_timeout_ms: int = DEFAULT_READ_TIMEOUT_MS, wait: bool = False,
                stop: Optional[threading.Event] = None) -> Source:
    """Parse and open ``spec``, failing fast (``SourceError``): a file that cannot be opened, a folder with no
    readable image, a live source without a first frame within ``open_timeout_ms`` (retried every
    ``RETRY_OPEN_S``; that frame is kept for the first ``read``). ``wait``: a live source that is not up yet is
    returned unopened, and the loop keeps trying it. ``stop`` set while waiting: returned unopened."""
    source = parse_source(spec, loop=loop, open_timeout_ms=open_timeout_ms, read_timeout_ms=read_timeout_ms)
    if not source.is_live:
        if isinstance(source, ImageFolderSource):
            source.check_readable()
        if not source.open():
            raise SourceError(f"cannot open {spec!r}: not a video this OpenCV can decode "
                              f"(FFmpeg/codec support missing or file damaged)")
        return source
    if wait:
        if not source.open():
            log.warning("%s: not available yet; waiting for it (--wait-for-source)", source.name)
        return source
    assert isinstance(source, CaptureSource)
    timeout_s = open_timeout_ms / 1000.0
    deadline = time.monotonic() + timeout_s
    tries = 0
    while True:
        tries += 1
        if source.open():
            ok, frame = source.read()
            if ok and frame is not None:
                source.hold(frame)
                return source
            source.release()
        left = deadline - time.monotonic()
        if stop is not None and stop.is_set():
            return source
        if left <= 0:
            break
        if stop is not None and stop.wait(min(RETRY_OPEN_S, left)):
            return source
        if stop is None:
            time.sleep(min(RETRY_OPEN_S, left))
    raise NoFirstFrame(f"camera {source.name} delivered no frame within {timeout_s:g} s ({tries} tries): check its "
                       "index or URL, cable and power, and that no other program holds it")
