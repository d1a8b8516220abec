"""The openvino backend: the runtime loop, FP32 parity with ONNX Runtime on the tiny AA-CLIP export, the mixed
BF16 split (tower BF16 matmuls, FP32 head) behind the accuracy gate, auto selection, calibration through the
registry, the model cache."""
import json
import xml.etree.ElementTree as ET
from pathlib import Path

import cv2
import numpy as np
import pytest
from aaclip.calibration.cli import cli as calibrate_cli
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import load_manifest, open_artifact
from aaclip.runtime import backends as B
from aaclip.runtime.backends import RunnerOptions, choose_backend, open_runner
from aaclip.runtime.backends.base import infer_frames
from aaclip.runtime.backends.openvino import FP32_SCOPES, OpenVinoRunner
from aaclip.runtime.backends.options import runner_options
from aaclip.runtime.cli import RunConfig, run
from aaclip.data.synth import draw_product
from click.testing import CliRunner
from model_fixtures import make_tiny_checkpoint
from runtime_fixtures import CLEAN_LEVEL, frame_image, make_onnx_artifact, read_events, write_video

ov = pytest.importorskip("openvino")  # CI installs it through the dev extra


def ov_options(tmp_path, **extra):
    return RunnerOptions(device="cpu", extra={"cache_dir": str(tmp_path / "ov-cache"), **extra})


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """The tiny AA-CLIP checkpoint exported to FP32 ONNX (one class), and 12 product images."""
    from aaclip.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("ov")
    make_tiny_checkpoint(root / "ckpt")
    art = export_onnx(root / "ckpt", root / "model.onnx", classes=["disk"]).path
    rng = np.random.default_rng(3)
    (root / "good").mkdir()
    frames = []
    for i in range(12):
        frames.append(draw_product("disk", rng, 64))
        cv2.imwrite(str(root / "good" / f"{i:02d}.png"), frames[-1])
    return art, np.stack(frames)


def test_camera_loop_runs_on_openvino(tmp_path):
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "line.avi", 8, defect_frames=[2, 3, 6])
    events = tmp_path / "events.jsonl"
    summary = run(RunConfig(artifact=art, cameras=(str(video),), backend="openvino", drop=False, events=events,
                            runner=runner_options("cpu", 1, None, "latency", str(tmp_path / "cache"))))
    ev = read_events(events)
    assert [e["frame"] for e in ev] == list(range(8))
    assert {i for i, e in enumerate(ev) if e["anomalous"]} == {2, 3, 6}
    assert all(e["map_max"] > 0.95 for e in ev if e["anomalous"])
    clean = [e["cls_score"] for e in ev if not e["anomalous"]]
    np.testing.assert_allclose(clean, CLEAN_LEVEL, atol=0.02)
    assert (summary.frames, summary.anomalous) == (8, 3)


def test_multi_class_and_throughput_hint_split_batches(tmp_path):
    m = open_artifact(make_onnx_artifact(tmp_path, classes=("a", "b"), class_offsets=[0.0, 0.5]))
    frames = [frame_image(i % 2 == 0, seed=i) for i in range(5)]
    with open_runner(m, "onnxruntime") as ort:
        ref = infer_frames(ort, m, frames, [0, 1, 0, 1, 1], batch=4)
    with open_runner(m, "openvino", ov_options(tmp_path, perf_hint="throughput")) as runner:
        assert runner.input_names == ("image", "class_id")
        assert set(runner.output_names) == {"anomaly_map", "map_max", "cls_score"}
        out = infer_frames(runner, m, frames, [0, 1, 0, 1, 1], batch=4)
    for name in ("anomaly_map", "map_max", "cls_score"):
        np.testing.assert_allclose(out[name], ref[name], atol=1e-5)  # summation order of the means


