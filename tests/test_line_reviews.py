"""Operators close the loop (issue 25): reviews on the line view in headless Chromium, the reviews file, the
threshold refit from it with a hot reload of the running loop, and reviewed frames as training records.

The station is the real one: the darkness graph (runtime_fixtures) on ONNX Runtime, the sinks opened by
``aaclip-runtime``'s own ``open_sinks`` (events, evidence, the line view with ``--reviews``), a conveyor
recording played by the real video source. Its parts are lit a little differently (the normal spread the
threshold is calibrated on); two parts carry a grey stain (darker than any good part: they alarm, and the
operator calls them false alarms) and one a black hole (a real defect).
"""
import json
import logging
import os
import shutil
import threading
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np
import pytest
from aaclip.calibration.cli import cli as calibrate_cli
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import load_manifest, open_artifact
from aaclip.runtime.backends import open_runner
from aaclip.runtime.capture import Backoff
from aaclip.runtime.cli import RunConfig
from aaclip.runtime.service import OutputContext, open_outputs
from aaclip.runtime.loop import CameraLoop, LoopConfig
from aaclip.contract.reviews import ReviewError, current_verdicts, frames_folder, parse_review, read_reviews
from aaclip.runtime.reviews import ReviewLog, allowed
from aaclip.runtime.sources import Source, open_source
from aaclip.runtime.station import ReviewsOutput, load_station
from aaclip.runtime.web import STREAM_WAIT_S
from aaclip.data.cli import main as data_main
from click.testing import CliRunner
from line_fixtures import chromium_driver, read_parts, needs_browser, needs_prometheus, wait_until
from runtime_fixtures import make_onnx_artifact, read_events

SIZE = (96, 128)
LIGHT = (192, 196, 200, 204, 208, 212, 205, 198)  # background grey of the 8 good parts (lighting varies)
STAINS = (3, 8)    # frames of the run whose part carries a grey stain: false alarms
DEFECT = 5         # the frame whose part has a black hole: a real defect
RUN_FRAMES = 11    # parts 0..7 in order, with the stained and the defective parts among them


