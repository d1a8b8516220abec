"""Folders and record files given as relative or absolute paths, with records holding relative or absolute image
paths, give the same result in every command that takes them (issue 22: a relative ``--reference-images
refimgs`` failed with ``image not found: refimgs/refimgs/bottle/ref1.png``)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from aaclip.train.checkpoint import load_checkpoint  # noqa: E402
from click.testing import CliRunner  # noqa: E402

SIZE = 64
CLASSES = ("disk", "wood")


def _run(main, args) -> str:
    res = CliRunner().invoke(main, [str(a) for a in args])
    assert res.exit_code == 0, res.output + (res.stderr if res.stderr_bytes else "")
    return res.output


def _train(args) -> str:
    from aaclip.train.train_cli import main

    return _run(main, args)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """root/refimgs/<class>/*.png, root/lists/ (records beside, below and above their images), tiny weights,
    a synthetic dataset with its records (relative paths) and an absolute-path copy of them."""
    from aaclip.data import synth
    from aaclip.train.common.backbone import write_random_weights
    from aaclip.data.records import read_records, resolve, write_records

    root = tmp_path_factory.mktemp("rel")
    rng = np.random.default_rng(2)
    for c in CLASSES:
        (root / "refimgs" / c).mkdir(parents=True)
        for i in range(3):
            cv2.imwrite(str(root / "refimgs" / c / f"ref{i}.png"), synth.draw_product(c, rng, SIZE))
    (root / "lists").mkdir()
    rel = [{"image_path": f"../refimgs/{c}/ref{i}.png", "label": 0, "class_name": c} for c in CLASSES for i in range(3)]
    (root / "lists" / "refs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rel))
    absolute = [dict(r, image_path=str((root / "lists" / r["image_path"]).resolve())) for r in rel]
    (root / "lists" / "refs_abs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in absolute))
    write_random_weights("aaclip-tiny", root / "clip.safetensors", seed=0)
    paths = synth.generate_dataset(root / "data", classes=list(CLASSES), image_size=SIZE, n_train_normal=3,
                                   n_train_anomalous=2, n_test_normal=3, n_test_anomalous=3, seed=5)
    test = Path(paths["test"])
    records = read_records(test)
    write_records(root / "test_abs.jsonl", [type(r)(str(resolve(test.parent, r.image_path).resolve()), r.label,
                                                    r.class_name, r.mask_path and str(resolve(test.parent, r.mask_path)
                                                                                      .resolve()))
                                            for r in records])
    return root, paths


def _bank(out: Path) -> torch.Tensor:
    return load_checkpoint(out).reference_bank


def test_reference_folders_and_records_relative_and_absolute(tree, tmp_path, monkeypatch):
    """`init --reference-images/--reference-data` and `references`: the same banks for a relative folder (the
    issue's failure), an absolute one, records relative to their file (in another folder) and absolute records."""
    root, _ = tree
    common = ["--method", "res2clip", "--backbone", "aaclip-tiny", "--clip-weights", root / "clip.safetensors",
              "--image-size", SIZE, "--classes", ",".join(CLASSES), "--set", "shots=2", "-q"]
    monkeypatch.chdir(root)
    _train(["init", *common, "--reference-images", "refimgs", "--out", tmp_path / "rel"])
    _train(["init", *common, "--reference-images", "./refimgs/", "--out", tmp_path / "dot"])
    _train(["init", *common, "--reference-data", "lists/refs.jsonl", "--out", tmp_path / "data_rel"])
    monkeypatch.chdir(root / "lists")
    _train(["init", *common, "--reference-images", "../refimgs", "--out", tmp_path / "up"])
    _train(["init", *common, "--reference-data", "refs_abs.jsonl", "--out", tmp_path / "data_abs"])
    monkeypatch.chdir(tmp_path)
    _train(["init", *common, "--reference-images", root / "refimgs", "--out", tmp_path / "abs"])
    bank = _bank(tmp_path / "abs")
    assert bank.shape == (2, 4 * 2 * 64 + 1, 32)
    for name in ("rel", "dot", "up", "data_rel", "data_abs"):
        assert torch.equal(_bank(tmp_path / name), bank), name
    # `references` rebuilds a class from a relative folder and a relative records file
    monkeypatch.chdir(root)
    _train(["references", tmp_path / "rel", "--reference-images", "refimgs", "--classes", "wood", "-q"])
    _train(["references", tmp_path / "data_rel", "--reference-data", "lists/refs.jsonl", "--classes", "disk", "-q"])
    assert torch.equal(_bank(tmp_path / "rel"), bank) and torch.equal(_bank(tmp_path / "data_rel"), bank)


def test_eval_and_fit_take_relative_record_files(tree, tmp_path, monkeypatch):
    """`aaclip-eval --data` and `aaclip-train fit --data` with a relative file, records relative or absolute."""
    from aaclip.train.eval_cli import main as eval_main
    from model_fixtures import make_tiny_checkpoint

    root, paths = tree
    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    rel_test = Path(paths["test"]).relative_to(root)
    monkeypatch.chdir(root)
    (root / "elsewhere.jsonl").write_text((root / rel_test).read_text())  # away from its images: --root
    a = _run(eval_main, ["--ckpt", ckpt, "--data", rel_test, "--out", tmp_path / "e1"])
    b = _run(eval_main, ["--ckpt", ckpt, "--data", root / "test_abs.jsonl", "--out", tmp_path / "e2"])
    c = _run(eval_main, ["--ckpt", ckpt, "--data", "elsewhere.jsonl", "--root", rel_test.parent,
                         "--out", tmp_path / "e3"])
    assert all(f"metrics: {tmp_path / e / 'metrics.json'}" in t for e, t in (("e1", a), ("e2", b), ("e3", c)))
    reports = [json.loads((tmp_path / e / "metrics.json").read_text()) for e in ("e1", "e2", "e3")]
    assert reports[0]["mean"] and reports[0] == reports[1] == reports[2]
    rel_train = Path(paths["train"]).relative_to(root)
    fit = ["fit", "--method", "res2clip-ft", "--backbone", "aaclip-tiny", "--clip-weights", root / "clip.safetensors",
           "--image-size", SIZE, "--option", "epochs=1", "--option", "batch=4", "--option", "max_steps_per_epoch=1",
           "-q"]
    _train([*fit, "--data", rel_train, "--out", tmp_path / "f_rel"])
    _train([*fit, "--data", root / rel_train, "--out", tmp_path / "f_abs"])
    ours, theirs = (load_checkpoint(tmp_path / n).trainable_state_dict() for n in ("f_rel", "f_abs"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_data_tools_take_relative_folders_and_files(tree, tmp_path, monkeypatch):
    """`aaclip-data folder` (relative --good/--bad folders), `check`, `split`, `shots` (relative files, --root)."""
    from aaclip.data.cli import main as data_main
    from aaclip.data.records import read_records

    root, paths = tree
    monkeypatch.chdir(root)
    _run(data_main, ["folder", "--good", "refimgs/disk", "--bad", "refimgs/wood", "--class", "part",
                     "--out", "lists/own.jsonl", "-q"])
    records = read_records(root / "lists" / "own.jsonl")  # resolvable from the file's folder, wherever it is
    assert len(records) == 6 and {r.label for r in records} == {0, 1}
    monkeypatch.chdir(root / "refimgs")
    assert re.search(r"total\s+3\s+3\b", _run(data_main, ["check", "../lists/own.jsonl"]))  # 3 good, 3 bad
    monkeypatch.chdir(root)
    rel_test = Path(paths["test"]).relative_to(root)
    (root / "elsewhere.jsonl").write_text((root / rel_test).read_text())  # away from its images: --root
    tables = set()
    for data, extra in ((rel_test, []), ("elsewhere.jsonl", ["--root", rel_test.parent]), ("test_abs.jsonl", [])):
        tables.add(_run(data_main, ["check", data, *extra]))  # every image and mask found
        _run(data_main, ["split", data, *extra, "--train", tmp_path / "tr.jsonl", "--test", tmp_path / "te.jsonl",
                         "-q"])
        _run(data_main, ["shots", data, *extra, "--k", "1", "--out", tmp_path / "shots.jsonl", "-q"])
        for out in ("tr.jsonl", "te.jsonl", "shots.jsonl"):
            assert read_records(tmp_path / out)  # their paths resolve from where they were written
    assert len(tables) == 1 and re.search(r"total\s+6\s+6\b", tables.pop())


def test_calibrate_takes_relative_folders_and_records(tmp_path, monkeypatch):
    """`aaclip-calibrate threshold --images DIR` and `--data FILE`, relative and absolute: the same threshold."""
    from aaclip.calibration.cli import cli
    from runtime_fixtures import frame_image, make_onnx_artifact

    art = make_onnx_artifact(tmp_path)
    (tmp_path / "good").mkdir()
    lines = []
    for i in range(30):
        cv2.imwrite(str(tmp_path / "good" / f"{i}.png"), frame_image(False, seed=i))
        lines.append({"image_path": f"good/{i}.png", "label": 0, "class_name": "bottle"})
    (tmp_path / "data.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    (tmp_path / "abs.jsonl").write_text("".join(json.dumps(dict(x, image_path=str(tmp_path / x["image_path"])))
                                                + "\n" for x in lines))
    (tmp_path / "sub").mkdir()
    outputs = []
    sub = tmp_path / "sub"
    for cwd, source in ((tmp_path, ["--images", "good"]), (sub, ["--images", "../good"]),
                        (sub, ["--images", tmp_path / "good"]), (sub, ["--data", "../data.jsonl"]),
                        (tmp_path, ["--data", "abs.jsonl"])):
        monkeypatch.chdir(cwd)
        text = _run(cli, ["threshold", art, *source, "--dry-run", "--no-plot", "-q"])
        assert "calibrated on 30 normal frames" in text
        outputs.append(text[text.index("{"):text.rindex("}") + 1])
    blocks = [json.loads(o)["score"] for o in outputs]
    assert all({k: v for k, v in b.items() if k != "calibration"} == {k: v for k, v in blocks[0].items()
                                                                      if k != "calibration"} for b in blocks)
