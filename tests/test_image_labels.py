"""Image-level labels (defective photos without masks) from import to evaluation: `aaclip-data folder`/`split`,
pixel losses only where pixels are known, image metrics with pixel metrics "not computed"."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from aaclip.train.common import losses, maps
from aaclip.train.checkpoint import load_checkpoint
from aaclip.data.cli import main as data_main
from aaclip.train.eval_cli import main as eval_main
from aaclip.train.evaluate import NOT_COMPUTED, class_metrics, overlay_name
from aaclip.data.layouts import folder_records
from aaclip.data.records import Record, read_records
from aaclip.data.shots import split_records
from aaclip.data.synth import add_defect, draw_product
from aaclip.train.families.aa_clip.trainer import Trainer, TrainOptions
from click.testing import CliRunner
from metric_reference import assert_report_matches, reference_metrics
from model_fixtures import make_tiny_checkpoint


def _run(main, *args: str):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _photos(root: Path, n_good: int = 6, n_bad: int = 3, size: int = 96, seed: int = 0) -> Path:
    """A factory's folder: grayscale JPEGs of good parts and two defect kinds, no masks."""
    rng = np.random.default_rng(seed)
    for folder, kind, n in (("good", None, n_good), ("scratch", "scratch", n_bad), ("hole", "hole", n_bad)):
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            image = draw_product("disk", rng, size)
            if kind:
                image, _ = add_defect(image, rng, kind=kind, class_name="disk")
            assert cv2.imwrite(str(root / folder / f"{i:03d}.jpg"), cv2.cvtColor(image, cv2.COLOR_BGR2GRAY))
    return root


# ---- import ------------------------------------------------------------------------------------------
def test_folder_layout_writes_image_level_records(tmp_path):
    root = _photos(tmp_path / "bracket")
    (root / "ground_truth" / "hole").mkdir(parents=True)
    mask = np.zeros((96, 96), np.uint8)
    mask[10:20, 10:20] = 255
    cv2.imwrite(str(root / "ground_truth" / "hole" / "001_mask.png"), mask)
    res = _run(data_main, "folder", root)
    assert res.exit_code == 0, res.output
    out = root / "records.jsonl"
    assert f"wrote {out}: 12 images (6 normal, 6 anomalous, 1 with masks) in 1 class" in res.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["class_name"] for r in rows} == {"bracket"}  # the folder's name
    by_path = {r["image_path"]: r for r in rows}
    assert by_path["good/000.jpg"]["label"] == 0 and by_path["scratch/002.jpg"]["label"] == 1
    assert by_path["hole/001.jpg"]["mask_path"] == "ground_truth/hole/001_mask.png"
    assert by_path["hole/000.jpg"]["mask_path"] is None
    assert not any(p.startswith("ground_truth") for p in by_path)  # the mask folder is no defect kind
    res = _run(data_main, "check", out)
    assert res.exit_code == 0
    assert res.output.splitlines()[1].split() == ["bracket", "6", "6", "1", "12"]
    assert "5 anomalous images have no mask: image-level labels" in res.output


def test_folder_flags_masks_and_errors(tmp_path):
    root = _photos(tmp_path / "photos")
    masks = tmp_path / "m"
    masks.mkdir()
    cv2.imwrite(str(masks / "000.png"), np.full((96, 96), 255, np.uint8))  # <stem>.png, directly in --masks
    out = tmp_path / "lists" / "part.jsonl"
    res = _run(data_main, "folder", "--good", root / "good", "--bad", root / "scratch", "--bad", root / "hole",
               "--masks", masks, "--class", "bracket", "--out", out)
    assert res.exit_code == 0, res.output
    recs = read_records(out)  # paths relative to the output's folder
    assert recs[0] == Record("../photos/good/000.jpg", 0, "bracket")
    assert [r.mask_path for r in recs if r.label == 1].count("../m/000.png") == 2  # hole/000 and scratch/000
    res = _run(data_main, "folder", "--good", root / "good", "--bad", root / "good")
    assert res.exit_code == 2 and "error: " in res.output and "listed twice" in res.output
    res = _run(data_main, "folder", root, "--good", root / "good")
    assert res.exit_code == 2 and "not both" in res.output
    (tmp_path / "flat").mkdir()
    cv2.imwrite(str(tmp_path / "flat" / "x.png"), np.zeros((8, 8), np.uint8))
    res = _run(data_main, "folder", tmp_path / "flat")
    assert res.exit_code == 2 and "one folder of good images named good or ok or normal" in res.output


