"""``aaclip-calibrate int8``: Q/DQ graph of the tiny AA-CLIP export, its accuracy gate, TensorRT-RTX build."""
import json

import cv2
import numpy as np
import pytest
from aaclip.calibration.cli import cli, main
from aaclip.calibration.gate import GateLimits, evaluate_gate, frame_correlations
from aaclip.calibration.int8 import build_int8_engine, plan_quantization
from aaclip.contract.files import sha256_file
from aaclip.contract.manifest import check_artifact, load_manifest
from aaclip.contract.metrics import spearman
from aaclip.runtime.backends import RunnerOptions, open_runner
from aaclip.data.synth import draw_product
from click.testing import CliRunner
from model_fixtures import make_tiny_checkpoint
from runtime_fixtures import make_onnx_artifact

onnx = pytest.importorskip("onnx")


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    """The tiny AA-CLIP checkpoint exported to FP32 ONNX (one class), plus 24 normal product images."""
    from aaclip.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("int8")
    make_tiny_checkpoint(root / "ckpt")
    art = export_onnx(root / "ckpt", root / "model.onnx", classes=["disk"]).path
    rng = np.random.default_rng(7)
    (root / "good").mkdir()
    for i in range(24):
        cv2.imwrite(str(root / "good" / f"{i:02d}.png"), draw_product("disk", rng, 64))
    return art


@pytest.fixture(scope="module")
def int8_run(fp32):
    r = invoke("int8", fp32, "--images", fp32.parent / "good", "--holdout", 16, "-q")
    return r, fp32.with_name("model.int8.onnx")


def test_int8_passes_gate_and_runs_in_the_runtime(fp32, int8_run):
    r, out = int8_run
    assert r.exit_code == 0, r.output
    assert "INT8 calibration: 18 frames (images" in r.stdout  # 24 frames, every 4th held out
    assert "accuracy gate (passed):" in r.stdout
    assert "held-out frames: 44 (22 normal, 22 anomalous)" in r.stdout  # 6 held out + 16 synthetic, x2
    assert r.stdout.count("  PASS  ") == 4 and "FAIL" not in r.stdout  # map error, map/rank correlation, AUROC

    m = load_manifest(out)
    check_artifact(m)  # sha256 and file name recorded correctly
    fp = load_manifest(fp32)
    assert m.data["precision"] == "int8" and m.data["artifact"]["sha256"] == sha256_file(out)
    assert m.data["source"]["onnx_sha256"] == fp.sha256
    assert m.data["classes"] == fp.data["classes"] and m.data["score"] == fp.data["score"]
    assert m.data["input"] == fp.data["input"]
    q = m.data["quantization"]
    assert q["format"] == "QDQ" and q["calibration"]["frames"] == 18 and q["calibration"]["held_out"] == 6
    assert len(q["calibration"]["sha256"]) == 64
    assert q["gate"]["passed"] is True and q["gate"]["forced"] is False
    assert q["gate"]["map_corr"] >= 0.98 and q["gate"]["rank_corr"] >= 0.95 and q["gate"]["auroc_change"] <= 0.02
    assert 0 < q["gate"]["map_err"] <= 0.01 and q["gate"]["backend"] == "onnxruntime"
    assert m.rebuild_command.startswith("aaclip-calibrate int8 ") and "--images" in m.rebuild_command

    # the INT8 graph runs through the runtime's ONNX Runtime backend and agrees with FP32
    frames = np.stack([draw_product("disk", np.random.default_rng(i), 64) for i in range(3)])
    outs = []
    for manifest in (fp, m):
        runner = open_runner(manifest, "onnxruntime", RunnerOptions(device="cpu"))
        with runner:
            outs.append(runner.infer({"image": frames}))
    assert outs[1]["anomaly_map"].shape == (3, 64, 64)
    for i in range(3):
        corr = np.corrcoef(outs[0]["anomaly_map"][i].ravel(), outs[1]["anomaly_map"][i].ravel())[0, 1]
        assert corr > 0.98
    assert not np.array_equal(outs[0]["anomaly_map"], outs[1]["anomaly_map"])  # really quantized


