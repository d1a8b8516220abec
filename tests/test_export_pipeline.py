"""aaclip-export on a tiny random AA-CLIP: graph parity, FP16, classes, resize, manifest, engines, CLI errors.

Every artifact is exported once per session (fixtures below); the whole file runs in well under a minute
on two CPU cores.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from aaclip.contract.errors import (
    ArtifactError,  # noqa: E402
    UserError,  # noqa: E402
)
from aaclip.contract.files import sha256_file  # noqa: E402
from aaclip.contract.manifest import check_artifact, check_engine_compat, load_manifest  # noqa: E402
from aaclip.export import cli as export_cli  # noqa: E402
from aaclip.export.graph import reference_preprocess  # noqa: E402
from aaclip.export.onnx_export import compute_anchors, export_onnx, graph_problems  # noqa: E402
from aaclip.export.verify import TOLERANCES, ParityReport, VerifyOptions, compare_outputs, top_iou, verify_artifact  # noqa: E402
from aaclip.runtime.backends.onnxruntime import OnnxRuntimeRunner  # noqa: E402
from aaclip.train.checkpoint import checkpoint_sha256, load_checkpoint  # noqa: E402
from model_fixtures import TINY_CLASSES, TINY_SIZE, make_tiny_checkpoint  # noqa: E402

CLASSES = list(TINY_CLASSES)  # ["disk", "wood"]
OBJECTS = list(TINY_CLASSES.values())
CAMERA = (100, 150)


# ---- session fixtures ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def ckpt(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


@pytest.fixture(scope="session")
def model(ckpt):
    return load_checkpoint(ckpt)


@pytest.fixture(scope="session")
def anchors(model):
    return compute_anchors(model, OBJECTS)  # (2, E, 2) in CLASSES order


@pytest.fixture(scope="session")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("artifacts")


@pytest.fixture(scope="session")
def fp32_single(ckpt, model, out_dir):
    return export_onnx(ckpt, out_dir / "wood32.onnx", classes=["wood"], model=model)


@pytest.fixture(scope="session")
def fp16_single(ckpt, model, out_dir):
    return export_onnx(ckpt, out_dir / "wood16.onnx", precision="fp16", classes=["wood"], model=model)


@pytest.fixture(scope="session")
def fp32_multi(ckpt, model, out_dir):
    return export_onnx(ckpt, out_dir / "all32.onnx", model=model)


@pytest.fixture(scope="session")
def fp32_camera(ckpt, model, out_dir):
    return export_onnx(ckpt, out_dir / "cam32.onnx", classes=["disk"], input_size=CAMERA, model=model)


@pytest.fixture(scope="session")
def frames():
    """Eight 64x64 BGR frames: synthetic products, half with a defect."""
    from aaclip.data import synth

    rng = np.random.default_rng(3)
    out = []
    for i in range(8):
        img = synth.draw_product(CLASSES[i % 2], rng, TINY_SIZE)
        if i % 2:
            img, _ = synth.add_defect(img, rng)
        out.append(img)
    return np.stack(out)


def run_onnx(path: Path, feeds: dict) -> dict:
    with OnnxRuntimeRunner(path, providers=["CPUExecutionProvider"]) as runner:
        return {k: np.array(v) for k, v in runner.infer(feeds).items()}


def torch_reference(model, frames_bgr, T, input_hw=(TINY_SIZE, TINY_SIZE)):
    with torch.no_grad():
        amap, cls = model.predict(reference_preprocess(frames_bgr, input_hw, TINY_SIZE), T)
    return amap.numpy(), cls.numpy()


# ---- the FP32 graph ---------------------------------------------------------------------------------
@pytest.mark.parametrize("batch", [1, 2, 3, 4])
def test_fp32_graph_matches_pytorch_for_every_batch(fp32_single, model, anchors, frames, batch):
    x = frames[:batch]
    out = run_onnx(fp32_single.path, {"image": x})
    ref_map, ref_cls = torch_reference(model, x, anchors[1])
    span = ref_map.max() - ref_map.min()
    assert out["anomaly_map"].shape == (batch, TINY_SIZE, TINY_SIZE)
    assert out["anomaly_map"].dtype == np.float32
    assert np.abs(out["anomaly_map"] - ref_map).max() <= 1e-5 * span
    np.testing.assert_allclose(out["map_max"], ref_map.reshape(batch, -1).max(axis=1), atol=1e-5 * span, rtol=0)
    np.testing.assert_allclose(out["cls_score"], ref_cls, atol=1e-6, rtol=0)
    # the map really is SPEC section 5's: 4 levels each contributing about 0.5 at a tie
    assert len(model.levels) == 4 and np.isfinite(out["anomaly_map"]).all()


def test_multiclass_graph_uses_each_images_anchors(fp32_multi, model, anchors, frames):
    x = frames[:4]
    ids = np.array([1, 0, 0, 1], dtype=np.int64)
    out = run_onnx(fp32_multi.path, {"image": x, "class_id": ids})
    for i, c in enumerate(ids):
        ref_map, ref_cls = torch_reference(model, x[i:i + 1], anchors[c])
        other_map, _ = torch_reference(model, x[i:i + 1], anchors[1 - c])
        span = ref_map.max() - ref_map.min()
        assert np.abs(out["anomaly_map"][i] - ref_map[0]).max() <= 1e-5 * span
        assert abs(out["cls_score"][i] - ref_cls[0]) <= 1e-6
        assert np.abs(out["anomaly_map"][i] - other_map[0]).max() > 100 * 1e-5 * span  # the class matters


def _value_types(model_proto) -> dict[str, int]:
    types = {}
    for v in list(model_proto.graph.input) + list(model_proto.graph.output) + list(model_proto.graph.value_info):
        types[v.name] = v.type.tensor_type.elem_type
    for init in model_proto.graph.initializer:
        types[init.name] = init.data_type
    return types


def _dims(value) -> list:
    return [d.dim_param or d.dim_value for d in value.type.tensor_type.shape.dim]


def test_graph_io_opset_and_standard_ops(fp32_single, fp32_multi):
    TP = onnx.TensorProto
    single = onnx.load(str(fp32_single.path))
    multi = onnx.load(str(fp32_multi.path))
    for proto in (single, multi):
        assert graph_problems(proto) == []
        assert [(i.domain, i.version) for i in proto.opset_import] == [("", 17)]
        assert all(n.domain in ("", "ai.onnx") for n in proto.graph.node)
        assert not any("com.microsoft" in n.domain for n in proto.graph.node)
        outs = {o.name: (o.type.tensor_type.elem_type, _dims(o)) for o in proto.graph.output}
        assert outs == {"anomaly_map": (TP.FLOAT, ["B", 64, 64]), "map_max": (TP.FLOAT, ["B"]),
                        "cls_score": (TP.FLOAT, ["B"])}
    assert [(i.name, i.type.tensor_type.elem_type, _dims(i)) for i in single.graph.input] == [
        ("image", TP.UINT8, ["B", 64, 64, 3])]
    assert [(i.name, i.type.tensor_type.elem_type, _dims(i)) for i in multi.graph.input] == [
        ("image", TP.UINT8, ["B", 64, 64, 3]), ("class_id", TP.INT64, ["B"])]
    # the text encoder is not in the graph: no token embedding table, anchors folded as (C, E, 2)
    shapes = [tuple(i.dims) for i in multi.graph.initializer]
    assert (2, 32, 2) in shapes and not any(49408 in s for s in shapes)


def test_fp16_graph_types_and_parity_with_fp32(fp16_single, fp32_single, frames):
    TP = onnx.TensorProto
    proto = onnx.load(str(fp16_single.path))
    types = _value_types(proto)
    produced = [o for n in proto.graph.node for o in n.output if o]
    assert all(types.get(o, 0) != TP.UNDEFINED for o in produced), "every tensor has an explicit type"
    half_matmuls = [n for n in proto.graph.node if n.op_type == "MatMul" and types[n.input[0]] == TP.FLOAT16]
    assert len(half_matmuls) >= 4 * 4  # 4 blocks: qkv, scores, probs@v, out, mlp...
    for n in proto.graph.node:
        if n.op_type in ("LayerNormalization", "Softmax", "ReduceL2", "Resize", "Pad", "ReduceMax"):
            assert types[n.input[0]] == TP.FLOAT, f"{n.op_type} {n.name} must stay FP32"
    assert proto.graph.input[0].type.tensor_type.elem_type == TP.UINT8
    assert all(o.type.tensor_type.elem_type == TP.FLOAT for o in proto.graph.output)
    assert sum(1 for i in proto.graph.initializer if i.data_type == TP.FLOAT16) >= 4 * 4

    feeds = {"image": frames}
    report = compare_outputs(run_onnx(fp32_single.path, feeds), run_onnx(fp16_single.path, feeds),
                             TOLERANCES["fp16"])
    assert report.passed, report.lines()
    assert report.map_corr_min >= 0.999 and report.cls_max_abs <= 5e-3
    assert report.map_rel > 0  # it really is a different (half precision) computation


def test_camera_resolution_graph_resizes_like_training(fp32_camera, model, anchors):
    from aaclip.data import synth
    from PIL import Image

    proto = onnx.load(str(fp32_camera.path))
    assert _dims(proto.graph.input[0]) == ["B", *CAMERA, 3]
    manifest = load_manifest(fp32_camera.path)
    assert (manifest.height, manifest.width) == CAMERA
    rng = np.random.default_rng(5)
    x = np.stack([synth.draw_product("disk", rng, 150)[:100] for _ in range(3)])
    out = run_onnx(fp32_camera.path, {"image": x})
    assert out["anomaly_map"].shape == (3, 64, 64)
    # exact parity with the same float resize ...
    ref_map, ref_cls = torch_reference(model, x, anchors[0], input_hw=CAMERA)
    assert np.abs(out["anomaly_map"] - ref_map).max() <= 1e-5 * (ref_map.max() - ref_map.min())
    np.testing.assert_allclose(out["cls_score"], ref_cls, atol=1e-6, rtol=0)
    # ... which is the training pipeline's (PIL bicubic on uint8, then the model): the resize is PIL-exact
    pil = np.stack([np.asarray(Image.fromarray(f[..., ::-1]).resize((64, 64), Image.BICUBIC))[..., ::-1] for f in x])
    train_map, train_cls = torch_reference(model, pil, anchors[0])
    assert np.abs(out["anomaly_map"] - train_map).max() <= 1e-5 * (train_map.max() - train_map.min())
    np.testing.assert_allclose(out["cls_score"], train_cls, atol=1e-6, rtol=0)


# ---- external data --------------------------------------------------------------------------------
def test_doc_string_appended_as_a_second_record(fp32_single):
    """A one-file graph is moved, never re-serialized from Python (memory at ViT-L size): its doc string is a
    second ModelProto record at the end of the file, which every protobuf parser merges into the model."""
    doc = "aaclip-edge aa-clip graph (fp32); the contract is docs/graph-contract.md"
    record = onnx.ModelProto(doc_string=doc).SerializeToString()
    raw = fp32_single.path.read_bytes()
    assert raw.endswith(record) and doc.encode() not in raw[:-len(record)]
    proto = onnx.load(str(fp32_single.path))
    assert proto.doc_string == doc and len(proto.graph.initializer) > 0
    onnx.checker.check_model(proto, full_check=True)  # merged model: valid, with inferred types
    assert all(v.type.tensor_type.elem_type for v in proto.graph.value_info)


def test_external_data_path(ckpt, model, tmp_path, frames, fp32_single):
    path = tmp_path / "ext.onnx"
    result = export_onnx(ckpt, path, classes=["wood"], model=model, external_data=True)
    data = tmp_path / "ext.onnx.data"
    assert result.external_data == ("ext.onnx.data",) and data.is_file()
    assert path.stat().st_size < data.stat().st_size  # the tensors live in the data file
    assert onnx.load(str(path), load_external_data=False).doc_string.startswith("aaclip-edge aa-clip graph")
    manifest = load_manifest(path)
    assert manifest.data["artifact"]["external_data"] == ["ext.onnx.data"]
    check_artifact(manifest)
    a = run_onnx(path, {"image": frames[:2]})
    b = run_onnx(fp32_single.path, {"image": frames[:2]})
    np.testing.assert_array_equal(a["anomaly_map"], b["anomaly_map"])
    assert manifest.data["artifact"]["external_data_sha256"] == {"ext.onnx.data": sha256_file(data)}
    data.rename(tmp_path / "moved.data")
    with pytest.raises(ArtifactError, match="external data file .*ext.onnx.data.* is missing"):
        check_artifact(load_manifest(path))
    (tmp_path / "moved.data").rename(data)
    original = data.read_bytes()
    data.write_bytes(original[:-4] + bytes(4))  # tampered weights, same size
    with pytest.raises(ArtifactError, match="ext.onnx.data does not match its manifest"):
        check_artifact(load_manifest(path))
    data.write_bytes(original)
    export_onnx(ckpt, path, classes=["wood"], model=model, external_data=False)
    assert not data.exists(), "re-exporting inline removes the stale data file"
    assert load_manifest(path).data["artifact"]["external_data"] == []


# ---- manifest -------------------------------------------------------------------------------------
def test_manifest_round_trip(fp32_multi, fp32_single, ckpt):
    m = load_manifest(fp32_multi.path)
    check_artifact(m)
    d = m.data
    assert d["format"] == "aaclip-manifest" and d["format_version"] == 1 and d["method"] == "aa-clip"
    assert d["artifact"] == {"file": "all32.onnx", "format": "onnx", "sha256": sha256_file(fp32_multi.path),
                             "size_bytes": fp32_multi.path.stat().st_size, "external_data": [],
                             "external_data_sha256": {}}
    assert d["precision"] == "fp32"
    assert d["source"] == {"checkpoint": str(ckpt), "checkpoint_sha256": checkpoint_sha256(ckpt), "onnx_sha256": None}
    assert d["model"] == {"backbone": "aaclip-tiny", "image_size": 64, "domain": "industrial"}
    assert d["input"] == {"name": "image", "dtype": "uint8", "layout": "NHWC", "color": "BGR", "height": 64,
                          "width": 64, "batch": None}
    assert d["class_input"] == {"name": "class_id", "dtype": "int64"}
    assert d["classes"] == [{"id": 0, "name": "disk", "object_name": "metal disk"},
                            {"id": 1, "name": "wood", "object_name": "wooden board"}]
    assert [o["name"] for o in d["outputs"]] == ["anomaly_map", "map_max", "cls_score"]
    assert d["outputs"][0]["shape"] == ["B", 64, 64]
    assert d["score"] == {"map_lo": 2.0, "map_hi": 6.0, "cls_lo": 0.5, "cls_hi": 1.0, "map_weight": 0.5,
                          "threshold": 0.5, "pixel_threshold": 0.5, "source": "default", "calibration": None}
    from aaclip.train.families.aa_clip.family import default_score

    assert d["score"] == default_score(4, "industrial").to_block("default")
    assert d["tools"]["opset"] == 17 and d["tools"]["torch"] == torch.__version__
    assert d["tensorrt"] is None
    assert d["rebuild_command"].startswith(f"aaclip-export {ckpt} --format onnx --precision fp32 --out ")
    assert m.classes == ("disk", "wood") and m.class_input == "class_id"
    single = load_manifest(fp32_single.path)
    assert single.class_input is None and single.classes == ("wood",)
    assert "--classes wood" in single.rebuild_command


def test_tampered_artifact_is_refused(fp32_single, tmp_path):
    art = tmp_path / fp32_single.path.name
    shutil.copy(fp32_single.path, art)
    shutil.copy(fp32_single.manifest, tmp_path / fp32_single.manifest.name)
    check_artifact(load_manifest(art))
    blob = bytearray(art.read_bytes())
    blob[-10] ^= 0xFF
    art.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match=r"does not match its manifest .*rebuild it with: aaclip-export"):
        check_artifact(load_manifest(art))


# ---- comparator ---------------------------------------------------------------------------------------
def test_comparator_known_answers():
    rng = np.random.default_rng(0)
    amap = rng.normal(size=(2, 10, 10)).astype(np.float32)
    ref = {"anomaly_map": amap, "map_max": amap.reshape(2, -1).max(1), "cls_score": np.array([0.5, 0.6], np.float32)}
    same = compare_outputs(ref, ref, TOLERANCES["fp32"])
    assert isinstance(same, ParityReport) and same.passed
    assert same.map_max_abs == 0 and same.map_corr_min == pytest.approx(1.0) and same.top_iou_min == 1.0
    off = {k: v.copy() for k, v in ref.items()}
    off["anomaly_map"][1, 0, 0] += 0.1 * (amap.max() - amap.min())
    off["cls_score"][0] += 0.01
    bad = compare_outputs(ref, off, TOLERANCES["fp32"])
    assert bad.map_rel == pytest.approx(0.1, rel=1e-5) and bad.cls_max_abs == pytest.approx(0.01, rel=1e-4)
    assert not bad.passed and any("anomaly_map error" in f for f in bad.failures)
    assert any("cls_score error" in f for f in bad.failures)
    a = np.arange(200.0)
    assert top_iou(a, a) == 1.0 and top_iou(a, -a) == 0.0  # top 2 pixels: {198,199} vs {0,1}


# ---- verify --------------------------------------------------------------------------------------
def test_verify_passes_and_the_gate_fails_beyond_tolerance(fp32_multi, model, capsys):
    report = verify_artifact(fp32_multi.path, options=VerifyOptions(frames=6), model=model)
    assert report.passed and report.frames == 6 and report.map_rel < 1e-5
    with pytest.raises(SystemExit) as exc:
        export_cli.main(["--verify", str(fp32_multi.path), "--frames", "2"])
    assert exc.value.code == 0
    assert "PASS" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        export_cli.main(["--verify", str(fp32_multi.path), "--frames", "2", "--map-tol", "1e-12"])
    assert exc.value.code == 1
    assert "FAIL: anomaly_map error" in capsys.readouterr().out


def test_verify_reads_an_image_folder(fp32_multi, model, frames, tmp_path):
    import cv2

    for i, c in enumerate(["disk", "wood", "wood"]):
        (tmp_path / c).mkdir(exist_ok=True)
        cv2.imwrite(str(tmp_path / c / f"{i}.png"), cv2.resize(frames[i], (90, 70)))  # fitted to 64x64
    report = verify_artifact(fp32_multi.path, options=VerifyOptions(images=tmp_path), model=model)
    assert report.passed and report.frames == 3


# ---- CLI errors -----------------------------------------------------------------------------------
def _cli_ok(argv) -> None:
    try:
        export_cli.main([str(a) for a in argv])
    except SystemExit as exc:  # click exits 0 on success in standalone mode
        assert exc.code in (0, None)


def _cli_error(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        export_cli.main([str(a) for a in argv])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]  # log lines may come first
    assert err.startswith("error: ")
    return err


def test_cli_errors(ckpt, tmp_path, capsys):
    assert "checkpoint directory not found" in _cli_error([tmp_path / "nope"], capsys)
    corrupt = tmp_path / "corrupt"
    shutil.copytree(ckpt, corrupt)
    (corrupt / "adapters.safetensors").write_bytes(b"not a safetensors file")
    assert "is corrupt" in _cli_error([corrupt, "--out", tmp_path / "x.onnx"], capsys)
    err = _cli_error([ckpt, "--classes", "bottle", "--out", tmp_path / "x.onnx"], capsys)
    assert "unknown class 'bottle'" in err and "disk, wood" in err
    assert "opset 16 is outside 17..20" in _cli_error([ckpt, "--opset", "16"], capsys)
    assert "opset 21 is outside 17..20" in _cli_error([ckpt, "--opset", "21"], capsys)
    assert "--input-size '1080by1920' is not HxW" in _cli_error([ckpt, "--input-size", "1080by1920"], capsys)
    assert "MIN:OPT:MAX" in _cli_error([ckpt, "--format", "engine", "--batch", "4:2:8"], capsys)
    assert "give a checkpoint directory" in _cli_error([], capsys)
    assert "ends in .onnx but --format engine" in _cli_error([ckpt, "--format", "engine", "--out", "m.onnx"], capsys)
    assert not (tmp_path / "x.onnx").exists()


def test_cli_exports_onnx_with_options(ckpt, tmp_path, capsys):
    out = tmp_path / "cli.onnx"
    _cli_ok([ckpt, "--out", out, "--classes", "wood,disk", "--opset", "18", "-q"])
    assert capsys.readouterr().out.strip() == str(out)
    m = load_manifest(out)
    assert m.classes == ("wood", "disk") and m.data["tools"]["opset"] == 18
    assert [(i.domain, i.version) for i in onnx.load(str(out)).opset_import] == [("", 18)]


# ---- TensorRT engines -----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def rtx_engine(ckpt, tmp_path_factory):
    try:
        import tensorrt_rtx  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"tensorrt_rtx (pip install tensorrt-rtx-cu13) cannot be imported: {exc}")
    out = tmp_path_factory.mktemp("engine")
    engine = out / "all16.engine"
    argv = [str(ckpt), "--format", "engine", "--precision", "fp16", "--trt-flavour", "tensorrt-rtx",
            "--out", str(engine), "--engine-batch", "1:2:4", "--timing-cache", str(out / "timing.cache"), "-q"]
    _cli_ok(argv)
    return engine, argv


def test_tensorrt_rtx_builds_engine_from_fp16_graph(rtx_engine, ckpt, capsys):
    import tensorrt_rtx

    engine, argv = rtx_engine
    onnx_path = engine.with_suffix(".onnx")
    assert engine.stat().st_size > 100_000
    assert not (engine.parent / "timing.cache").exists()  # TensorRT-RTX has no timing cache
    m = load_manifest(engine)
    check_artifact(m)
    d = m.data
    assert d["artifact"]["format"] == "engine" and d["precision"] == "fp16"
    assert d["tensorrt"] == {"flavour": "tensorrt-rtx", "version": tensorrt_rtx.__version__, "gpu_name": None,
                             "compute_capability": None}
    assert d["input"]["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert d["source"]["onnx_sha256"] == sha256_file(onnx_path)
    assert d["source"]["checkpoint_sha256"] == checkpoint_sha256(ckpt)
    assert "--format engine" in d["rebuild_command"] and "--trt-flavour tensorrt-rtx" in d["rebuild_command"]
    assert load_manifest(onnx_path).data["precision"] == "fp16"
    # the runtime refuses it on another TensorRT version
    check_engine_compat(m, "tensorrt-rtx", tensorrt_rtx.__version__, "8.6")
    with pytest.raises(ArtifactError, match="built with tensorrt-rtx"):
        check_engine_compat(m, "tensorrt-rtx", "0.9.0", None)
    # a rebuild reuses the intact ONNX graph instead of exporting it again
    before = onnx_path.stat().st_mtime_ns
    capsys.readouterr()
    _cli_ok(argv[:-1] + ["-v"])
    assert onnx_path.stat().st_mtime_ns == before
    assert "reusing" in capsys.readouterr().err


def test_engine_from_an_exported_graph_without_pytorch(rtx_engine, tmp_path):
    """The Jetson route: copy the .onnx + manifest, build the engine there with TensorRT but no PyTorch."""
    import subprocess
    import sys

    engine, _ = rtx_engine
    onnx_path = tmp_path / "copied.onnx"
    shutil.copy(engine.with_suffix(".onnx"), onnx_path)
    shutil.copy(engine.with_suffix(".onnx.manifest.json"), tmp_path / "copied.onnx.manifest.json")
    code = ("import sys; sys.modules['torch'] = None; sys.modules['open_clip'] = None\n"
            "from aaclip.export.cli import main\n"
            f"main(['{onnx_path}', '--format', 'engine', '--trt-flavour', 'tensorrt-rtx', '--batch', '1:1:2', '-q'])")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    built = tmp_path / "copied.engine"
    assert done.stdout.strip() == str(built)
    m = load_manifest(built)
    check_artifact(m)
    assert m.data["input"]["batch"] == {"min": 1, "opt": 1, "max": 2}
    assert m.data["source"]["onnx_sha256"] == sha256_file(onnx_path)
    assert m.data["classes"] == load_manifest(onnx_path).data["classes"]
    assert m.rebuild_command.startswith(f"aaclip-export {onnx_path} --format engine")


def test_exported_graph_options_are_fixed(fp32_single, capsys):
    err = _cli_error([fp32_single.path, "--format", "engine", "--precision", "fp16"], capsys)
    assert "--precision cannot change an exported graph" in err
    assert "add --format engine" in _cli_error([fp32_single.path], capsys)


def test_verifying_an_engine_without_gpu_is_a_clear_error(rtx_engine, capsys):
    from aaclip.export.engine import gpu_info

    if gpu_info()[0] is not None:
        pytest.skip("a GPU is visible: the engine can be verified")
    engine, _ = rtx_engine
    err = _cli_error(["--verify", engine], capsys)
    assert "needs an NVIDIA GPU" in err


def test_missing_tensorrt_module_is_a_clear_error(ckpt, capsys, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    err = _cli_error([ckpt, "--format", "engine", "--trt-flavour", "tensorrt"], capsys)
    assert "needs the Python module 'tensorrt'" in err and "tensorrt-rtx" in err


class _FakeTensorRT:
    """Just enough of the TensorRT 10 Python API to drive export.engine.build_engine for the standard flavour."""

    __version__ = "10.3.0.30"

    def __init__(self, parse_ok=True):
        fake = self
        self.calls = []

        class Severity:
            INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        class ILogger:
            pass

        ILogger.Severity = Severity
        self.ILogger = ILogger
        self.NetworkDefinitionCreationFlag = type("F", (), {"STRONGLY_TYPED": 0})
        self.MemoryPoolType = type("M", (), {"WORKSPACE": "workspace"})
        self.BuilderFlag = type("B", (), {"FP16": "fp16"})

        class Tensor:
            def __init__(self, name, shape):
                self.name, self.shape = name, shape

        class Network:
            num_inputs = 2

            def get_input(self, i):
                return [Tensor("image", (-1, 64, 64, 3)), Tensor("class_id", (-1,))][i]

        class Cache:
            def __init__(self, blob):
                self.blob = blob

            def serialize(self):
                return self.blob + b"+timed"

        class Config:
            def set_memory_pool_limit(self, pool, size):
                fake.calls.append(("workspace", pool, size))

            def set_flag(self, flag):
                fake.calls.append(("flag", flag))

            def add_optimization_profile(self, profile):
                fake.calls.append(("profile", dict(profile.shapes)))

            def create_timing_cache(self, blob):
                fake.calls.append(("cache_in", bytes(blob)))
                return Cache(bytes(blob))

            def set_timing_cache(self, cache, ignore_mismatch):
                self.cache = cache

            def get_timing_cache(self):
                return self.cache

        class Profile:
            def __init__(self):
                self.shapes = {}

            def set_shape(self, name, lo, opt, hi):
                self.shapes[name] = (lo, opt, hi)

        class Builder:
            def __init__(self, logger):
                pass

            def create_network(self, flags):
                fake.calls.append(("network_flags", flags))
                return Network()

            def create_builder_config(self):
                return Config()

            def create_optimization_profile(self):
                return Profile()

            def build_serialized_network(self, network, config):
                return b"ENGINE"

        class OnnxParser:
            num_errors = 0 if parse_ok else 1

            def __init__(self, network, logger):
                pass

            def parse_from_file(self, path):
                fake.calls.append(("parse", path))
                return parse_ok

            def get_error(self, i):
                return "Unsupported op FancyOp"

        self.Builder, self.OnnxParser = Builder, OnnxParser


def test_standard_tensorrt_build_profile_and_timing_cache(monkeypatch, tmp_path, fp32_multi):
    import sys

    from aaclip.export import engine as engine_mod

    fake = _FakeTensorRT()
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    monkeypatch.setattr(engine_mod, "gpu_info", lambda: ("Orin", "8.7"))
    cache = tmp_path / "timing.cache"
    cache.write_bytes(b"old")
    info = engine_mod.build_engine(fp32_multi.path, tmp_path / "m.engine", flavour="tensorrt", batch=(1, 4, 8),
                                   workspace_mb=64, timing_cache=cache, fp16_flag=True)
    assert info == {"flavour": "tensorrt", "version": "10.3.0.30", "gpu_name": "Orin", "compute_capability": "8.7"}
    assert (tmp_path / "m.engine").read_bytes() == b"ENGINE"
    assert cache.read_bytes() == b"old+timed"  # loaded, then saved after the build
    calls = dict((c[0], c[1:]) for c in fake.calls)
    assert calls["network_flags"] == (1,)  # strongly typed: 1 << STRONGLY_TYPED
    assert "flag" not in calls  # no BuilderFlag.FP16 on a strongly typed network
    assert calls["workspace"] == ("workspace", 64 << 20)
    assert calls["profile"] == ({"image": ((1, 64, 64, 3), (4, 64, 64, 3), (8, 64, 64, 3)),
                                 "class_id": ((1,), (4,), (8,))},)
    assert calls["cache_in"] == (b"old",)

    monkeypatch.setattr(engine_mod, "gpu_info", lambda: (None, None))
    with pytest.raises(UserError, match="no CUDA GPU is visible"):
        engine_mod.build_engine(fp32_multi.path, tmp_path / "n.engine", flavour="tensorrt")
    monkeypatch.setattr(engine_mod, "gpu_info", lambda: ("Orin", "8.7"))
    monkeypatch.setitem(sys.modules, "tensorrt", _FakeTensorRT(parse_ok=False))
    with pytest.raises(UserError, match="tensorrt 10.3.0.30 cannot parse all32.onnx: Unsupported op FancyOp"):
        engine_mod.build_engine(fp32_multi.path, tmp_path / "n.engine", flavour="tensorrt")
    assert not (tmp_path / "n.engine").exists()


def test_parse_batch():
    from aaclip.export.engine import parse_batch

    assert parse_batch("1:4:8") == (1, 4, 8) and parse_batch("6") == (1, 6, 6)
    for bad in ("0:1:2", "4:2:8", "1:2", "a:b:c"):
        with pytest.raises(UserError, match="MIN:OPT:MAX"):
            parse_batch(bad)


def test_manifest_json_is_plain_json(fp32_single):
    assert json.loads(fp32_single.manifest.read_text())["artifact"]["file"] == "wood32.onnx"
