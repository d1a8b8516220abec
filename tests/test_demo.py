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


@pytest.mark.parametrize("method", ["clip-ad", "clip-ad-plus", "res2clip", "res2clip-ft"])
def test_demo_runs_with_each_peer_family(tmp_path, monkeypatch, method):
    """aaclip-demo --method NAME: the same stages with another family (one product, a shorter line recording and
    camera run)."""
    from aaclip.demo import cli as demo

    monkeypatch.setattr(demo, "DATASET", dict(classes=["disk"], n_train_normal=3, n_train_anomalous=3, n_test_normal=3,
                                              n_test_anomalous=3))
    monkeypatch.setattr(demo, "CAMERA_PARTS", 2)
    monkeypatch.setattr(demo, "CAMERA_DEFECTIVE_PARTS", frozenset({1}))
    monkeypatch.setattr(demo, "CALIBRATION_PARTS", 4)
    monkeypatch.setattr(demo, "CALIBRATION_FRAMES", 4 * demo.FRAMES_PER_PART)
    s = run_demo(tmp_path, seed=0, method=method)
    manifest = json.loads((tmp_path / "export" / "model.fp32.onnx.manifest.json").read_text())
    config = json.loads((tmp_path / "checkpoint" / "config.json").read_text())
    assert s["method"] == manifest["method"] == config["method"] == method
    assert (s["training"] is None) == (method in ("clip-ad", "res2clip"))
    assert all(s["export"][p]["parity_passed"] for p in ("fp32", "fp16"))
    assert manifest["score"]["source"] == "calibration" and manifest["score"]["calibration"]["frames"] == 32
    rows = [json.loads(line) for line in (tmp_path / "runtime" / "events.jsonl").read_text().splitlines()]
    assert len(rows) == 2 * demo.FRAMES_PER_PART == s["runtime"]["frames"]
    assert all(r["anomalous"] == (r["score"] >= manifest["score"]["threshold"]) for r in rows)
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert report["disk"]["n_images"] == 6 and 0.0 <= report["disk"]["pixel_auroc"] <= 1.0