def test_int8_graph_structure(fp32, int8_run):
    from onnx import numpy_helper

    _, out = int8_run
    model = onnx.load(str(out))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dq and {n.domain for n in model.graph.node} == {""}  # standard ops only (TensorRT parses them)
    for n in dq:  # symmetric: every zero point is 0
        assert not inits[n.input[2]].any(), n.name
    weights = [n for n in dq if n.input[0] in inits and inits[n.input[0]].dtype == np.int8]
    assert weights and all(inits[n.input[1]].ndim == 1 and inits[n.input[1]].size > 1 for n in weights)  # per channel

    def from_dq(node, i):
        src = producer.get(node.input[i])
        return src is not None and src.op_type == "DequantizeLinear"

    by_name = {n.name: n for n in model.graph.node}
    assert from_dq(by_name["/resblocks.0/mlp/c_fc/MatMul"], 0) and from_dq(by_name["/resblocks.0/mlp/c_fc/MatMul"], 1)
    kept = set(load_manifest(out).data["quantization"]["fp32_nodes_by_search"])  # the search's FP32 nodes
    assert from_dq(by_name["/conv1/Conv"], 1) == ("/conv1/Conv" not in kept)
    for name, node in by_name.items():
        if node.op_type in ("LayerNormalization", "Softmax", "Resize", "ReduceMax") or (
                node.op_type in ("MatMul", "Conv") and name.strip("/").count("/") == 0):
            assert not any(from_dq(node, i) for i in range(len(node.input))), name  # stays FP32
    assert not from_dq(by_name["/resblocks.0/attn/MatMul_1"], 0)  # attention scores: FP32
    plan = plan_quantization(onnx.load(str(fp32)))
    assert kept < set(plan.quantize)
    quantized = [n for n in plan.quantize if n not in kept]
    assert all(from_dq(by_name[n], 0) and from_dq(by_name[n], 1) for n in quantized)  # every range collected
    assert not any(from_dq(by_name[n], i) for n in kept for i in (0, 1))  # kept FP32 by the search: no Q/DQ at all
    assert not any(from_dq(by_name[n], 0) for n in plan.exclude if n in by_name)


def test_plan_quantization_of_the_export(fp32):
    plan = plan_quantization(onnx.load(str(fp32)))
    assert "/conv1/Conv" in plan.quantize and "/resblocks.3/attn/MatMul_3" in plan.quantize
    assert plan.exclude["/image_adapters.0/fc/MatMul"].startswith("adapter or projection")
    assert plan.exclude["/seg_proj.2/fc/MatMul"].startswith("adapter or projection")
    assert plan.exclude["/resblocks.0/attn/MatMul_1"] == "activation x activation (attention)"
    assert plan.exclude["/resblocks.0/attn/MatMul_2"] == "activation x activation (attention)"
    assert plan.exclude["/MatMul"] == "post-processing (top-level graph code)"  # anchor similarity
    assert plan.exclude["/Conv_1"] == "post-processing (top-level graph code)"  # blur
    assert len(plan.quantize) == 17 and len(plan.exclude) == 27  # 4 blocks x 4 + conv1; 1 adapter + 5 projections


def test_gate_failure_writes_nothing_unless_forced(fp32, tmp_path):
    out = tmp_path / "strict.int8.onnx"
    args = ["int8", fp32, "--images", fp32.parent / "good", "--holdout", 4, "--out", out,
            "--min-map-corr", 1.0, "--min-rank-corr", 1.0, "-q"]
    r = invoke(*args)
    assert r.exit_code == 1
    assert "accuracy gate (FAILED):" in r.stdout
    assert "FAIL  map correlation (mean Pearson)" in r.stdout and "(limit >= 1)" in r.stdout
    assert "FAIL  image-score rank correlation (Spearman)" in r.stdout
    assert "INT8 graph not written: the accuracy gate failed" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no graph, no manifest, no staging folder

    r = invoke(*args, "--force")
    assert r.exit_code == 0, r.output
    assert "written because of --force" in r.stderr
    gate = json.loads((tmp_path / "strict.int8.onnx.manifest.json").read_text())["quantization"]["gate"]
    assert gate["passed"] is False and gate["forced"] is True and gate["limits"]["min_map_corr"] == 1.0


def test_int8_refuses_non_fp32_or_non_transformer_graphs(tmp_path, capsys):
    art = make_onnx_artifact(tmp_path)
    (tmp_path / "good").mkdir()
    for i in range(3):
        cv2.imwrite(str(tmp_path / "good" / f"{i}.png"), np.full((64, 64, 3), 200, np.uint8))
    with pytest.raises(SystemExit) as exc:
        main(["int8", str(art), "--images", str(tmp_path / "good")])
    assert exc.value.code == 2
    assert "has no transformer MatMul/Gemm/Conv with constant weights" in capsys.readouterr().err
    mpath = tmp_path / "model.onnx.manifest.json"
    data = json.loads(mpath.read_text())
    data["precision"] = "fp16"
    mpath.write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exc:
        main(["int8", str(art), "--images", str(tmp_path / "good")])
    assert exc.value.code == 2
    assert "has precision 'fp16'; INT8 starts from the FP32 export" in capsys.readouterr().err


def test_tensorrt_rtx_builds_the_int8_graph(int8_run, tmp_path):
    pytest.importorskip("tensorrt_rtx", reason="tensorrt_rtx (pip install tensorrt-rtx-cu13) is not installed")
    r, out = int8_run
    assert r.exit_code == 0, r.output
    engine = build_int8_engine(out, tmp_path / "model.int8.engine", "tensorrt-rtx", (1, 2, 4),
                               "aaclip-calibrate int8 model.onnx --engine model.int8.engine")
    assert engine.stat().st_size > 0
    m = load_manifest(engine)
    check_artifact(m)
    assert m.data["precision"] == "int8" and m.tensorrt["flavour"] == "tensorrt-rtx"
    assert m.data["input"]["batch"] == {"min": 1, "opt": 2, "max": 4}
    assert m.data["source"]["onnx_sha256"] == sha256_file(out)
    assert m.data["quantization"]["gate"]["passed"] is True


# ---- gate metrics (known answers) ------------------------------------------------------------------
def test_frame_correlations_known_answers():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 8, 8))
    b = np.stack([a[0], 2.0 * a[1] + 5.0, -a[2]])
    assert frame_correlations(a, b) == pytest.approx([1.0, 1.0, -1.0])
    flat = np.ones((2, 4, 4))
    assert frame_correlations(flat, flat.copy()) == pytest.approx([1.0, 1.0])
    assert frame_correlations(flat, flat + rng.normal(size=flat.shape)) == pytest.approx([0.0, 0.0])


def test_spearman_and_gate_report():
    x = np.array([0.1, 0.5, 0.3, 0.9])
    assert spearman(x, x ** 3) == pytest.approx(1.0)
    assert spearman(x, -x) == pytest.approx(-1.0)
    assert spearman(np.array([1.0, 2.0, 3.0]), np.array([1.0, 3.0, 2.0])) == pytest.approx(0.5)
    maps = np.random.default_rng(1).normal(size=(4, 5, 5))
    labels = np.array([0, 0, 1, 1])
    fp32_scores = np.array([0.1, 0.2, 0.8, 0.9])
    report = evaluate_gate(maps, maps, fp32_scores, np.array([0.1, 0.85, 0.8, 0.9]), labels, GateLimits())
    assert report.auroc_fp32 == 1.0 and report.auroc_int8 == 0.75 and report.auroc_change == 0.25
    assert report.rank_corr == pytest.approx(0.8)
    assert [row[-1] for row in report.checks] == [True, True, False, False] and not report.passed
    assert report.map_err == 0.0
    assert report.lines()[0] == "held-out frames: 4 (2 normal, 2 anomalous)"
    assert report.lines()[4] == "  FAIL  |AUROC change|: 0.2500 (limit <= 0.02)"
    # map error: largest pixel error relative to the FP32 maps' range, over all frames
    shifted = maps.copy()
    shifted[2, 1, 1] += 0.02 * (maps.max() - maps.min())
    off = evaluate_gate(maps, shifted, fp32_scores, fp32_scores, labels, GateLimits())
    assert off.map_err == pytest.approx(0.02) and off.checks[0][-1] is False and not off.passed
    assert off.lines()[1] == "  FAIL  max map error / FP32 map range: 0.0200 (limit <= 0.01)"
    assert evaluate_gate(maps, shifted, fp32_scores, fp32_scores, labels, GateLimits(max_map_err=0.03)).passed
    # saturated scores: both constant keep their (trivial) order, every pair ties
    flat = evaluate_gate(maps, maps, np.full(4, 0.5), np.full(4, 0.5), labels)
    assert (flat.rank_corr, flat.auroc_fp32, flat.auroc_change) == (1.0, 0.5, 0.0)


def test_search_plan_is_recorded_and_reproduced_from_the_manifest(fp32, int8_run, tmp_path):
    r, out = int8_run
    assert "plan: " in r.stdout and "units in low precision" in r.stdout and "kept FP32, whole:" in r.stdout
    assert "expected speed-up over FP32: " in r.stdout
    q = load_manifest(out).data["quantization"]
    plan = q["plan"]
    assert plan["searched"] is True and plan["evaluations"] >= 1 and plan["complete"] is True
    assert len(plan["units_low"]) + len(plan["units_fp32"]) == 13  # patch embedding + 4 blocks x 3 groups
    assert plan["units_low"] and q["gate"]["speedup"]["speedup"] > 0 and q["weight_bits"] == 7
    assert "--plan" in load_manifest(out).rebuild_command

    again = tmp_path / "again.int8.onnx"
    r2 = invoke("int8", fp32, "--images", fp32.parent / "good", "--holdout", 16, "--plan", out, "--out", again, "-q")
    assert r2.exit_code == 0, r2.output
    assert "(re-applied from the manifest)" in r2.stdout
    q2 = load_manifest(again).data["quantization"]
    assert (q2["plan"]["units_low"], q2["plan"]["units_fp32"]) == (plan["units_low"], plan["units_fp32"])
    assert q2["plan"]["searched"] is False and q2["fp32_nodes_by_search"] == q["fp32_nodes_by_search"]
    assert sha256_file(again) == sha256_file(out)  # same frames, same plan: the same graph, byte for byte

    r3 = invoke("int8", fp32, "--images", fp32.parent / "good", "--plan", fp32, "--out", tmp_path / "x.onnx", "-q")
    assert r3.exit_code == 2 and "records no int8 plan" in r3.output


def test_weight_bits_seven_by_default_eight_on_request(fp32, int8_run, tmp_path, monkeypatch):
    from onnx import numpy_helper

    def weight_range(path):
        model = onnx.load(str(path))
        inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        return max(int(np.abs(inits[n.input[0]].astype(int)).max()) for n in model.graph.node
                   if n.op_type == "DequantizeLinear" and n.input[0] in inits and inits[n.input[0]].dtype == np.int8)

    _, out = int8_run
    assert weight_range(out) <= 64  # 7 bits: u8 x s7 pairs cannot saturate AVX2's int16 sums
    eight = tmp_path / "w8.int8.onnx"
    r = invoke("int8", fp32, "--images", fp32.parent / "good", "--holdout", 4, "--no-search", "--weight-bits", 8,
               "--force", "--out", eight, "-q")
    assert r.exit_code == 0, r.output
    assert weight_range(eight) == 127
    q = load_manifest(eight).data["quantization"]
    assert q["weight_bits"] == 8 and q["plan"]["units_fp32"] == [] and q["plan"]["searched"] is False

    # the runtime warns where 8-bit weights saturate (x86 without VNNI), and only there (CPU answer faked)
    import logging

    import aaclip.runtime.backends.onnxruntime as ortb

    class Records(logging.Handler):
        def __init__(self):
            super().__init__(logging.WARNING)
            self.messages = []

        def emit(self, record):
            self.messages.append(record.getMessage())

    records = Records()
    logging.getLogger("aaclip.runtime.backends").addHandler(records)
    monkeypatch.setattr(logging.getLogger("aaclip.runtime.backends"), "disabled", False)
    for flags, warned in (({"sse4_1", "avx2", "fma"}, True), ({"avx2", "avx512f", "avx512_vnni"}, False),
                          ({"avx2", "avx_vnni"}, False), ({"fp", "asimd", "asimddp"}, False)):
        monkeypatch.setattr(ortb, "cpu_flags", lambda flags=flags: flags)
        for graph, bits in ((eight, 8), (out, 7)):
            records.messages.clear()
            open_runner(load_manifest(graph), "onnxruntime", RunnerOptions(device="cpu"))
            said = any("has no VNNI and the INT8 graph has 8-bit weights" in m for m in records.messages)
            assert said == (warned and bits == 8), (flags, bits)
    logging.getLogger("aaclip.runtime.backends").removeHandler(records)
    assert ortb.int8_saturation_risk({"format": "QDQ"}, {"avx2"})  # graphs from before weight bits were recorded
    assert ortb.int8_saturation_risk(None, {"avx2"}) is None  # not an INT8 graph
