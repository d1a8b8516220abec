"""A model family in a folder of its own (``tests/toy_family/``, the shape of ``train/families/<family>/``)
goes through the whole pipeline: importing that package is all it takes.

The toy family ("toy") scores each patch of the frozen CLIP's image tower as ``head(token) + <token, t>``
(see ``toy_family``). It trains on the training driver with a per-patch BCE loss (aaclip-train fit --method
toy), exports through the generic deploy graph (aaclip.export), is calibrated on synthetic normal frames
(calibrate_artifact) and runs in the camera loop (aaclip-runtime) without any other module knowing it.
Its backbone runs QuickGELU with a bilinear position-embedding resize, unlike AA-CLIP's defaults.
"""
from __future__ import annotations

import json
import sys

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from aaclip.contract.score import image_score  # noqa: E402
from aaclip.train.families import family_names, get_family, unregister_family  # noqa: E402
from click.testing import CliRunner  # noqa: E402

SIZE = 64
CLASSES = {"disk": "metal disk", "wood": "wooden board"}


@pytest.fixture(scope="module", autouse=True)
def toy_family():
    """Import the folder (which registers the family), and forget both afterwards."""
    assert "toy" not in family_names()
    import toy_family

    assert get_family("toy") is toy_family.FAMILY
    yield toy_family.FAMILY
    unregister_family("toy")
    for name in [m for m in sys.modules if m == "toy_family" or m.startswith("toy_family.")]:
        del sys.modules[name]


# ---- the pipeline --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    from aaclip.train.common.backbone import write_random_weights
    from aaclip.data.synth import generate_dataset

    root = tmp_path_factory.mktemp("toy")
    paths = generate_dataset(root / "data", classes=list(CLASSES), image_size=SIZE, n_train_normal=6,
                             n_train_anomalous=10, n_test_normal=3, n_test_anomalous=3, seed=5)
    write_random_weights("aaclip-tiny", root / "clip.safetensors", seed=0)
    return root, paths


@pytest.fixture(scope="module")
def trained(workspace):
    from aaclip.train.train_cli import main as train_main

    root, paths = workspace
    out = root / "ckpt"
    args = ["fit", "--method", "toy", "--data", paths["train"], "--backbone", "aaclip-tiny", "--clip-weights",
            root / "clip.safetensors", "--image-size", SIZE, "--out", out, "--object-name", "wood=oak plank",
            "--set", "tap=3", "--option", "steps=12", "-q"]
    res = CliRunner().invoke(train_main, [str(a) for a in args])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="module")
def exported(trained, tmp_path_factory):
    from aaclip.export.onnx_export import export_onnx

    return export_onnx(trained, tmp_path_factory.mktemp("art") / "toy.onnx")


def test_training_writes_a_toy_checkpoint_and_lowers_the_loss(trained):
    config = json.loads((trained / "config.json").read_text())
    assert config["method"] == "toy" and config["tap"] == 3
    assert config["classes"] == {"disk": "metal disk", "wood": "oak plank"}
    assert (config["backbone"]["activation"], config["backbone"]["pos_embed_resize"]) == ("quickgelu", "bilinear")
    losses = [json.loads(line)["loss"] for line in (trained / "history.jsonl").read_text().splitlines()]
    assert len(losses) == 12
    assert np.mean(losses[-3:]) < 0.7 * np.mean(losses[:3]), losses

    from aaclip.train.checkpoint import load_checkpoint
    from toy_family.model import ToyModel

    model = load_checkpoint(trained)
    assert isinstance(model, ToyModel) and model.tap == 3
    assert set(model.trainable_state_dict()) == {"head.weight", "head.bias"}
    assert model.clip.visual.transformer.resblocks[0].mlp.gelu.__class__.__name__ == "QuickGELU"


def test_toy_training_options_are_the_familys(workspace, tmp_path):
    from aaclip.train.train_cli import main as train_main

    root, paths = workspace
    args = ["fit", "--method", "toy", "--data", paths["train"], "--backbone", "aaclip-tiny", "--random-init", "0",
            "--image-size", SIZE, "--out", tmp_path / "x", "--epochs1", "3"]
    res = CliRunner().invoke(train_main, [str(a) for a in args])
    assert res.exit_code == 2
    assert res.stderr.strip() == ("error: toy training has no option 'stage1_epochs'; its options: steps, lr, batch, "
                                  "seed, device")