def test_fp32_matches_onnxruntime_on_tiny_aaclip(tiny, tmp_path):
    art, frames = tiny
    m = open_artifact(art)
    with open_runner(m, "onnxruntime", RunnerOptions(device="cpu")) as ort:
        ref = infer_frames(ort, m, frames, batch=4)
    with open_runner(m, "openvino", ov_options(tmp_path)) as runner:
        out = infer_frames(runner, m, frames, batch=4)
        layers = runner.execution_precision
    span = ref["anomaly_map"].max() - ref["anomaly_map"].min()
    assert span > 0
    assert np.abs(out["anomaly_map"] - ref["anomaly_map"]).max() <= 1e-5 * span
    assert np.abs(out["map_max"] - ref["map_max"]).max() <= 1e-5 * span
    np.testing.assert_allclose(out["cls_score"], ref["cls_score"], atol=1e-5)
    assert "bf16" not in layers and layers.get("f32", 0) > 100  # the FP32 hint is set explicitly
    assert any((tmp_path / "ov-cache" / m.sha256[:16]).iterdir())  # compiled blob cached for the next start


def cpu_has_bf16() -> bool:
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")


def ir_layers(xml: Path) -> list[tuple[str, str, bool]]:
    """(type, name, marked ``precise``) of every layer of an IR file."""
    root = ET.parse(xml).getroot()
    return [(layer.get("type"), layer.get("name"), layer.find("rt_info/attribute[@name='precise']") is not None)
            for layer in root.iter("layer")]


def test_mixed_bf16_keeps_head_and_norms_fp32(tiny, tmp_path, monkeypatch):
    """The split is checked on every CPU: the IR the runner compiles (tower marks, head contents), the
    precision each part is compiled with, and the split's outputs. Where the CPU runs BF16, also the compiled
    model's runtime precisions and the BF16 error; elsewhere OpenVINO would compile BF16 as FP32, so the
    runner refuses it and the rest runs with that refusal bypassed."""
    art, frames = tiny
    m = open_artifact(art)
    options = ov_options(tmp_path, precision="bf16", ungated=True)
    bf16 = cpu_has_bf16()
    if not bf16:
        with pytest.raises(UserError, match="has no BF16 support"):
            open_runner(m, "openvino", options).activate()
        monkeypatch.setattr(OpenVinoRunner, "_check_device", lambda self, core: None)
    compiled = []  # (model file, INFERENCE_PRECISION_HINT) of each compile_model call
    real_compile = ov.Core.compile_model

    def spy(self, model, device=None, config=None):
        compiled.append((Path(str(model)).name, (config or {}).get("INFERENCE_PRECISION_HINT")))
        return real_compile(self, model, device, config)

    monkeypatch.setattr(ov.Core, "compile_model", spy)
    with open_runner(m, "openvino", ov_options(tmp_path)) as fp32:
        ref = infer_frames(fp32, m, frames, batch=2)
    compiled.clear()
    with open_runner(m, "openvino", options) as runner:
        out = infer_frames(runner, m, frames, batch=2)
        tower_stage, head_stage = runner._stages
        tower_ops = {(o.get_friendly_name(), o.get_rt_info()["layerType"].astype(str)):
                     o.get_rt_info()["runtimePrecision"].astype(str)
                     for o in tower_stage.compiled.get_runtime_model().get_ops()}
        head_prec = head_stage.runtime_precisions()
    assert compiled == [("tower.xml", "bf16"), ("head.xml", "f32")]  # the head is compiled under the FP32 hint

    mixed = tmp_path / "ov-cache" / m.sha256[:16] / "mixed"
    tower, head = ir_layers(mixed / "tower.xml"), ir_layers(mixed / "head.xml")
    skip = ("Parameter", "Result", "Const")
    norms = [marked for kind, name, marked in tower if kind == "MVN"]
    assert len(norms) >= 9 and all(norms)  # every LayerNorm of the tower stays FP32 (4 blocks x 2 + ln_pre ...)
    in_blocks = [marked for kind, name, marked in tower if kind == "MatMul" and name.startswith("/resblocks.")]
    assert len(in_blocks) >= 4 * 6 and not any(in_blocks)  # the transformer's matmuls are left to the BF16 hint
    assert [marked for kind, name, marked in tower if kind == "Convolution"] == [False]  # conv1, the patch embedding
    adapters = [marked for kind, name, marked in tower if kind == "MatMul" and name.startswith(FP32_SCOPES)]
    assert len(adapters) >= 2 and all(adapters)  # adapters and projections: FP32
    left = {(kind, name) for kind, name, marked in tower if not marked and kind not in skip}
    assert {kind for kind, name in left} == {"MatMul", "Convolution"}  # nothing else runs in BF16
    head_kinds = {kind for kind, name, marked in head}
    assert {"MatMul", "Interpolate", "ReduceMax", "Convolution"} <= head_kinds  # similarity, resize, max, blur
    assert not any(name.startswith("/resblocks.") for kind, name, marked in head)
    n_features = sum(kind == "Result" for kind, name, marked in tower)
    assert n_features >= 2 and [name for kind, name, marked in head if kind == "Parameter"] == \
        [f"tower_out_{i}" for i in range(n_features)]  # the head takes exactly the tower's outputs

    assert "bf16" not in head_prec and head_prec["f32"] > 10  # similarity, blur, resize, max: FP32
    assert {p for (name, kind), p in tower_ops.items() if kind == "MVN"} == {"f32"}  # LayerNorm
    span = ref["anomaly_map"].max() - ref["anomaly_map"].min()
    err = np.abs(out["anomaly_map"] - ref["anomaly_map"]).max() / span
    fc = [p for (name, kind), p in tower_ops.items() if kind == "FullyConnected" and "/resblocks." in name]
    if bf16:
        assert fc and set(fc) == {"bf16"}  # the transformer's matmuls
        assert 0 < err < 0.01  # BF16 does change the numbers, within the gate's default map limit
    else:  # OpenVINO ran the BF16 hint as FP32 here: tower + head must reproduce the single FP32 graph
        assert fc and set(fc) == {"f32"}
        assert err <= 1e-5
        np.testing.assert_allclose(out["cls_score"], ref["cls_score"], atol=1e-5)