def part(light: int, seed: int, mark=None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((*SIZE, 3), light, np.uint8)
    img += rng.integers(0, 4, size=(*SIZE, 1), dtype=np.uint8)
    if mark == "stain":
        cv2.circle(img, (SIZE[1] // 3, SIZE[0] // 2), 12, (120, 120, 120), -1)
    elif mark == "hole":
        cv2.circle(img, (2 * SIZE[1] // 3, SIZE[0] // 2), 12, (0, 0, 0), -1)
    return img


def run_frames() -> list[np.ndarray]:
    frames, p = [], 0
    for i in range(RUN_FRAMES):
        mark = "stain" if i in STAINS else "hole" if i == DEFECT else None
        frames.append(part(LIGHT[p % 8], p % 8, mark))
        p += mark is None
    return frames


def write_avi(path: Path, frames) -> Path:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (SIZE[1], SIZE[0]))
    assert writer.isOpened()
    for f in frames:
        writer.write(f)
    writer.release()
    return path


@pytest.fixture(scope="module")
def station(tmp_path_factory):
    """The darkness artifact calibrated on a clean recording of the line (its decoded frames as PNG), and the
    conveyor video of the run."""
    root = tmp_path_factory.mktemp("station")
    artifact = make_onnx_artifact(root)
    clean = write_avi(root / "clean_line.avi", [part(LIGHT[i % 8], i % 8) for i in range(64)])
    good = root / "good"
    good.mkdir()
    source = open_source(str(clean))
    for i in range(64):
        ok, frame = source.read()
        assert ok
        cv2.imwrite(str(good / f"{i:03d}.png"), frame)
    source.release()
    res = CliRunner().invoke(calibrate_cli, ["threshold", str(artifact), "--images", str(good), "--far", "0.01",
                                             "--no-plot"])
    assert res.exit_code == 0, res.output
    video = write_avi(root / "conveyor.avi", run_frames())
    return artifact, good, video


class HeldVideo(Source):
    """The conveyor video played by the runtime's video source, held at its end until ``replay()``: the same
    recording inspected again by the same running loop."""

    def __init__(self, path: Path):
        self.path, self.name, self.is_live, self.fps = path, path.name, False, None
        self.go = threading.Semaphore(0)
        self.stop = threading.Event()
        self.video = None

    def replay(self) -> None:
        self.go.release()

    def open(self) -> bool:
        return True

    def read(self):
        while self.video is None:
            if self.stop.is_set():
                return False, None
            if self.go.acquire(timeout=0.02):
                self.video = open_source(str(self.path))
        ok, frame = self.video.read()
        if not ok:
            self.video.release()
            self.video = None
            return self.read()
        return ok, frame

    def release(self) -> None:
        if self.video is not None:
            self.video.release()


def station_of(artifact: Path, out: Path, video: HeldVideo, view_fps: float = 20.0, users=()):
    """``aaclip-runtime ARTIFACT --camera VIDEO --events --evidence --http --reviews``'s station, its outputs in
    ``out`` as given (relative ones stay relative: short paths on the page)."""
    station = RunConfig(artifact, (str(video.path),), http="127.0.0.1:0", view_fps=view_fps).station()
    station.outputs.events.path, station.outputs.evidence.dir = out / "events.jsonl", out / "evidence"
    station.outputs.reviews.path = out / "reviews.jsonl"
    station.outputs.http.auth.users = list(users)
    return station


@contextmanager
def running_station(artifact: Path, out: Path, video: HeldVideo, view_fps: float = 20.0, users=()):
    """The loop with the outputs ``aaclip-runtime --events --evidence --http --reviews`` opens, in a thread."""
    station = station_of(artifact, out, video, view_fps, users)
    sinks = list(open_outputs(station, OutputContext(station, [video], Backoff())).values())
    view = next(s for s in sinks if s.name == "web")
    m = open_artifact(artifact)
    with open_runner(m, "onnxruntime") as runner:
        # offline mode (every frame) reads the held recording on the loop's thread, which looks at the manifest
        # between frames: here after every frame, so the replay's first frame takes the refitted manifest
        loop = CameraLoop(runner, m, [video], [0], LoopConfig(drop=False, stats_every=0, poll_s=0.02,
                                                              reload_every_s=1e-9), sinks)
        video.stop = loop.stop_event
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        try:
            yield loop, view
        finally:
            loop.stop("test")
            thread.join(10)
            assert not thread.is_alive()


def post(url, body, content_type="application/json", headers=None):
    request = urllib.request.Request(url, json.dumps(body).encode(), {"Content-Type": content_type, **(headers or {})},
                                     method="POST")
    try:
        with urllib.request.urlopen(request, timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        text = e.read()
        return e.code, json.loads(text) if e.headers.get("Content-Type") == "application/json" else text


def strict_lines(path: Path) -> list[dict]:
    def no_constant(name):
        raise ValueError(name)

    text = path.read_text()
    assert text.endswith("\n")
    return [json.loads(line, parse_constant=no_constant) for line in text.splitlines()]


@needs_browser
@needs_prometheus
def test_operators_review_in_chromium_refit_and_hot_reload(station, tmp_path, monkeypatch):
    from prometheus_client.parser import text_string_to_metric_families
    from selenium.webdriver.common.by import By

    artifact, good, video_path = station
    artifact = Path(shutil.copy(artifact, tmp_path / artifact.name))  # the refit rewrites this one's manifest
    shutil.copy(str(station[0]) + ".manifest.json", str(artifact) + ".manifest.json")
    before = load_manifest(artifact).score.threshold
    video = HeldVideo(video_path)
    monkeypatch.chdir(tmp_path)  # outputs given relative, as in a station file: short paths on the page
    driver = chromium_driver(height=1180, page_load="eager")
    reloads = []  # the loop's log (the calibration command re-configures the root logger, caplog's too)
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: reloads.append(record.getMessage())
    logging.getLogger("aaclip.runtime.loop").addHandler(handler)
    try:
        with running_station(artifact, Path("."), video, view_fps=1000) as (loop, view):
            driver.get(view.url + "/cam/0")
            text = lambda element_id: driver.find_element(By.ID, element_id).text
            wait_until(lambda: driver.find_element(By.ID, "reviews").is_displayed(), 10.0, "the reviews panel")
            wait_until(lambda: view.cameras[0].watchers == 1, 10.0, "the page's live view")
            video.replay()  # the first pass of the recording
            wait_until(lambda: view.cameras and view.cameras[0].inspected == RUN_FRAMES, 20.0, "the first pass")
            def cards() -> dict:  # frame -> verdict of the alarm cards, read in one go (the list re-renders)
                return {int(f): v for f, v in driver.execute_script(
                    "return Array.from(document.querySelectorAll('#alarm-list li'))"
                    ".map((li) => [li.dataset.frame, li.dataset.verdict])")}

            wait_until(lambda: len(cards()) == 3, 10.0, "three alarm cards")
            assert sorted(cards()) == sorted((*STAINS, DEFECT)) and set(cards().values()) == {""}

            def click(frame, label):
                button = driver.find_element(By.XPATH, f"//ul[@id='alarm-list']/li[@data-frame='{frame}']"
                                                       f"//button[text()='{label}']")
                button.click()
                wait_until(lambda: cards()[frame] != "", 10.0, f"the verdict on frame {frame}")

            click(STAINS[0], "false alarm")
            click(DEFECT, "real defect")
            click(STAINS[1], "false alarm")
            assert cards() == {STAINS[0]: "false_alarm", STAINS[1]: "false_alarm", DEFECT: "confirmed"}
            wait_until(lambda: (text("confirmed-count"), text("false-count"), text("missed-count")) == ("1", "2", "0"),
                       5.0, "the review counters")
            assert text("precision") == "precision of the reviewed alarms: 33%"
            assert len(driver.find_elements(By.CSS_SELECTOR, "#review-list li")) == 3
            assert text("missed") == f"missed defect (frame {view.cameras[0].on_screen[0].frame})"
            time.sleep(1.5 * STREAM_WAIT_S)  # the stream repeats the last frame after this: the browser shows it
            shot = tmp_path / "line-reviews.png"
            driver.save_screenshot(str(shot))
            if os.environ.get("AACLIP_REVIEWS_SCREENSHOT"):  # docs/img/line-reviews.png is made this way
                shutil.copy(shot, os.environ["AACLIP_REVIEWS_SCREENSHOT"])

            with urllib.request.urlopen(view.url + "/metrics", timeout=5) as r:
                metrics = {f.name: f for f in text_string_to_metric_families(r.read().decode())}
            counts = {s.labels["verdict"]: s.value for s in metrics["aaclip_reviewed_frames"].samples
                      if s.labels["camera"] == video.name}
            assert counts == {"confirmed": 1, "false_alarm": 2, "missed": 0}

            lines = strict_lines(tmp_path / "reviews.jsonl")
            assert [(r["frame"], r["verdict"]) for r in lines] == [
                (STAINS[0], "false_alarm"), (DEFECT, "confirmed"), (STAINS[1], "false_alarm")]
            sha = load_manifest(artifact).sha256
            events = {e["frame"]: e for e in read_events(tmp_path / "events.jsonl")}
            for r in lines:
                assert (r["camera"], r["run"], r["artifact_sha256"], r["class"]) == (video.name, loop.run_id, sha,
                                                                                    "bottle")
                assert r["raw_score"] == pytest.approx(events[r["frame"]]["raw_score"], abs=1e-6)
                assert r["score"] == pytest.approx(events[r["frame"]]["score"], abs=1e-6) and r["score"] >= 0.5
                assert r["raw_score"] >= before and r["threshold"] == before and r["user"] is None
                assert Path(r["evidence"]).parent == frames_folder(Path("reviews.jsonl"))
                assert Path(r["evidence"]).is_file()  # kept with the reviews (a hard link to the evidence)

            # the refit, while the station runs
            res = CliRunner().invoke(calibrate_cli, ["threshold", str(artifact), "--reviews",
                                                     str(tmp_path / "reviews.jsonl"), "--images", str(good)])
            assert res.exit_code == 0, res.output
            after = load_manifest(artifact).score.threshold
            stains = max(r["raw_score"] for r in lines if r["verdict"] == "false_alarm")
            defect = next(r["raw_score"] for r in lines if r["verdict"] == "confirmed")
            assert stains < after <= defect and after == pytest.approx(min(stains + 0.05, (stains + defect) / 2))
            assert f"threshold {before:.6g} -> {after:.6g}" in res.output
            assert "false alarms on the reviewed frames: 2 of 2 -> 0 of 2" in res.output
            assert "catch rate on confirmed defects: 1 of 1 -> 1 of 1" in res.output
            assert "expected false-alarm rate on the good images (images " in res.output
            assert "0.00% (0 of 64) -> 0.00% (0 of 64)" in res.output

            video.replay()  # the same recording again, same loop, same run
            wait_until(lambda: view.cameras[0].inspected == 2 * RUN_FRAMES, 20.0, "the second pass")
            assert loop.summary.reloads == 1
            assert [m for m in reloads if "score constants reloaded" in m] == [
                f"manifest {artifact.name}.manifest.json changed: score constants reloaded (threshold {before:.6g} -> "
                f"{after:.6g})"]
            wait_until(lambda: f"threshold {after:.4f}" in text("model"), 5.0, "the new threshold on the page")
    finally:
        driver.quit()
        logging.getLogger("aaclip.runtime.loop").removeHandler(handler)
    events = read_events(tmp_path / "events.jsonl")
    assert len(events) == 2 * RUN_FRAMES and {e["run"] for e in events} == {loop.run_id}  # no restart
    first, second = events[:RUN_FRAMES], events[RUN_FRAMES:]
    assert [e["frame"] for e in first if e["alarm"]] == sorted((*STAINS, DEFECT))
    assert [e["frame"] - RUN_FRAMES for e in second if e["alarm"]] == [DEFECT]
    assert second[0]["threshold"] == before and all(e["threshold"] == after for e in second[1:])  # reloaded
    for a, b in zip(first, second):  # the same frames, scored alike: only the threshold moved
        assert b["raw_score"] == a["raw_score"]


def test_review_requests_undo_missed_restart_and_records(station, tmp_path):
    """Reviews over HTTP: an alarm confirmed then undone and judged again, a missed defect flagged on the frame
    on screen, bad requests refused; they stand after a restart; aaclip-data reviews makes records of them."""
    artifact, _, video_path = station
    video = HeldVideo(video_path)
    # one view per 1000 s: the first frame after the viewer came is rendered, and stays on screen
    with running_station(artifact, tmp_path, video, view_fps=0.001) as (loop, view):
        with urllib.request.urlopen(view.url + "/cam/0/stream.mjpg", timeout=5) as stream:  # someone watches
            wait_until(lambda: view.cameras and view.cameras[0].watchers == 1, 5.0, "the viewer")
            video.replay()
            wait_until(lambda: view.cameras[0].inspected == RUN_FRAMES, 20.0, "the pass")
            # the one rendered frame, then (the line stopped) the same frame once more: a browser shows a part
            # only when the next begins, and the operator must see the frame a "missed defect" flag names
            first, again = read_parts(stream, 2)
            assert first == again == view.cameras[0].jpeg
        url = view.url + "/cam/0/review"
        state = json.loads(urllib.request.urlopen(view.url + "/cam/0/state.json", timeout=5).read())
        seq = {a["frame"]: a["seq"] for a in state["alarms"]}
        assert post(url, {"verdict": "confirmed", "seq": seq[STAINS[0]]})[0] == 200
        status, answer = post(url, {"verdict": "undo", "run": loop.run_id, "frame": STAINS[0]})
        assert status == 200 and answer["reviews"]["counts"] == {"confirmed": 0, "false_alarm": 0, "missed": 0}
        assert post(url, {"verdict": "false_alarm", "seq": seq[STAINS[0]]})[0] == 200
        assert post(url, {"verdict": "false_alarm", "seq": seq[STAINS[1]]})[0] == 200
        assert post(url, {"verdict": "confirmed", "seq": seq[DEFECT]})[0] == 200
        status, answer = post(url, {"verdict": "missed"})  # the frame on screen now: the pass's first
        assert status == 200 and answer["review"]["verdict"] == "missed" and answer["review"]["frame"] == 0
        missed_frame = 0
        assert post(url, {"verdict": "confirmed", "seq": 999})[0] == 404
        assert post(url, {"verdict": "great"})[0] == 400
        assert post(url, {"verdict": "missed"}, content_type="text/plain")[0] == 415  # no cross-site posts
        assert answer["reviews"]["counts"] == {"confirmed": 1, "false_alarm": 2, "missed": 1}
    reviews_file = tmp_path / "reviews.jsonl"
    lines = strict_lines(reviews_file)
    assert [r["verdict"] for r in lines] == ["confirmed", "undo", "false_alarm", "false_alarm", "confirmed", "missed"]
    missed_png = Path(lines[-1]["evidence"])
    assert missed_png.suffix == ".png" and cv2.imread(str(missed_png)).shape == (SIZE[0], 2 * SIZE[1], 3)
    expected = run_frames()[missed_frame]  # the left half is the frame as decoded: near the drawn one (MJPG)
    assert np.abs(cv2.imread(str(missed_png))[:, : SIZE[1]].astype(int) - expected).mean() < 3

    # a restart: the reviews stand, the page shows them
    video2 = HeldVideo(video_path)
    with running_station(artifact, tmp_path, video2) as (loop2, view2):
        wait_until(lambda: view2.started.is_set(), 5.0, "the loop")
        state = json.loads(urllib.request.urlopen(view2.url + "/cam/0/state.json", timeout=5).read())
        assert state["reviews"]["counts"] == {"confirmed": 1, "false_alarm": 2, "missed": 1}
        assert [r["frame"] for r in state["reviews"]["recent"]] == [missed_frame, DEFECT, STAINS[1], STAINS[0]]
        assert loop2.run_id != loop.run_id

    # one evidence file lost to rotation: reported, not silently dropped
    first_false = next(r for r in lines if r["verdict"] == "false_alarm")
    Path(first_false["evidence"]).unlink()
    out = tmp_path / "data" / "reviewed.jsonl"
    res = CliRunner().invoke(data_main, ["reviews", str(reviews_file), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert f"skipped, evidence missing: {video.name} frame {STAINS[0]}" in res.output
    assert "1 frame(s) whose verdict was undone" not in res.output  # it was judged again: it stands
    assert "1 earlier verdict(s) replaced" not in res.output
    assert "wrote " + str(out) + ": 3 images (1 normal, 2 anomalous, none with a mask) in 1 class" in res.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["label"], r["class_name"]) for r in records] == [(0, "bottle"), (1, "bottle"), (1, "bottle")]
    for r in records:
        image = cv2.imread(str(out.parent / r["image_path"]))
        assert image.shape == (SIZE[0], SIZE[1], 3)  # the frame, not the frame+overlay evidence
    res = CliRunner().invoke(data_main, ["check", str(out)])
    assert res.exit_code == 0 and "bottle       1          2       0      3" in res.output, res.output


def test_train_fits_on_review_records(tmp_path):
    """Records from reviews train the tiny model (aaclip-train fit), duplicates reported."""
    from aaclip.train.train_cli import main as train_main

    frames = frames_folder(tmp_path / "reviews.jsonl")
    frames.mkdir()
    lines = []
    for i, (verdict, mark, p) in enumerate([("false_alarm", "stain", 0), ("confirmed", "hole", 1),
                                            ("false_alarm", None, 2), ("missed", "hole", 0), ("false_alarm", None, 2)]):
        frame = part(LIGHT[p], p, mark)  # the last one repeats the third's pixels: a duplicate
        path = frames / f"f{i}.png"
        cv2.imwrite(str(path), np.hstack([frame, frame]))
        lines.append({"timestamp": "2026-12-07T18:00:00.000+00:00", "camera": "cam", "frame": i, "run": "r1",
                      "class": "bracket", "artifact_sha256": "x" * 64, "raw_score": 1.0, "map_max": 0.5,
                      "cls_score": 0.2, "evidence": str(path), "verdict": verdict, "user": None})
    (tmp_path / "reviews.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    out = tmp_path / "records.jsonl"
    res = CliRunner().invoke(data_main, ["reviews", str(tmp_path / "reviews.jsonl"), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "skipped, duplicate: cam frame 4 (run r1, false alarm" in res.output and "the same pixels as cam frame 2" \
        in res.output
    assert "4 images (2 normal, 2 anomalous" in res.output
    res = CliRunner().invoke(train_main, ["fit", "--data", str(out), "--backbone", "aaclip-tiny", "--random-init", "0",
                                          "--image-size", "64", "--epochs1", "1", "--epochs2", "1", "--max-steps", "2",
                                          "--out", str(tmp_path / "ckpt"), "-q"])
    assert res.exit_code == 0, res.output
    config = json.loads((tmp_path / "ckpt" / "config.json").read_text())
    assert "bracket" in json.dumps(config)


def test_refit_refuses_when_no_threshold_separates(station, tmp_path):
    artifact, _, _ = station
    m = load_manifest(artifact)
    base = {"timestamp": "2026-12-07T18:00:00.000+00:00", "camera": "cam", "run": "r1", "class": "bottle",
            "artifact_sha256": m.sha256, "raw_score": 0.0, "evidence": None, "user": None}
    reviews = tmp_path / "reviews.jsonl"
    reviews.write_text("".join(json.dumps(dict(base, frame=i, verdict=v, map_max=mm, cls_score=0.3)) + "\n"
                               for i, (v, mm) in enumerate([("false_alarm", 0.6), ("confirmed", 0.5)])))
    manifest_before = Path(str(artifact) + ".manifest.json").read_bytes()
    res = CliRunner().invoke(calibrate_cli, ["threshold", str(artifact), "--reviews", str(reviews)])
    assert res.exit_code == 2
    assert res.stderr.startswith("error: no threshold separates the reviews: false alarm cam frame 0 (run r1) scores")
    assert Path(str(artifact) + ".manifest.json").read_bytes() == manifest_before  # nothing written

    # reviews of another artifact are reported and left out; with nothing else the refit refuses
    reviews.write_text(json.dumps(dict(base, frame=0, verdict="false_alarm", map_max=0.6, cls_score=0.3,
                                       artifact_sha256="0" * 64)) + "\n")
    res = CliRunner().invoke(calibrate_cli, ["threshold", str(artifact), "--reviews", str(reviews)])
    assert res.exit_code == 2 and "reviewed on another artifact (sha256 000000000000...)" in res.stderr


def test_reviews_file_rules(tmp_path):
    """Strict lines, the standing verdicts, rotation at max_bytes with the kept files read back, the loopback
    rule."""
    path = tmp_path / "reviews.jsonl"
    log = ReviewLog(ReviewsOutput(path, max_bytes=1024, keep=1, max_frames=2))
    base = {"timestamp": "t", "camera": "cam", "run": "r", "class": "c", "artifact_sha256": "s", "raw_score": 1.0,
            "map_max": 0.5, "cls_score": 0.2, "evidence": None, "user": None}
    for i in range(12):
        log.record(dict(base, frame=i, verdict="false_alarm" if i % 2 else "confirmed"))
    log.record(dict(base, frame=11, verdict="undo"))
    log.close()
    rotated = path.with_name("reviews.jsonl.1")
    assert rotated.is_file() and path.stat().st_size <= 1024 and rotated.stat().st_size <= 1024
    assert not path.with_name("reviews.jsonl.2").exists()  # keep=1: older files deleted
    kept = read_reviews(path, keep=1)
    standing = current_verdicts(kept)
    assert (11 not in {k[2] for k in standing}) and len(kept) < 13  # the oldest lines went with the rotation
    assert log.counts() == {"cam": {"confirmed": 6, "false_alarm": 5, "missed": 0}}  # in memory: all of the run
    reopened = ReviewLog(ReviewsOutput(path, max_bytes=1024, keep=1))
    assert reopened.counts()["cam"]["false_alarm"] == sum(1 for r in standing.values() if r["verdict"] == "false_alarm")
    reopened.close()

    with pytest.raises(ReviewError, match=r"x.jsonl:1: verdict 'maybe'"):
        parse_review(json.dumps(dict(base, frame=1, verdict="maybe")), "x.jsonl:1")
    with pytest.raises(ReviewError, match="not a strict JSON object"):
        parse_review(json.dumps(dict(base, frame=1, verdict="missed", raw_score=float("nan"))), "x")
    station = RunConfig(tmp_path / "m.onnx", ("0",), reviews=path).station()
    with pytest.raises(UserError, match="reviews need the line view: give --http"):
        open_outputs(station, OutputContext(station, [], Backoff()))
    assert allowed("127.0.0.1", False) is None and allowed("::1", False) is None
    assert allowed("::ffff:127.0.0.1", False) is None
    assert "only from this machine" in allowed("10.0.0.7", False) and allowed("10.0.0.7", True) is None


def test_station_file_reviews_section(tmp_path):
    """``[outputs.reviews]``: the path relative to the file, the bounds, their checks; --print-config writes it."""
    from aaclip.runtime.station import ConfigError, station_toml

    text = ('[artifacts.plates]\npath = "plates.onnx"\n[[cameras]]\nsource = "0"\n[outputs.http]\n'
            'listen = "127.0.0.1:8080"\n[outputs.reviews]\npath = "reviews.jsonl"\nmax_bytes = 1048576\nkeep = 5\n')
    (tmp_path / "station.toml").write_text(text)
    (tmp_path / "plates.onnx").write_bytes(b"")
    config = load_station(tmp_path / "station.toml")
    assert config.outputs.reviews == ReviewsOutput(tmp_path / "reviews.jsonl", max_bytes=1 << 20, keep=5,
                                                   max_frames=2000)
    assert '[outputs.reviews]' in station_toml(config) and "keep = 5" in station_toml(config)
    (tmp_path / "station.toml").write_text(text.replace("keep = 5", "keep = -1"))
    with pytest.raises(ConfigError, match=r"line 10.*keep.*write a value >= 0"):
        load_station(tmp_path / "station.toml")


def test_reviews_need_the_pages_credentials(station, tmp_path):
    """With users on the line view (i24's authentication), a review needs the page's credentials and records
    who gave it; a review the disk refuses answers 500 with the reason."""
    import base64

    from aaclip.runtime.http_auth import hash_password

    artifact, _, video_path = station
    video = HeldVideo(video_path)
    basic = {"Authorization": "Basic " + base64.b64encode(b"anna:s3cret").decode()}
    with running_station(artifact, tmp_path, video, users=[f"anna:{hash_password('s3cret')}"]) as (loop, view):
        video.replay()
        wait_until(lambda: view.cameras and view.cameras[0].inspected == RUN_FRAMES, 20.0, "the pass")
        url = view.url + "/cam/0/review"
        request = urllib.request.Request(view.url + "/cam/0/state.json", headers=basic)
        state = json.loads(urllib.request.urlopen(request, timeout=5).read())
        body = {"verdict": "confirmed", "seq": state["alarms"][0]["seq"]}
        assert post(url, body)[0] == 401  # no credentials, even from this machine
        status, answer = post(url, body, headers=basic)
        assert status == 200 and answer["review"]["user"] == "anna"
        view.reviews.close()  # a file that cannot be written: the operator is told, nothing half-written
        status, answer = post(url, {"verdict": "false_alarm", "seq": state["alarms"][1]["seq"]}, headers=basic)
        assert status == 500 and answer["error"].startswith("the review could not be written to ")
    assert [r["user"] for r in strict_lines(tmp_path / "reviews.jsonl")] == ["anna"]


def test_a_reload_that_changes_the_reviews_reopens_the_line_view(tmp_path):
    """SIGHUP: [outputs.reviews] lives in the line view, so a new reviews file reopens the view with it."""
    import copy

    from aaclip.runtime.service import StationReload

    class Loop:  # what the reload asks of the loop here
        def __init__(self):
            self.removed, self.added = [], []

        def replace_sinks(self, old, new):
            self.removed += old
            self.added += new
            for sink in old:
                sink.close()

    running = RunConfig(tmp_path / "m.onnx", ("0",), http="127.0.0.1:0", reviews=tmp_path / "a.jsonl").station()
    ctx = OutputContext(running, [], Backoff())
    sinks = open_outputs(running, ctx)
    new = copy.deepcopy(running)
    new.outputs.reviews.path = tmp_path / "b.jsonl"
    loop = Loop()
    try:
        assert StationReload(lambda: new, running, sinks, ctx)._outputs(loop, new) == ["http", "reviews"]
        assert loop.removed[0].reviews.path == tmp_path / "a.jsonl"
        assert loop.added[0].reviews.path == tmp_path / "b.jsonl" and (tmp_path / "b.jsonl").exists()
    finally:
        for sink in loop.added:
            sink.close()