def test_eval_runs_the_toy_model(trained, workspace, tmp_path):
    from aaclip.train.eval_cli import main as eval_main

    _, paths = workspace
    res = CliRunner().invoke(eval_main, ["--checkpoint", str(trained), "--data", str(paths["test"]), "--out", str(tmp_path),
                                         "--method", "toy", "-q"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert set(report) == {"disk", "wood", "mean"} and report["disk"]["n_images"] == 6


def test_export_graph_matches_the_toy_predict(exported, trained):
    from aaclip.contract.manifest import load_manifest
    from aaclip.export.graph import reference_preprocess
    from aaclip.export.onnx_export import compute_anchors
    from aaclip.export.verify import VerifyOptions, verify_artifact
    from aaclip.runtime.backends.onnxruntime import OnnxRuntimeRunner
    from aaclip.train.checkpoint import load_checkpoint
    from aaclip.data.synth import draw_product

    manifest = load_manifest(exported.path)
    assert manifest.method == "toy" and manifest.classes == ("disk", "wood") and manifest.class_input == "class_id"
    assert manifest.data["score"] == get_family("toy").default_score(None).to_block("default")

    model = load_checkpoint(trained)
    constants = compute_anchors(model, ["metal disk", "oak plank"])
    assert constants.shape == (2, model.clip.visual.output_dim)
    rng = np.random.default_rng(0)
    frames = np.stack([draw_product(c, rng, SIZE) for c in ("disk", "wood", "wood")])
    ids = np.array([0, 1, 0], np.int64)
    with OnnxRuntimeRunner(exported.path, providers=["CPUExecutionProvider"]) as runner:
        out = {k: np.array(v) for k, v in runner.infer({"image": frames, "class_id": ids}).items()}
    with torch.no_grad():
        ref_map, ref_cls = model.predict(reference_preprocess(frames, (SIZE, SIZE), SIZE), constants[ids])
    span = float(ref_map.max() - ref_map.min())
    assert np.abs(out["anomaly_map"] - ref_map.numpy()).max() <= 1e-5 * span
    assert np.abs(out["cls_score"] - ref_cls.numpy()).max() <= 1e-5
    np.testing.assert_allclose(out["map_max"], ref_map.numpy().reshape(3, -1).max(axis=1), atol=1e-5 * span, rtol=0)
    with torch.no_grad():  # the class really selects the constants
        other, _ = model.predict(reference_preprocess(frames[:1], (SIZE, SIZE), SIZE), constants[1])
    assert np.abs(out["anomaly_map"][0] - other.numpy()[0]).max() > 1e-3 * span
    assert verify_artifact(exported.path, trained, VerifyOptions(frames=4)).passed  # the export verifier, unchanged


def test_calibrated_toy_artifact_runs_in_the_camera_loop(exported, tmp_path):
    from aaclip.calibration.inputs import folder_input
    from aaclip.calibration.score_calibration import ThresholdOptions, calibrate_artifact
    from aaclip.contract.manifest import load_manifest
    from aaclip.runtime.backends.onnxruntime import OnnxRuntimeRunner
    from aaclip.runtime.cli import main as runtime_main
    from aaclip.data.synth import add_defect, draw_product

    rng = np.random.default_rng(1)
    normals = tmp_path / "normals"
    normals.mkdir()
    for i in range(24):
        cv2.imwrite(str(normals / f"{i:03d}.png"), draw_product("disk", rng, SIZE))
    result = calibrate_artifact(exported.path, folder_input(normals, 0),
                                options=ThresholdOptions(far=0.05, backend="onnxruntime"))
    manifest = load_manifest(exported.path)
    assert manifest.calibrated and manifest.score.threshold == result.score["threshold"]
    assert result.score["calibration"]["frames"] == 24
    assert manifest.score != get_family("toy").default_score(None)

    camera = tmp_path / "camera"
    camera.mkdir()
    frames = []
    for i in range(6):
        frame = draw_product("disk", rng, SIZE)
        if i in (2, 4):
            frame, _ = add_defect(frame, rng)
        cv2.imwrite(str(camera / f"{i:03d}.png"), frame)
        frames.append(cv2.imread(str(camera / f"{i:03d}.png")))
    events = tmp_path / "events.jsonl"
    res = CliRunner().invoke(runtime_main, [str(exported.path), "--camera", str(camera), "--class", "disk",
                                            "--no-drop", "--backend", "onnxruntime", "--events", str(events), "-q"])
    assert res.exit_code == 0, res.output
    rows = [json.loads(line) for line in events.read_text().splitlines()]
    assert [r["frame"] for r in rows] == list(range(6))
    with OnnxRuntimeRunner(exported.path, providers=["CPUExecutionProvider"]) as runner:
        out = runner.infer({"image": np.stack(frames), "class_id": np.zeros(6, np.int64)})
        expected = image_score(np.array(out["map_max"]), np.array(out["cls_score"]), manifest.score)
    for row, score in zip(rows, expected):
        assert row["threshold"] == manifest.score.threshold
        assert row["raw_score"] == pytest.approx(float(score), abs=1e-5)
        assert row["anomalous"] == (row["raw_score"] >= manifest.score.threshold) == (row["score"] >= 0.5)


def test_random_toy_checkpoint_and_unknown_methods(tmp_path):
    from aaclip.benchmarks.cli import main as bench_main
    from aaclip.train.checkpoint import load_checkpoint, random_checkpoint
    from aaclip.train.train_cli import main as train_main
    from toy_family.model import ToyModel

    ckpt = random_checkpoint(tmp_path / "r", method="toy", classes=CLASSES, fields={"tap": 2})
    model = load_checkpoint(ckpt)
    assert isinstance(model, ToyModel) and model.config.classes == CLASSES and model.tap == 2

    res = CliRunner().invoke(bench_main, ["--method", "nope", "--tiny", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and res.stderr.startswith("error: unknown method 'nope': registered model families are ")
    assert "aa-clip" in res.stderr and "toy" in res.stderr
    res = CliRunner().invoke(bench_main, ["--method", "toy", "--tiny", "--no-plot", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "method 'toy' has no FLOP count" in res.stderr
    res = CliRunner().invoke(train_main, ["methods"])
    assert res.exit_code == 0 and "toy\ttrainable\ttest family" in res.output


def test_the_toy_is_one_folder_that_nothing_else_names():
    """Adding a family is one folder of the built-in families' shape, plus nothing else: no module of the
    package and no other test names it."""
    import re
    from pathlib import Path

    tests = Path(__file__).resolve().parent
    assert sorted(p.name for p in (tests / "toy_family").glob("*.py")) == [
        "__init__.py", "config.py", "family.py", "model.py", "trainer.py"]
    package = [p for folder in ("contract", "data", "runtime", "serve", "train", "export", "calibration", "benchmarks",
                                "demo") for p in (tests.parent / folder).rglob("*.py")]
    others = [p for p in tests.glob("*.py") if p.name != Path(__file__).name]
    naming = [str(p) for p in package + others if re.search(r"toy_family|[\"']toy[\"']", p.read_text())]
    assert not naming, naming
