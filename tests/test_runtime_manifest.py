"""Manifest reading/writing and the refusal rules of docs/graph-contract.md."""
import json

import pytest
from aaclip.contract.errors import ArtifactError, UserError
from aaclip.contract.manifest import check_artifact, check_engine_compat, load_manifest, manifest_path, write_manifest
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


def _set(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        data = data[key]
    data[last] = value


@pytest.mark.parametrize("field, value, message", [
    ("score.threshold", float("nan"), "NaN is not valid JSON|score.threshold is nan; it must be a finite number"),
    ("score.map_hi", float("inf"), "Infinity is not valid JSON|score.map_hi is inf"),
    ("score.map_hi", -1.0, r"score.map_lo \(0\) must be below score.map_hi \(-1\)"),
    ("score.cls_hi", 0.0, "score.cls_lo .* must be below score.cls_hi"),
    ("score.map_weight", 1.5, "score.map_weight is 1.5; it must be in"),
    ("score.threshold", "0.5", "score.threshold must be a number"),
    ("score.source", "guess", "'score.source' is 'guess'; expected one of default, calibration"),
    ("input.height", 0, "'input.height' is 0; it must be >= 1"),
    ("input.width", 64.0, "'input.width' must be int"),
    ("input.dtype", "float32", "'input.dtype' is 'float32'; expected one of uint8"),
    ("input.batch", {"min": 4, "opt": 2, "max": 8}, "1 <= min <= opt <= max"),
    ("artifact.sha256", "abc", "must be a sha256"),
    ("artifact.file", "../model.onnx", "plain file name"),
    ("artifact.external_data", ["../secret.data"], "plain file names beside the artifact"),
    ("artifact.external_data", ["model.onnx.data"], "has no sha256 for 'model.onnx.data'"),
    ("classes", [], "lists no class"),
    ("classes", [{"id": 1, "name": "a", "object_name": "a"}], "'classes.0.id' must be 0"),
    ("outputs", [{"name": "anomaly_map"}], "missing \\['map_max', 'cls_score'\\]"),
    ("precision", "fp8", "'precision' is 'fp8'"),
    ("method", "", "'method' is empty"),
    ("tensorrt", {"flavour": "tensorrt"}, "'tensorrt.version' is missing"),
])
def test_every_field_is_type_and_range_checked(tmp_path, field, value, message):
    """The loader refuses a bad manifest before any frame runs, naming the field; the writer refuses to
    write one at all."""
    art = make_onnx_artifact(tmp_path)
    data = json.loads(manifest_path(art).read_text())
    _set(data, field, value)
    manifest_path(art).write_text(json.dumps(data))  # Python's json writes NaN/Infinity: a hand-edited file
    with pytest.raises(ArtifactError, match=message):
        load_manifest(art)
    before = manifest_path(art).read_bytes()
    with pytest.raises(ArtifactError, match=message):
        write_manifest(art, data)
    assert manifest_path(art).read_bytes() == before  # nothing written


def test_several_classes_need_a_class_input(tmp_path):
    art = make_onnx_artifact(tmp_path, classes=("bottle", "cable"), class_offsets=(0.0, 1.0))
    data = json.loads(manifest_path(art).read_text())
    data["class_input"] = None
    manifest_path(art).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="holds 2 classes"):
        load_manifest(art)


def test_unknown_format_version_refused_with_rebuild_command(tmp_path):
    art = make_onnx_artifact(tmp_path)
    data = json.loads(manifest_path(art).read_text())
    data["format_version"] = 2
    manifest_path(art).write_text(json.dumps(data))  # written by a newer aaclip-edge
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
    data["artifact"]["external_data_sha256"] = {"model.onnx.data": "0" * 64}
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