def test_split_is_stratified_and_deterministic(tmp_path):
    records = [Record(f"g{i}.png", 0, "a") for i in range(10)] + [Record(f"b{i}.png", 1, "a") for i in range(4)]
    records += [Record("only.png", 1, "b"), Record("n.png", 0, "b"), Record("n2.png", 0, "b")]
    train, test = split_records(records, 0.3, seed=0)
    assert sorted(train + test, key=lambda r: r.image_path) == sorted(records, key=lambda r: r.image_path)
    count = lambda rs, c, label: sum(r.class_name == c and r.label == label for r in rs)  # noqa: E731
    assert (count(test, "a", 0), count(test, "a", 1)) == (3, 1)  # round(10 * 0.3), round(4 * 0.3)
    assert count(test, "b", 1) == 0 and count(train, "b", 1) == 1  # a single image stays in training
    assert count(test, "b", 0) == 1  # at least one of two
    assert split_records(list(reversed(records)), 0.3, seed=0) == (train, test)
    assert split_records(records, 0.3, seed=1) != (train, test)
    root = _photos(tmp_path / "p")
    assert _run(data_main, "folder", root).exit_code == 0
    res = _run(data_main, "split", root / "records.jsonl", "--test-fraction", "0.5")
    assert res.exit_code == 0, res.output
    assert "wrote " + str(root / "test.jsonl") + ": 6 images (3 normal, 3 anomalous, none with a mask)" in res.output
    res = _run(data_main, "split", root / "records.jsonl", "--train", root / "records.jsonl")
    assert res.exit_code == 2 and "must differ" in res.output


# ---- training ----------------------------------------------------------------------------------------
def test_map_max_loss_is_bce_of_the_most_anomalous_patch():
    S = torch.tensor([[[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]],   # margins -1, 3, 0 -> max 3
                      [[0.0, -1.0], [0.5, 0.0], [4.0, 1.0]]])  # margins -1, -0.5, -3 -> max -0.5
    got = losses.map_max_loss(S, torch.tensor([1, 0]))
    expected = (-np.log(1 / (1 + np.exp(-3.0))) - np.log(1 - 1 / (1 + np.exp(0.5)))) / 2
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the training map's maximum abnormal probability is the grid's: up-sampling adds no higher value
    V = torch.nn.functional.normalize(torch.randn(2, 16, 8), dim=-1)
    T = torch.nn.functional.normalize(torch.randn(2, 8, 2), dim=1)
    probs = maps.train_probabilities(V, T, 4, (32, 32))[:, 1]
    margin = (maps.similarity(V, T)[..., 1] - maps.similarity(V, T)[..., 0]).amax(dim=1)
    assert torch.allclose(probs.flatten(1).amax(dim=1), torch.sigmoid(margin), atol=1e-6)


def test_pixel_losses_only_where_pixels_are_known(tmp_path):
    model = load_checkpoint(make_tiny_checkpoint(tmp_path / "c"))
    trainer = Trainer(model, [Record("x.png", 0, "disk")], tmp_path, tmp_path / "o", TrainOptions())
    V = torch.nn.functional.normalize(torch.randn(4, 64, model.clip.visual.output_dim), dim=-1)
    anchors = torch.nn.functional.normalize(torch.randn(4, model.clip.visual.output_dim, 2), dim=1)
    mask = torch.zeros(4, 64, 64)
    mask[1, :8, :8] = 1.0
    batch = {"mask": mask, "label": torch.tensor([0, 1, 1, 1]), "pixels_known": torch.tensor([True, True, False, False])}
    size = (64, 64)
    probs = maps.train_probabilities(V, anchors, 8, size)
    expected = losses.segmentation_loss(probs[:2], mask[:2]) + losses.map_max_loss(
        maps.similarity(V[2:], anchors[2:]), torch.tensor([1, 1]))
    assert trainer._map_losses(V, anchors, batch).item() == pytest.approx(expected.item(), rel=1e-6)
    batch["pixels_known"] = torch.ones(4, dtype=torch.bool)  # every pixel known: SPEC's losses exactly
    assert trainer._map_losses(V, anchors, batch).item() == losses.segmentation_loss(probs, mask).item()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """folder -> split -> train (tiny, a few steps) on photos without masks."""
    tmp = tmp_path_factory.mktemp("owndata")
    root = _photos(tmp / "disk", n_good=8, n_bad=4)
    assert _run(data_main, "folder", root).exit_code == 0
    assert _run(data_main, "split", root / "records.jsonl", "--test-fraction", "0.5").exit_code == 0
    ckpt = make_tiny_checkpoint(tmp / "ckpt")
    model = load_checkpoint(ckpt)
    train = read_records(root / "train.jsonl")
    return tmp, root, ckpt, model, train


