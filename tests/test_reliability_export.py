"""docs/reliability.md, the export's part: an artifact and its manifest are replaced together or not at all,
and a re-export never silently drops a calibration."""
import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import load_manifest, manifest_path, open_artifact, write_manifest
from aaclip.export.cli import cli as export_cli
from aaclip.export.onnx_export import export_onnx
from click.testing import CliRunner
from model_fixtures import make_tiny_checkpoint
from reliability_fixtures import fill, tmpfs

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="module")
def model(ckpt):
    from aaclip.train.checkpoint import load_checkpoint

    return load_checkpoint(ckpt)


def calibrate_by_hand(art: Path, threshold: float = 0.123) -> dict:
    """What aaclip-calibrate threshold writes (the score block), without running frames."""
    data = json.loads(manifest_path(art).read_text())
    data["score"].update(threshold=threshold, source="calibration",
                         calibration={"frames": 500, "date": "2026-11-29T08:00:00+00:00", "method": "quantile"})
    write_manifest(art, data)
    return data["score"]


def snapshot(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_identical_reexport_keeps_the_calibration(ckpt, model, tmp_path):
    art = export_onnx(ckpt, tmp_path / "m.onnx", classes=["disk"], model=model).path
    score = calibrate_by_hand(art)
    again = export_onnx(ckpt, art, classes=["disk"], model=model)
    m = load_manifest(again.path)
    assert m.sha256 == again.sha256 and m.calibrated and m.data["score"] == score


def test_changed_reexport_refuses_to_drop_a_calibration_unless_asked(ckpt, model, tmp_path):
    art = export_onnx(ckpt, tmp_path / "m.onnx", classes=["disk"], model=model).path
    calibrate_by_hand(art)
    before = snapshot(tmp_path)
    with pytest.raises(UserError, match=r"m.onnx is calibrated \(threshold 0.123, 500 frames, 2026-11-29.*\) and the "
                                        r"new export differs \(the artifact's sha256 changed, precision fp32 -> "
                                        r"fp16\), so its calibration would be lost: pass --discard-calibration"):
        export_onnx(ckpt, art, precision="fp16", classes=["disk"], model=model)
    assert snapshot(tmp_path) == before  # the previous model is untouched, no staging left
    open_artifact(art)
    r = CliRunner().invoke(export_cli, [str(ckpt), "--out", str(art), "--precision", "fp16", "--classes", "disk",
                                        "--discard-calibration"])
    assert r.exit_code == 0, r.output
    m = open_artifact(art)
    assert m.precision == "fp16" and not m.calibrated and m.score.threshold == 0.5


def test_full_disk_during_export_keeps_the_previous_model(ckpt, model, tmp_path):
    with tmpfs(tmp_path / "disk", size="3m") as disk:
        art = export_onnx(ckpt, disk / "m.onnx", classes=["disk"], model=model).path
        calibrate_by_hand(art)
        before = snapshot(disk)
        fill(disk, leave_bytes=200_000)  # room for less than one more graph
        r = CliRunner().invoke(export_cli, [str(ckpt), "--out", str(art), "--classes", "disk", "--external-data",
                                            "--discard-calibration"])
        assert r.exit_code == 2 and "Traceback" not in r.output
        assert r.stderr.splitlines()[-1] == (f"error: cannot write {art}: No space left on device; the previous "
                                             "m.onnx (if any) is unchanged")
        (disk / ".filler").unlink()
        assert snapshot(disk) == before and not [p for p in disk.iterdir() if p.name.startswith(".")]
        assert open_artifact(art).calibrated


def test_staging_of_a_killed_export_is_removed_and_data_files_are_0644(ckpt, model, tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = tmp_path / f".m.onnx.{dead.pid}~abcd"
    stale.mkdir()
    (stale / "m.onnx").write_bytes(b"half a graph")
    old = os.umask(0o022)
    try:
        result = export_onnx(ckpt, tmp_path / "m.onnx", classes=["disk"], model=model, external_data=True)
    finally:
        os.umask(old)
    assert not stale.exists()
    for name in ("m.onnx", "m.onnx.data", "m.onnx.manifest.json"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o644, name
    assert result.external_data == ("m.onnx.data",)
    open_artifact(result.path)
