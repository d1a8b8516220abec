"""A model family defined and registered in this file alone goes through the whole pipeline.

The toy family ("toy") scores each patch of the frozen CLIP's image tower as ``head(token) + <token, t>``:
``head`` is one trainable linear layer, ``t`` the per-class constant (the normalized CLIP text embedding of
"a photo of a {object}."). It trains with a per-patch BCE loss (aaclip-train fit --method toy), exports
through the generic deploy graph (aaclip.export), is calibrated on synthetic normal frames
(calibrate_artifact) and runs in the camera loop (aaclip-runtime) without any other module knowing it.
Its backbone runs QuickGELU with a bilinear position-embedding resize, unlike AA-CLIP's defaults.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

import torch.nn.functional as F  # noqa: E402
from aaclip.contract.score import ScoreParams, image_score  # noqa: E402
from aaclip.train.common.config import ModelConfig  # noqa: E402
from aaclip.train.families import Family, get_family, register_family, unregister_family  # noqa: E402
from aaclip.train.families.base import FamilyModel  # noqa: E402
from click.testing import CliRunner  # noqa: E402
from torch import nn  # noqa: E402

SIZE = 64
CLASSES = {"disk": "metal disk", "wood": "wooden board"}


# ---- the family --------------------------------------------------------------------------------------
@dataclass
class ToyConfig(ModelConfig):
    default_activation: ClassVar[str] = "quickgelu"
    default_pos_embed_resize: ClassVar[str] = "bilinear"

    method: str = "toy"
    tap: Optional[int] = None  # 1-based visual block whose patch tokens are scored; None: the last


class ToyModel(FamilyModel):
    def __init__(self, clip, tokenizer, config: ToyConfig):
        super().__init__(clip, config)
        self.tokenizer = tokenizer
        visual = clip.visual
        self.tap = config.tap or len(visual.transformer.resblocks)
        self.grid = int(visual.grid_size[0])
        self.head = nn.Linear(visual.transformer.width, 1)

    def class_constants(self, object_names):
        tokens = self.tokenizer([f"a photo of a {name}." for name in object_names])
        return F.normalize(self.clip.encode_text(tokens), dim=-1)  # (C, E)

    def patch_logits(self, images, constants):
        visual = self.clip.visual
        x = visual._embeds(images)
        for block in visual.transformer.resblocks[: self.tap]:
            x = block(x)
        tokens = visual.ln_post(x[:, 1:])  # (B, L, W)
        feats = F.normalize(tokens @ visual.proj, dim=-1)  # (B, L, E)
        similarity = (feats * constants.unsqueeze(-2)).sum(-1)  # one class (E,) or one per image (B, E)
        return self.head(tokens)[..., 0] + similarity  # (B, L)

    def predict(self, images, constants):
        logits = self.patch_logits(images, constants)
        grid = logits.reshape(-1, 1, self.grid, self.grid)
        amap = F.interpolate(grid, size=(self.config.image_size,) * 2, mode="bilinear", align_corners=False)
        return amap[:, 0], logits.mean(dim=1)


@dataclass
class ToyOptions:
    steps: int = 12
    lr: float = 3e-2
    batch: int = 8
    seed: int = 0
    device: str = "cpu"


class ToyTrainer:
    """Per-patch BCE against the mask pooled to the patch grid; history.jsonl gets one line per step."""

    def __init__(self, model, records, root, out_dir, options: ToyOptions):
        from aaclip.train.common.dataset import AnomalyDataset

        self.model, self.out_dir, self.options = model, Path(out_dir), options
        classes = sorted({r.class_name for r in records})
        for c in classes:
            model.config.classes.setdefault(c, c)
        self.names = [model.config.classes[c] for c in classes]
        self.data = AnomalyDataset(records, root, model.config.image_size, classes)

    def run(self) -> Path:
        from aaclip.contract.files import atomic_write_text
        from aaclip.train.common.checkpoint_files import HISTORY_FILE, save_checkpoint

        o, m = self.options, self.model
        torch.manual_seed(o.seed)
        with torch.no_grad():
            constants = m.class_constants(self.names)
        m.requires_grad_(False)
        m.head.requires_grad_(True)
        opt = torch.optim.Adam(m.head.parameters(), lr=o.lr)
        loader = torch.utils.data.DataLoader(self.data, batch_size=o.batch, shuffle=True,
                                             generator=torch.Generator().manual_seed(o.seed))
        lines, step = [], 0
        while step < o.steps:
            for batch in loader:
                if step >= o.steps:
                    break
                logits = m.patch_logits(batch["image"], constants[batch["class_index"]])
                target = F.adaptive_max_pool2d(batch["mask"][:, None].float(), m.grid).flatten(1)
                loss = F.binary_cross_entropy_with_logits(logits, target)
                opt.zero_grad()
                loss.backward()
                opt.step()
                lines.append(json.dumps({"step": step, "loss": float(loss.detach())}))
                step += 1
        m.requires_grad_(False)
        save_checkpoint(m, self.out_dir)
        atomic_write_text(self.out_dir / HISTORY_FILE, "\n".join(lines) + "\n")
        return self.out_dir


TOY = Family(
    name="toy",
    config_class=ToyConfig,
    build=ToyModel,
    default_score=lambda model: ScoreParams(map_lo=-1.0, map_hi=1.0, cls_lo=-1.0, cls_hi=1.0, map_weight=0.5),
    trainer=ToyTrainer,
    train_options=ToyOptions,
    summary="test family: one linear layer on CLIP patch tokens",
)


@pytest.fixture(scope="module", autouse=True)
def toy_family():
    register_family(TOY, replace=True)
    yield TOY
    unregister_family(TOY.name)


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
    assert manifest.data["score"] == TOY.default_score(None).to_block("default")

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
    assert manifest.score != TOY.default_score(None)

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

    ckpt = random_checkpoint(tmp_path / "r", method="toy", classes=CLASSES, fields={"tap": 2})
    model = load_checkpoint(ckpt)
    assert isinstance(model, ToyModel) and model.config.classes == CLASSES and model.tap == 2
    assert get_family("toy") is TOY

    res = CliRunner().invoke(bench_main, ["--method", "nope", "--tiny", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and res.stderr.startswith("error: unknown method 'nope': registered model families are ")
    assert "aa-clip" in res.stderr and "toy" in res.stderr
    res = CliRunner().invoke(bench_main, ["--method", "toy", "--tiny", "--no-plot", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "method 'toy' has no FLOP count" in res.stderr
    res = CliRunner().invoke(train_main, ["methods"])
    assert res.exit_code == 0 and "toy\ttrainable\ttest family" in res.output
