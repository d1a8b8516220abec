"""Source URIs, GStreamer detection, image folders and looping files."""
import cv2
import pytest
from aaclip.contract.errors import UserError
from aaclip.runtime import sources as src
from aaclip.runtime.sources import (
    CaptureSource,
    ImageFolderSource,
    csi_pipeline,
    gstreamer_available,
    open_source,
    parse_source,
)
from runtime_fixtures import frame_image, write_video

WITH_GST = "  Video I/O:\n    FFMPEG:    YES\n    GStreamer:                   YES (1.16.3)\n"
WITHOUT_GST = "  Video I/O:\n    FFMPEG:    YES\n    GStreamer:                   NO\n"


def test_gstreamer_detection_from_build_information():
    assert gstreamer_available(WITH_GST) is True
    assert gstreamer_available(WITHOUT_GST) is False
    assert gstreamer_available("no video section at all") is False


def test_pipeline_without_gstreamer_says_so(monkeypatch):
    monkeypatch.setattr(src.cv2, "getBuildInformation", lambda: WITHOUT_GST)
    for spec in ("videotestsrc ! videoconvert ! appsink", "csi://0"):
        with pytest.raises(UserError, match=r"needs GStreamer.*'GStreamer: NO'.*pip uninstall opencv-python"):
            parse_source(spec)


def test_parse_specs(monkeypatch, tmp_path):
    monkeypatch.setattr(src.cv2, "getBuildInformation", lambda: WITH_GST)
    s = parse_source("0")
    assert isinstance(s, CaptureSource) and s.target == 0 and s.is_live and s.name == "camera0"
    for spec in ("/dev/video2", "v4l2:///dev/video2"):
        s = parse_source(spec)
        assert (s.target, s.api, s.is_live, s.name) == ("/dev/video2", cv2.CAP_V4L2, True, "video2")
    s = parse_source("rtsp://admin:secret@10.0.0.5:554/stream1")
    assert s.api == cv2.CAP_FFMPEG and s.is_live and s.name == "rtsp://10.0.0.5:554/stream1"
    assert s.params[:2] == [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, src.DEFAULT_OPEN_TIMEOUT_MS]
    assert parse_source("https://cam.local/video.mjpg").is_live
    s = parse_source("csi://1?width=1280&height=720&fps=60")
    assert s.api == cv2.CAP_GSTREAMER and s.name == "csi1"
    assert s.target == csi_pipeline(1, 1280, 720, 60)
    assert "nvarguscamerasrc sensor-id=1" in s.target and "width=(int)1280" in s.target and s.target.endswith(
        "appsink drop=true max-buffers=1 sync=false")
    s = parse_source("videotestsrc ! appsink")
    assert s.api == cv2.CAP_GSTREAMER and s.target == "videotestsrc ! appsink" and s.is_live
    video = write_video(tmp_path / "v.avi", 3)
    for spec in (str(video), f"file://{video}"):
        s = parse_source(spec)
        assert isinstance(s, CaptureSource) and s.target == str(video) and not s.is_live
    with pytest.raises(UserError, match="not found"):
        parse_source(str(tmp_path / "missing.mp4"))
    with pytest.raises(UserError, match="unknown camera scheme 'ftp'"):
        parse_source("ftp://x/y")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(UserError, match="holds no images"):
        parse_source(str(empty))


def test_video_file_reads_and_loops(tmp_path):
    video = write_video(tmp_path / "v.avi", 3)
    s = open_source(str(video))
    assert [s.read()[0] for _ in range(4)] == [True, True, True, False]
    s = open_source(str(video), loop=True)
    frames = [s.read() for _ in range(7)]
    assert all(ok and f.shape == (96, 128, 3) for ok, f in frames)
    s.release()


def test_image_folder_order_and_unreadable(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    cv2.imwrite(str(folder / "b.png"), frame_image(True))
    cv2.imwrite(str(folder / "a.png"), frame_image(False))
    (folder / "c.jpg").write_bytes(b"not an image")
    (folder / "notes.txt").write_text("ignored")
    s = open_source(str(folder))
    assert isinstance(s, ImageFolderSource) and [p.name for p in s.files] == ["a.png", "b.png", "c.jpg"]
    (ok0, f0), (ok1, f1), (ok2, f2), (ok3, f3) = [s.read() for _ in range(4)]
    assert ok0 and f0.min() >= 200 and ok1 and f1.min() == 0   # clean, then the defect
    assert ok2 and f2 is None                                   # unreadable: skip and count
    assert not ok3                                              # end
    s = open_source(str(folder / "a.png"), loop=True)
    assert all(s.read()[0] for _ in range(3))


def test_undecodable_video_is_an_error(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\0" * 100)
    with pytest.raises(UserError, match="cannot open .*bad.mp4"):
        open_source(str(bad))