def test_bf16_refused_until_the_gate_passes(tiny, tmp_path):
    art, _ = tiny
    if not cpu_has_bf16():
        pytest.skip("this CPU has no BF16 (the gate measures BF16 against FP32; the split itself is checked on "
                    "every CPU by test_mixed_bf16_keeps_head_and_norms_fp32)")
    copy = tmp_path / "model.onnx"
    copy.write_bytes(art.read_bytes())
    (tmp_path / "model.onnx.manifest.json").write_text(art.with_name(art.name + ".manifest.json").read_text())
    good = art.parent / "good"
    with pytest.raises(UserError, match="has not passed the accuracy gate: run aaclip-calibrate bf16"):
        open_runner(open_artifact(copy), "openvino", ov_options(tmp_path, precision="bf16"))

    cache = str(tmp_path / "c")
    strict = CliRunner().invoke(calibrate_cli, ["bf16", str(copy), "--images", str(good), "--holdout", "4",
                                                "--max-map-err", "1e-9", "--cache-dir", cache])
    assert strict.exit_code == 1, strict.output
    assert "accuracy gate (FAILED):" in strict.stdout and "FAIL  max map error" in strict.stdout
    assert "precision_gates" not in json.loads((tmp_path / "model.onnx.manifest.json").read_text())

    ok = CliRunner().invoke(calibrate_cli, ["bf16", str(copy), "--images", str(good), "--holdout", "4",
                                            "--cache-dir", cache])
    assert ok.exit_code == 0, ok.output
    assert "accuracy gate (passed):" in ok.stdout and ok.stdout.count("  PASS  ") == 4
    record = load_manifest(copy).data["precision_gates"]["openvino-bf16"]
    assert record["passed"] is True and record["artifact_sha256"] == load_manifest(copy).sha256
    assert record["gate"]["map_err"] < 0.01 and record["runtime_precisions"]["bf16"] > 0
    with open_runner(open_artifact(copy), "openvino", ov_options(tmp_path, precision="bf16")) as runner:
        assert runner.settings.precision == "bf16"


@pytest.mark.both_cpus
def test_auto_picks_openvino_on_intel_cpus_only(tmp_path, cpu_vendor):
    m = open_artifact(make_onnx_artifact(tmp_path))
    assert choose_backend(m).name == {"intel": "openvino", "amd": "onnxruntime"}[cpu_vendor]
    assert "openvino" in B.backend_names()


