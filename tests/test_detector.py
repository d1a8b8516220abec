"""The ``Detector`` Python API: the README's example runs as written; its predictions are the camera loop's
decisions of the same frames; it never imports torch."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import aaclip.runtime
import cv2
import numpy as np
import pytest
from aaclip.contract.errors import UserError
from aaclip.runtime import Detector
from aaclip.runtime.cli import main
from click.testing import CliRunner
from runtime_fixtures import frame_image, make_onnx_artifact, read_events, write_video

README = Path(__file__).resolve().parents[1] / "README.md"
ROOT = Path(aaclip.runtime.__file__).parents[2]


def readme_example() -> str:
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    example = [b for b in blocks if "from aaclip.runtime import Detector" in b]
    assert len(example) == 1, "the README's Detector example is gone or doubled"
    return example[0]


def test_readme_example_runs_as_written(tmp_path):
    code = readme_example()
    assert len(code.strip().splitlines()) <= 10
    make_onnx_artifact(tmp_path, "plates.onnx", classes=("plate",))
    cv2.imwrite(str(tmp_path / "part.png"), frame_image(True, (120, 160)))
    write_video(tmp_path / "line.avi", 12, defect_frames=(4, 5, 9))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    m = re.fullmatch(r"score (\S+) \(raw (\S+)\), alarm True", lines[0])
    assert m and 0.60 < float(m.group(2)) < 0.64  # the black disc: map_max ~1, cls ~0.25
    assert [re.match(r"alarm on frame (\d+)", x).group(1) for x in lines[1:]] == ["4", "5", "9"]


def test_predictions_are_the_loops_decisions(tmp_path):
    art = make_onnx_artifact(tmp_path, "caps.onnx", classes=("a", "b"), class_offsets=(0.0, 0.1))
    video = write_video(tmp_path / "v.avi", 14, defect_frames=(2, 3, 4, 8, 11, 12))
    events = tmp_path / "ev.jsonl"
    r = CliRunner().invoke(main, [str(art), "--camera", str(video), "--class", "b", "--debounce", "2",
                                  "--events", str(events), "-q"])
    assert r.exit_code == 0, r.output
    loop = read_events(events)
    with Detector(art, class_name="b", debounce=2) as detector:
        streamed = list(detector.stream(video))
        cap = cv2.VideoCapture(str(video))
        frames = [cap.read()[1] for _ in range(14)]
        predicted = detector.predict(frames)
    for results in (streamed, predicted):
        assert len(results) == len(loop) == 14
        for p, e in zip(results, loop):
            assert (p.frame, p.class_name, p.state, p.onset, p.threshold) == (
                e["frame"], e["class"], e["decision"], e["onset"], e["threshold"])
            assert p.score == pytest.approx(e["score"], abs=1e-6)
            assert p.raw_score == pytest.approx(e.get("raw_score", e["score"]), abs=1e-6)
    assert [p.frame for p in streamed if p.alarm] == [3, 4, 12]


def test_predict_shapes_maps_and_refusals(tmp_path):
    art = make_onnx_artifact(tmp_path, "caps.onnx", classes=("a", "b"), class_offsets=(0.0, 0.1))
    with pytest.raises(UserError, match="several classes; give class_name= one of a, b"):
        Detector(art)
    with pytest.raises(UserError, match="unknown class 'c'"):
        Detector(art, class_name="c")
    good, bad = frame_image(False, (90, 120)), frame_image(True, (90, 120))
    with Detector(art, class_name="a", maps=True, threshold=0.4) as detector:
        one = detector.predict(bad)
        assert one.alarm and one.map.shape == (64, 64) and one.map.max() == pytest.approx(one.map_max, abs=1e-6)
        many = detector.predict(np.stack([good, bad] * 9))  # 18 frames: more than one batch of 8
        assert [p.alarm for p in many] == [False, True] * 9 and [p.frame for p in many] == list(range(1, 19))
        assert detector.predict([good])[0].threshold == 0.4


def test_detector_is_torch_free(tmp_path):
    art = make_onnx_artifact(tmp_path, "plates.onnx")
    code = ("import sys, numpy as np\nfrom aaclip.runtime import Detector\n"
            f"d = Detector({str(art)!r})\nd.predict(np.full((64, 64, 3), 200, np.uint8))\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'open_clip')))")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr
