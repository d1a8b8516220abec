"""``aaclip-calibrate bf16``'s search on each CPU branch (no BF16: refused or emulated; BF16: searched, gated,
recorded with its plan), the BF16 emulation's numbers, and the recorded plan reaching OpenVINO's marks."""
import json

import cv2
import numpy as np
import pytest
from aaclip.calibration.bf16 import bf16_units, emulated_graph
from aaclip.calibration.cli import cli
from aaclip.contract.manifest import load_manifest, open_artifact
from aaclip.runtime.backends import RunnerOptions, open_runner
from aaclip.data.synth import draw_product
from click.testing import CliRunner
from model_fixtures import make_tiny_checkpoint

onnx = pytest.importorskip("onnx")
ov = pytest.importorskip("openvino")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from aaclip.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("bf16")
    make_tiny_checkpoint(root / "ckpt")
    art = export_onnx(root / "ckpt", root / "model.onnx", classes=["disk"]).path
    rng = np.random.default_rng(5)
    (root / "good").mkdir()
    for i in range(8):
        cv2.imwrite(str(root / "good" / f"{i}.png"), draw_product("disk", rng, 64))
    return art


@pytest.fixture
def copy(tiny, tmp_path):
    """A private copy of the artifact (each test writes its own manifest)."""
    dst = tmp_path / "model.onnx"
    dst.write_bytes(tiny.read_bytes())
    (tmp_path / "model.onnx.manifest.json").write_text(tiny.with_name("model.onnx.manifest.json").read_text())
    return dst


def fake_cpu(monkeypatch, has_bf16: bool):
    import aaclip.runtime.backends.openvino as ovb

    monkeypatch.setattr(ovb, "bf16_capable", lambda core=None, device="CPU": has_bf16)


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_emulated_graph_rounds_inputs_and_output_to_bf16(tmp_path):
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((8, 5)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="/resblocks.0/mlp/c_fc/MatMul")],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [3, 5])],
                              [numpy_helper.from_array(w, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "m.onnx"))
    x = rng.standard_normal((3, 8)).astype(np.float32)

    def bf16(a):  # round to nearest even on the upper 16 bits
        bits = np.asarray(a, np.float32).view(np.uint32).astype(np.uint64)
        bits = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16) << 16
        return bits.astype(np.uint32).view(np.float32)

    out = emulated_graph(tmp_path / "m.onnx", frozenset({"/resblocks.0/mlp/c_fc/MatMul"}), tmp_path / "e.onnx")
    y = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    expected = bf16(bf16(x).astype(np.float64) @ bf16(w).astype(np.float64))
    np.testing.assert_allclose(y, expected, rtol=1e-2)  # bf16 has 8 bits of mantissa
    assert np.array_equal(y, bf16(y)) and not np.array_equal(y, x @ w)  # the output is a bf16 value


def test_units_are_the_transformer_matmuls(tiny):
    units = {u.name: u for u in bf16_units(tiny)}
    assert len(units) == 13  # patch embedding + 4 blocks x (qkv, attn_out, mlp)
    assert units["block.0/qkv"].nodes == ("/resblocks.0/attn/MatMul", "/resblocks.0/attn/MatMul_1",
                                          "/resblocks.0/attn/MatMul_2")
    assert units["block.3/attn_out"].nodes == ("/resblocks.3/attn/MatMul_3",)
    assert not any(n.startswith(("/image_adapters", "/seg_proj")) for u in units.values() for n in u.nodes)


def test_cpu_without_bf16_refuses_with_one_line(tiny, copy, monkeypatch):
    fake_cpu(monkeypatch, False)
    before = (copy.parent / "model.onnx.manifest.json").read_text()
    r = invoke("bf16", copy, "--images", tiny.parent / "good", "-q")
    assert r.exit_code == 2
    assert r.output.strip().splitlines()[-1].startswith("error: this CPU has no BF16")
    assert "--emulate" in r.output
    assert (copy.parent / "model.onnx.manifest.json").read_text() == before


