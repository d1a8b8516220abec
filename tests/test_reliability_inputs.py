"""docs/reliability.md, the inputs' part: bad files in image folders are skipped with a count, oversized images
are refused before decoding, bad JSON-lines name their line."""
import logging
import os
import struct
import zlib

import cv2
import numpy as np
import pytest
from aaclip.calibration.inputs import folder_input
from aaclip.contract.errors import UserError
from aaclip.contract.images import ImageError, header_size, read_image
from aaclip.contract.manifest import open_artifact
from aaclip.export.verify import verification_frames
from aaclip.runtime.cli import RunConfig, run
from aaclip.data.records import read_records
from runtime_fixtures import make_onnx_artifact

pytestmark = pytest.mark.reliability


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` (no pixel data needed to be refused)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + struct.pack(">I", 0) + b"IEND" + struct.pack(">I", zlib.crc32(b"IEND")))


@pytest.fixture
def bad_folder(tmp_path):
    """Two good images among every kind of bad file an image folder on a line can hold."""
    folder = tmp_path / "good_parts"
    folder.mkdir()
    good = np.full((40, 50, 3), 180, np.uint8)
    cv2.imwrite(str(folder / "a_good.png"), good)
    cv2.imwrite(str(folder / "z_good.jpg"), good)
    jpeg = (folder / "z_good.jpg").read_bytes()
    (folder / "b_empty.png").write_bytes(b"")
    (folder / "c_truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    (folder / "d_text.png").write_text("not an image")
    (folder / "e_folder.png").mkdir()
    os.symlink(folder / "gone.png", folder / "f_broken_link.png")
    (folder / "g_huge.png").write_bytes(png_header(20000, 20000))
    (folder / "notes.txt").write_text("ignored: not an image suffix")
    return folder


def test_read_image_names_each_problem(bad_folder):
    reasons = {}
    for p in sorted(bad_folder.iterdir()):
        try:
            read_image(p)
        except ImageError as exc:
            reasons[p.name] = str(exc)
    assert set(reasons) == {"b_empty.png", "c_truncated.jpg", "d_text.png", "e_folder.png", "f_broken_link.png",
                            "g_huge.png", "notes.txt"}
    assert "empty file" in reasons["b_empty.png"] and "truncated" in reasons["c_truncated.jpg"]
    assert "not an image OpenCV can decode" in reasons["d_text.png"] and "a folder" in reasons["e_folder.png"]
    assert "broken link" in reasons["f_broken_link.png"]
    assert "20000 x 20000 pixels is more than the limit of 100,000,000" in reasons["g_huge.png"]
    assert header_size(png_header(20000, 20000)) == (20000, 20000)
    assert header_size((bad_folder / "z_good.jpg").read_bytes()) == (50, 40)


def test_calibration_skips_bad_files_with_one_warning(bad_folder, caplog):
    with caplog.at_level(logging.WARNING):
        items = list(folder_input(bad_folder, 0).items())
    assert len(items) == 2 and all(it.frame.shape == (40, 50, 3) for it in items)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "skipped 6 unusable image file(s)" in warnings[0]


def test_verify_and_runtime_skip_bad_files(bad_folder, tmp_path, caplog):
    m = open_artifact(make_onnx_artifact(tmp_path))
    with caplog.at_level(logging.WARNING):
        frames, ids = verification_frames(m, bad_folder, n=8)
    assert frames.shape == (2, 64, 64, 3) and "skipped 6 unusable image file(s)" in caplog.text
    summary = run(RunConfig(m.artifact_path, (str(bad_folder),), drop=False, stats_every=0))
    assert (summary.frames, summary.unreadable) == (2, 6)


def test_jsonl_problems_name_the_line(tmp_path):
    (tmp_path / "img.png").write_bytes(b"x")
    good = '{"image_path": "img.png", "label": 0, "class_name": "disk", "mask_path": null}\n'
    (tmp_path / "latin1.jsonl").write_bytes(good.encode() + b'{"image_path": "caf\xe9.png"}\n')
    with pytest.raises(UserError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 20\)"):
        read_records(tmp_path / "latin1.jsonl")
    (tmp_path / "broken.jsonl").write_text(good + good + '{"image_path": \n')
    with pytest.raises(UserError, match=r"broken.jsonl:3: invalid JSON"):
        read_records(tmp_path / "broken.jsonl")


def test_evaluation_skips_records_with_bad_files(tmp_path, caplog):
    """One truncated test image must not abort an evaluation after its inference: it is skipped and counted."""
    from aaclip.train.checkpoint import load_checkpoint
    from aaclip.train.evaluate import predict_records
    from aaclip.data.synth import generate_dataset
    from model_fixtures import make_tiny_checkpoint

    paths = generate_dataset(tmp_path / "data", classes=["disk"], image_size=64, n_train_normal=1,
                             n_train_anomalous=1, n_test_normal=3, n_test_anomalous=3, seed=2)
    records = read_records(paths["test"])
    broken = paths["test"].parent / records[0].image_path
    broken.write_bytes(broken.read_bytes()[:40])
    model = load_checkpoint(make_tiny_checkpoint(tmp_path / "ckpt"))
    with caplog.at_level(logging.WARNING):
        preds = predict_records(model, records, paths["test"].parent)
    assert len(preds["disk"]["maps"]) == len(records) - 1
    assert "skipped 1 unusable image file(s)" in caplog.text and records[0].image_path in caplog.text