def test_training_on_image_labels_says_so_and_moves_the_map_heads(trained, caplog):
    tmp, root, ckpt, model, train = trained
    before = {k: v.clone() for k, v in model.trainable_state_dict().items()}
    options = TrainOptions(stage1_epochs=1, stage2_epochs=1, stage1_batch=8, stage2_batch=4, stage1_lr=1e-3,
                           stage2_lr=2e-3)
    with caplog.at_level(logging.INFO, logger="aaclip.train"):
        Trainer(model, train, root, ckpt, options).run()
    text = caplog.text
    assert "pixel losses on the 4 with known pixels" in text and "4 anomalies without masks" in text
    assert "stage 1 epoch 1/1: 1 step\n" in text and "stage 2 epoch 1/1: 2 steps" in text
    after = model.trainable_state_dict()
    changed = {k for k in after if not torch.equal(after[k], before[k])}
    assert any(k.startswith("seg_proj") for k in changed) and any(k.startswith("text_") for k in changed)


def test_eval_reports_image_metrics_and_pixel_metrics_not_computed(trained, tmp_path):
    tmp, root, ckpt, model, _ = trained
    res = _run(eval_main, "--checkpoint", ckpt, "--data", root / "test.jsonl", "--out", tmp_path / "e", "--overlays", "-q")
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "e" / "metrics.json").read_text())
    entry = report["disk"]
    assert all(entry[k] is None for k in ("pixel_auroc", "pixel_ap", "pixel_f1_max", "aupro"))
    assert entry["pixel_metrics"] == NOT_COMPUTED and entry["pixel_images"] == 0
    assert entry["n_images"] == 8 and entry["n_anomalous"] == 4
    expected = reference_metrics(ckpt, root / "test.jsonl", map_weight=0.5)  # scored apart from aaclip-eval
    assert expected["disk"]["pixel_auroc"] is None  # no masks: nothing to compare pixels with
    assert_report_matches(report, expected)
    assert f"disk: pixel metrics {NOT_COMPUTED}" in res.output
    assert NOT_COMPUTED in (tmp_path / "e" / "metrics.md").read_text()
    overlays = sorted(p.relative_to(tmp_path / "e" / "overlays").as_posix()
                      for p in (tmp_path / "e" / "overlays").rglob("*.png"))
    assert overlays == sorted(f"disk/{r.image_path[:-4]}.png" for r in read_records(root / "test.jsonl"))


def test_pixel_metrics_use_only_known_pixels():
    rng = np.random.default_rng(0)
    masks = np.zeros((4, 8, 8), bool)
    masks[1, 2:4, 2:4] = True
    maps_ = rng.random((4, 8, 8))
    pred = {"maps": maps_, "cls": rng.random(4), "masks": masks, "labels": np.array([0, 1, 1, 0]),
            "known": np.array([True, True, False, True])}
    from aaclip.contract.metrics import pixel_metrics

    got = class_metrics(pred, "industrial")
    want = pixel_metrics(masks[[0, 1, 3]], maps_[[0, 1, 3]])
    assert got["pixel_auroc"] == pytest.approx(want["pixel_auroc"]) and got["pixel_images"] == 3
    assert "1 anomalies without masks left out" in got["pixel_metrics"]


def test_overlay_name_keeps_the_relative_path():
    assert overlay_name("bottle/test/crack/000.png") == Path("bottle/test/crack/000.png")
    assert overlay_name("bottle/test/broken/000.jpg") == Path("bottle/test/broken/000.png")
    assert overlay_name("../photos/good/a.jpg") == Path("photos/good/a.png")
    assert overlay_name("/data/x/1.bmp") == Path("data/x/1.png")


def test_folder_records_function(tmp_path):
    root = _photos(tmp_path / "p", n_good=2, n_bad=1)
    recs = folder_records([root / "good"], [root / "hole"], "disk", root)
    assert recs == [Record("good/000.jpg", 0, "disk"), Record("good/001.jpg", 0, "disk"),
                    Record("hole/000.jpg", 1, "disk")]
