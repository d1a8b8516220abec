"""The README's main job: aaclip-demo runs every stage and each stage's outputs are where it says."""
import json

import cv2
import pytest
from aaclip.demo.cli import CALIBRATION_FRAMES, CAMERA_FRAMES, run_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    return out, run_demo(out, seed=0)


def test_demo_summary_and_files(demo):
    out, s = demo
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(s))
    assert (out / "checkpoint" / "adapters.safetensors").is_file()
    # training helps even the tiny random model (the margin is measured in tests/test_training.py)
    assert s["eval"]["pixel_auroc"]["trained"] > s["eval"]["pixel_auroc"]["untrained"]
    for precision in ("fp32", "fp16"):
        assert s["export"][precision]["parity_passed"] is True


def test_demo_calibration_is_in_the_manifest(demo):
    out, s = demo
    manifest = json.loads((out / "export" / "model.fp32.onnx.manifest.json").read_text())
    score = manifest["score"]
    assert score["source"] == "calibration" and score["threshold"] == s["calibration"]["threshold"]
    assert score["calibration"]["frames"] == CALIBRATION_FRAMES
    assert (out / "calibration" / "scores.png").is_file()


def test_demo_runtime_outputs(demo):
    out, s = demo
    rt = s["runtime"]
    rows = [json.loads(line) for line in (out / "runtime" / "events.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(CAMERA_FRAMES)) and rt["frames"] == CAMERA_FRAMES
    threshold = s["calibration"]["threshold"]
    assert all(r["anomalous"] == (r["score"] >= threshold) for r in rows)  # decisions use the calibration
    assert rt["anomalous_frames"] == sum(r["anomalous"] for r in rows)
    evidence = sorted((out / "runtime" / "evidence").glob("*"))
    assert len(evidence) == sum(r["alarm"] for r in rows)
    cap = cv2.VideoCapture(str(out / "runtime" / "annotated.avi"))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == CAMERA_FRAMES
    cap.release()
