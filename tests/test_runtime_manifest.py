"""Manifest reading/writing and the refusal rules of docs/graph-contract.md."""
import json

import pytest

from aaclip.runtime.log import UserError
from aaclip.runtime.manifest import (ArtifactError, check_artifact, check_engine_compat, load_manifest,
                                     manifest_path, write_manifest)
from runtime_fixtures import make_onnx_artifact, manifest_dict

REBUILD = "aaclip-export runs/test/ckpt --format onnx --out model.onnx"


def test_manifest_path_and_roundtrip(tmp_path):
    art = make_onnx_artifact(tmp_path, classes=("bottle", "cable"), class_offsets=(0.0, 1.0), threshold=0.42)
    assert manifest_path(art) == tmp_path / "model.onnx.manifest.json"
    m = load_manifest(art)
    assert (m.input_name, m.height, m.width, m.batch_min, m.batch_max) == ("image", 64, 64, 1, None)
    assert m.class_input == "class_id" and m.classes == ("bottle", "cable")
    assert m.output_names == ("anomaly_map", "map_max", "cls_score")
    assert m.score.threshold == 0.42 and m.score.with_threshold(0.7).threshold == 0.7
    assert m.rebuild_command == REBUILD and not m.is_engine
    check_artifact(m)  # untouched artifact passes
    assert not list(tmp_path.glob(".*"))  # no temp files left by the atomic write


def test_unknown_class_lists_available(tmp_path):
    m = load_manifest(make_onnx_artifact(tmp_path, classes=("bottle", "cable"), class_offsets=(0.0, 1.0)))
    assert m.class_index("cable") == 1
    with pytest.raises(UserError, match=r"unknown class 'screw'.*available: bottle, cable"):
        m.class_index("screw")


def test_missing_manifest_refused(tmp_path):
    art = make_onnx_artifact(tmp_path)
    manifest_path(art).unlink()
    with pytest.raises(ArtifactError, match="no manifest for .*model.onnx.manifest.json"):
        load_manifest(art)


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    (json.dumps({"format": "other"}), "not an aaclip manifest"),
])
def test_invalid_manifest_refused(tmp_path, content, message):
    art = make_onnx_artifact(tmp_path)
    manifest_path(art).write_text(content)
    with pytest.raises(ArtifactError, match=message):
        load_manifest(art)


def test_unknown_format_version_refused_with_rebuild_command(tmp_path):
    art = make_onnx_artifact(tmp_path)
    data = json.loads(manifest_path(art).read_text())
    data["format_version"] = 2
    write_manifest(art, data)
    with pytest.raises(ArtifactError) as e:
        load_manifest(art)
    assert "format_version 2" in str(e.value) and str(e.value).endswith(f"rebuild it with: {REBUILD}")


def test_tampered_artifact_refused_with_rebuild_command(tmp_path):
    art = make_onnx_artifact(tmp_path)
    art.write_bytes(art.read_bytes() + b"\0")
    with pytest.raises(ArtifactError) as e:
        check_artifact(load_manifest(art))
    assert "does not match its manifest (sha256" in str(e.value)
    assert str(e.value).endswith(f"rebuild it with: {REBUILD}")


def test_missing_external_data_refused(tmp_path):
    art = make_onnx_artifact(tmp_path)
    data = json.loads(manifest_path(art).read_text())
    data["artifact"]["external_data"] = ["model.onnx.data"]
    write_manifest(art, data)
    with pytest.raises(ArtifactError, match="external data file .*model.onnx.data of model.onnx is missing"):
        check_artifact(load_manifest(art))


def _engine_manifest(tmp_path, **trt):
    art = tmp_path / "model.engine"
    art.write_bytes(b"engine")
    info = {"flavour": "tensorrt", "version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7", **trt}
    write_manifest(art, manifest_dict(art, tensorrt=info, batch={"min": 1, "opt": 1, "max": 4}))
    return load_manifest(art)


def test_engine_compat(tmp_path):
    m = _engine_manifest(tmp_path)
    assert m.is_engine and m.batch_max == 4
    check_engine_compat(m, "tensorrt", "10.3.0.30", "8.7")  # build number ignored
    with pytest.raises(ArtifactError, match=r"built with tensorrt 10.3.0, this device has 10.7.0.*rebuild it with: "
                                            r"aaclip-export .* --format engine"):
        check_engine_compat(m, "tensorrt", "10.7.0", "8.7")
    with pytest.raises(ArtifactError, match=r"compute capability 8.7 \(Orin\), this GPU is 9.0"):
        check_engine_compat(m, "tensorrt", "10.3.0", "9.0")
    with pytest.raises(ArtifactError, match="built with tensorrt, this runtime uses tensorrt-rtx"):
        check_engine_compat(m, "tensorrt-rtx", "10.3.0", "8.7")


def test_rtx_ahead_of_time_engine_skips_gpu_check(tmp_path):
    m = _engine_manifest(tmp_path, flavour="tensorrt-rtx", version="1.0.0", gpu_name=None, compute_capability=None)
    check_engine_compat(m, "tensorrt-rtx", "1.0.0", "12.0")