def test_emulate_previews_the_plan_and_records_nothing(tiny, copy, monkeypatch):
    fake_cpu(monkeypatch, False)
    before = (copy.parent / "model.onnx.manifest.json").read_text()
    r = invoke("bf16", copy, "--images", tiny.parent / "good", "--holdout", 8, "--emulate", "-q")
    assert r.exit_code == 0, r.output
    assert "plan: 13 of 13 units in low precision" in r.stdout and "accuracy gate (passed):" in r.stdout
    err = float(r.stdout.split("max map error / FP32 map range: ")[1].split()[0])
    assert 0 < err < 0.01  # BF16 rounding moves the map, within the limit on the tiny model
    assert "nothing recorded" in r.stdout
    assert (copy.parent / "model.onnx.manifest.json").read_text() == before

    strict = invoke("bf16", copy, "--images", tiny.parent / "good", "--holdout", 8, "--emulate",
                    "--max-map-err", err / 3, "-q")
    assert strict.exit_code == 0, strict.output
    low = int(strict.stdout.split("plan: ")[1].split()[0])
    assert 0 < low < 13 and "kept FP32" in strict.stdout  # a third of the error budget: some blocks stay FP32


def test_bf16_cpu_records_the_plan_and_openvino_marks_it(tiny, copy, monkeypatch, tmp_path):
    fake_cpu(monkeypatch, True)  # where OpenVINO has no BF16 it compiles the hint as FP32: plumbing, not numbers
    r = invoke("bf16", copy, "--images", tiny.parent / "good", "--holdout", 4, "--cache-dir", tmp_path / "c", "-q")
    assert r.exit_code == 0, r.output
    record = load_manifest(copy).data["precision_gates"]["openvino-bf16"]
    assert record["passed"] is True and record["plan"]["units_fp32"] == [] and record["fp32_nodes"] == []
    assert len(record["plan"]["units_low"]) == 13 and record["speedup"]["backend"] == "openvino"

    # a recorded plan that keeps block 1 FP32 is re-applied (--plan) and reaches OpenVINO's precise marks
    data = json.loads((copy.parent / "model.onnx.manifest.json").read_text())
    plan = data["precision_gates"]["openvino-bf16"]["plan"]
    plan["units_fp32"] = ["block.1/qkv", "block.1/attn_out", "block.1/mlp"]
    plan["units_low"] = [u for u in plan["units_low"] if u not in plan["units_fp32"]]
    (tmp_path / "plan.manifest.json").write_text(json.dumps(data))
    r = invoke("bf16", copy, "--images", tiny.parent / "good", "--holdout", 4, "--plan", tmp_path / "plan.manifest.json",
               "--cache-dir", tmp_path / "c", "-q")
    assert r.exit_code == 0, r.output
    assert "kept FP32, whole: block.1" in r.stdout and "(re-applied from the manifest)" in r.stdout
    record = load_manifest(copy).data["precision_gates"]["openvino-bf16"]
    assert set(record["fp32_nodes"]) == {"/resblocks.1/attn/MatMul", "/resblocks.1/attn/MatMul_1",
                                         "/resblocks.1/attn/MatMul_2", "/resblocks.1/attn/MatMul_3",
                                         "/resblocks.1/mlp/c_fc/MatMul", "/resblocks.1/mlp/c_proj/MatMul"}
    m = open_artifact(copy)
    cache = tmp_path / "run-cache"
    with open_runner(m, "openvino", RunnerOptions(device="cpu", extra={"precision": "bf16", "cache_dir": str(cache)})):
        pass
    towers = list(cache.glob("*/mixed-*/tower.xml"))
    assert len(towers) == 1  # the plan's own IR folder
    import xml.etree.ElementTree as ET

    precise = {layer.get("name"): layer.find("rt_info/attribute[@name='precise']") is not None
               for layer in ET.parse(towers[0]).getroot().iter("layer") if layer.get("type") == "MatMul"}
    assert precise["/resblocks.1/mlp/c_fc/MatMul"] and precise["/resblocks.1/attn/MatMul_1"]  # kept FP32
    assert not precise["/resblocks.0/mlp/c_fc/MatMul"] and not precise["/resblocks.2/attn/MatMul_3"]  # BF16