def test_option_errors_are_user_errors(tmp_path):
    m = open_artifact(make_onnx_artifact(tmp_path))
    with pytest.raises(UserError, match="not CUDA"):
        open_runner(m, "openvino", RunnerOptions(device="cuda"))
    with pytest.raises(UserError, match="INT8 comes from an INT8 graph"):
        open_runner(m, "openvino", RunnerOptions(extra={"precision": "int8"}))
    with pytest.raises(UserError, match="sees no device 'NPU'"):
        open_runner(m, "openvino", RunnerOptions(device="npu", extra={"cache_dir": "none"})).activate()
    with pytest.raises(UserError, match="a precision hint needs --backend openvino"):
        open_runner(m, "onnxruntime", RunnerOptions(extra={"precision": "bf16"}))


def test_threshold_calibration_through_openvino(tmp_path):
    art = make_onnx_artifact(tmp_path)
    good = tmp_path / "good"
    good.mkdir()
    for i in range(40):
        cv2.imwrite(str(good / f"{i:02d}.png"), frame_image(False, seed=i))
    r = CliRunner().invoke(calibrate_cli, ["threshold", str(art), "--images", str(good), "--backend", "openvino",
                                           "--cache-dir", "none", "--threads", "1", "--no-plot"])
    assert r.exit_code == 0, r.output
    calib = load_manifest(art).data["score"]["calibration"]
    assert calib["backend"] == "openvino" and calib["frames"] == 40
    score = load_manifest(art).data["score"]
    assert score["map_lo"] == pytest.approx(CLEAN_LEVEL, abs=0.03)  # darkness of the clean grey frames


def test_int8_gate_on_openvino(tiny, tmp_path):
    art, _ = tiny
    out = tmp_path / "model.int8.onnx"
    r = CliRunner().invoke(calibrate_cli, ["int8", str(art), "--images", str(art.parent / "good"), "--holdout", "4",
                                           "--backend", "openvino", "--out", str(out), "--force"])
    assert r.exit_code == 0, r.output
    gate = load_manifest(out).data["quantization"]["gate"]
    assert gate["backend"] == "openvino" and "map_err" in gate and gate["limits"]["max_map_err"] == 0.01
    m = open_artifact(out)
    with open_runner(m, "openvino", ov_options(tmp_path)) as runner:
        layers = runner.execution_precision
    assert layers.get("i8", 0) + layers.get("u8", 0) > 8  # Q/DQ became integer kernels


def test_runtime_cli_refuses_ungated_bf16_with_one_line(tmp_path):
    from aaclip.runtime.cli import main

    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "line.avi", 2)
    r = CliRunner().invoke(main, [str(art), "--camera", str(video), "--backend", "openvino", "--precision", "bf16",
                                  "--no-drop"])
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith("error: bf16 on model.onnx has not passed the accuracy gate")
    ok = CliRunner().invoke(main, [str(art), "--camera", str(video), "--backend", "openvino", "--threads", "1",
                                   "--cache-dir", "none", "--no-drop"])
    assert ok.exit_code == 0, ok.output
    assert "2 frames" in ok.output


def test_export_verifier_runs_the_graph_on_openvino(tiny):
    from aaclip.export.verify import VerifyOptions, verify_artifact

    art, _ = tiny
    report = verify_artifact(art, art.parent / "ckpt", VerifyOptions(frames=2, backend="openvino"))
    assert report.passed and report.map_rel <= 1e-4, report.lines()


def test_manifest_with_another_frame_size_is_refused(tmp_path):
    import json

    from aaclip.contract.errors import ArtifactError
    from aaclip.contract.files import sha256_file
    from aaclip.contract.manifest import manifest_path, write_manifest
    from runtime_fixtures import build_darkness_onnx

    art = make_onnx_artifact(tmp_path)
    build_darkness_onnx(art, height=32, width=48)
    data = json.loads(manifest_path(art).read_text())
    data["artifact"]["sha256"], data["artifact"]["size_bytes"] = sha256_file(art), art.stat().st_size
    write_manifest(art, data)
    with pytest.raises(ArtifactError, match="the graph takes 32x48 frames but its manifest says 64x64"):
        open_runner(open_artifact(art), "openvino", ov_options(tmp_path)).activate()
