"""aaclip-bench: FLOP counting, statistics, row planning, and a full run on a tiny model (outputs checked
for consistency, never for speed)."""
from __future__ import annotations

import csv
import json
import logging
import math

import pytest
from aaclip.benchmarks import rows as R
from aaclip.benchmarks.loop_timing import STAGES, steady_state
from aaclip.benchmarks.measure import latency_stats, time_calls
from aaclip.benchmarks.peaks import cpu_peak, device_peak, gpu_peak, measure_cpu_peaks, measured_cpu_peak
from aaclip.benchmarks.report import ROW_COLUMNS
from aaclip.train.families.aa_clip.flops import VisionGeometry, flops_breakdown, geometry_from_config, model_flops
from model_fixtures import tiny_config


# ---- FLOPs ---------------------------------------------------------------------------------------
def test_model_flops_tiny_matches_hand_count():
    # aaclip-tiny at 64 px: width 64, 4 blocks, patch 8 -> grid 8, L = 64 patches, N = 65 tokens,
    # embed 32, MLP 256, 1 image adapter (4 * 6 / 24), 4 levels, industrial blur 7 taps (pad 3).
    patch = 2 * 64 * (3 * 8 * 8) * 64                 # 1,572,864
    qkv = 4 * 2 * 65 * 64 * 192                       # 6,389,760
    attention = 4 * 2 * (2 * 65 * 65 * 64)            # 4,326,400
    out_proj = 4 * 2 * 65 * 64 * 64                   # 2,129,920
    mlp = 4 * 2 * (2 * 65 * 64 * 256)                 # 17,039,360
    adapters = 1 * 2 * 65 * 64 * 64                   # 532,480
    projections = 5 * 2 * 64 * 64 * 32                # 1,310,720 (4 patch heads + detection head)
    post = 4 * (2 * 64 * 32 * 2 + 2 * 7 * 8 * 14 + 2 * 7 * 8 * 8) + 2 * 32 * 2  # 42,752
    hand = patch + qkv + attention + out_proj + mlp + adapters + projections + post
    assert hand == 33_344_256
    config = tiny_config(seed=0)
    assert model_flops(config) == hand
    g = geometry_from_config(config)
    assert (g.tokens, g.adapters, g.levels, g.blur_kernel) == (65, 1, 4, 7)


def test_model_flops_matches_torch_flop_counter():
    import torch
    from aaclip.export.graph import DeployGraph
    from aaclip.train.checkpoint import build_model
    from torch.utils.flop_counter import FlopCounterMode

    config = tiny_config(seed=0)
    model = build_model(config).eval()
    anchors = model.text_anchors(["metal disk"]).detach()
    graph = DeployGraph(model, anchors).eval()
    image = torch.randint(0, 256, (2, 64, 64, 3), dtype=torch.uint8)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        graph(image)
    counted = counter.get_total_flops() / 2  # per image
    assert counted == pytest.approx(model_flops(config), rel=0.02)


def test_flops_closed_form_for_vit_l_518():
    g = VisionGeometry(image_size=518, patch_size=14, width=1024, layers=24, mlp_ratio=4.0, embed_dim=768,
                       adapters=6, levels=4, blur_kernel=7)
    N, L, W = 1370, 1369, 1024
    blocks = 24 * (24 * N * W * W + 4 * N * N * W)
    parts = flops_breakdown(g)
    assert parts["qkv"] + parts["attention"] + parts["out_proj"] + parts["mlp"] == blocks
    assert parts["patch_embed"] == 2 * L * 588 * W
    assert parts["total"] == sum(v for k, v in parts.items() if k != "total")
    assert 1.0e12 < parts["total"] < 1.1e12


# ---- statistics, peaks, rows ----------------------------------------------------------------------
def test_latency_stats_known_values():
    s = latency_stats([0.1, 0.2, 0.3, 0.4], batch=2)
    assert s["latency_mean_ms"] == pytest.approx(250.0)
    assert s["latency_p50_ms"] == pytest.approx(250.0)
    assert s["latency_p95_ms"] == pytest.approx(385.0)
    assert s["latency_p99_ms"] == pytest.approx(397.0)
    assert s["images_per_s"] == pytest.approx(8.0)
    assert s["ms_per_image"] == pytest.approx(125.0)
    with pytest.raises(ValueError):
        latency_stats([], 1)


def test_time_calls_excludes_warmup():
    calls = []
    times = time_calls(lambda: calls.append(1), reps=3, warmup=2)
    assert len(calls) == 5 and len(times) == 3 and all(t >= 0 for t in times)


def test_peaks_table_and_cpu_estimate():
    assert gpu_peak("NVIDIA H100 80GB HBM3", "fp16").tflops == 989.0
    assert gpu_peak("NVIDIA H100 PCIe", "fp16").tflops == 756.0
    assert gpu_peak("NVIDIA Jetson AGX Orin Developer Kit", "fp16").tflops == 42.5
    assert "derived" in gpu_peak("NVIDIA Jetson AGX Orin Developer Kit", "fp16").source
    assert gpu_peak("Some Unknown GPU", "fp16") is None
    peak = cpu_peak("fp32", {"simd": "avx512", "mhz": 2000.0, "logical_cores": 4})
    assert peak.tflops == pytest.approx(4 * 2000e6 * 64 / 1e12) and "estimate" in peak.source
    assert cpu_peak("fp32", {"simd": "avx2+fma", "mhz": 3000.0, "logical_cores": 2}).tflops == pytest.approx(0.192)
    assert cpu_peak("fp16", {"simd": "avx512", "mhz": 2000.0, "logical_cores": 4}) is None
    assert cpu_peak("fp32", {"simd": "other", "mhz": 2000.0, "logical_cores": 4}) is None
    assert device_peak("cpu", "AMD EPYC", "fp32") is None  # unknown unless asked for or given
    assert device_peak("cpu", "AMD EPYC", "fp32", override_tflops=1.5).tflops == 1.5
    assert device_peak("cuda", "NVIDIA A100-SXM4-80GB", "fp32").tflops == 19.5
    measured = {"peaks": {"fp32": 0.4, "int8": 1.2}, "probes": {"numpy fp32": 0.3, "openvino fp32": 0.4,
                                                                 "openvino int8": 1.2},
                "shape": [64, 64, 64], "reps": 3, "seconds": 0.1}
    assert device_peak("cpu", "AMD EPYC", "fp32", cpu_measured=measured).tflops == 0.4
    assert "openvino fp32" in device_peak("cpu", "AMD EPYC", "fp32", cpu_measured=measured).source
    assert device_peak("cpu", "AMD EPYC", "fp16", cpu_measured=measured).tflops == 0.4  # FP16 graphs: FP32 matmuls
    assert device_peak("cpu", "AMD EPYC", "int8", cpu_measured=measured).tflops == 1.2
    assert measured_cpu_peak("bf16", measured) is None  # not probed: no fraction rather than a wrong one


def test_cpu_matmul_probe_measures_each_available_precision():
    m = measure_cpu_peaks(shape=(64, 128, 256), reps=2)
    assert m["shape"] == [64, 128, 256] and m["probes"]["numpy fp32"] > 0
    assert m["probes"]["onnxruntime fp32"] > 0 and m["probes"]["onnxruntime int8"] > 0  # the Q/DQ form we write
    assert m["peaks"]["int8"] == max(v for k, v in m["probes"].items() if k.endswith(" int8"))
    assert m["peaks"]["fp32"] == max(v for k, v in m["probes"].items() if k.endswith(" fp32"))
    import openvino

    caps = openvino.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    assert ("openvino bf16" in m["probes"]) == ("BF16" in caps)
    assert ("openvino int8" in m["probes"]) == ("INT8" in caps)


def test_peak_probe_keeps_each_probes_best_sample():
    from aaclip.benchmarks.peaks import PeakProbe

    probe = PeakProbe(shape=(10, 10, 10), builders={"numpy": lambda: {"fp32": lambda: None},
                                                    "broken": lambda: 1 / 0})
    assert list(probe.calls) == ["numpy fp32"]  # a probe that cannot be built is left out
    import aaclip.benchmarks.peaks as P

    now = [0.0]
    # each sample: the first call after a switch is slow (the previous library's threads still spin), the
    # following ones run at the probe's steady rate, which differs per sample (2 s, 4 s, 1 s per call)
    durations = iter([x for steady in (2.0, 4.0, 1.0) for x in [3 * steady] + [steady] * (P.PROBE_BURST - 1)])

    def call():
        now[0] += next(durations)

    probe.calls["numpy fp32"] = call
    real = P.time.perf_counter
    P.time.perf_counter = lambda: now[0]
    try:
        for _ in range(3):
            probe.sample()
    finally:
        P.time.perf_counter = real
    result = probe.result()
    assert result["reps"] == 3 and result["probes"]["numpy fp32"] == pytest.approx(2000 / 1.0 / 1e12)
    assert result["peaks"] == {"fp32": pytest.approx(2e-9)}
    assert result["seconds"] == pytest.approx(sum(3 * d + d * (P.PROBE_BURST - 1) for d in (2.0, 4.0, 1.0)))

def test_speedup_bound_and_the_flag_above_100_percent():
    from aaclip.benchmarks.bounds import apply_bounds
    from aaclip.benchmarks.report import empty_row, markdown_text

    peaks = {"peaks": {"fp32": 0.4, "int8": 1.2, "bf16": 0.8}, "probes": {"openvino fp32": 0.4, "openvino int8": 1.2,
                                                                        "openvino bf16": 0.8},
             "shape": [1024, 1024, 4096], "reps": 5, "seconds": 1.0}

    def row(backend, precision, p50, fraction=0.5):
        r = empty_row()
        r.update(key=f"{backend}/cpu/{precision}/b1", backend=backend, backend_label=backend, device="cpu",
                 precision=precision, batch=1, status="ok", latency_p50_ms=p50, fraction_of_peak=fraction)
        return r

    rows = [row("onnxruntime", "fp32", 900.0), row("onnxruntime", "int8", 450.0), row("openvino", "int8", 250.0),
            row("openvino", "bf16", 300.0, fraction=1.17)]
    apply_bounds(rows, peaks, {"int8": {"summary": "11/13 units INT8", "map_err": 0.004}})
    base, ort8, ov8, ov16 = rows
    assert base["speedup_bound"] is None and base["speedup_vs_ort_fp32"] == pytest.approx(1.0)
    assert ort8["speedup_vs_ort_fp32"] == pytest.approx(2.0) and ort8["speedup_bound"] == pytest.approx(3.0)
    assert ort8["fraction_of_bound"] == pytest.approx(2 / 3) and ort8["measurement_flag"] is None
    assert ort8["precision_plan"] == "11/13 units INT8" and ort8["plan_map_err"] == 0.004
    assert ov8["speedup_vs_ort_fp32"] == pytest.approx(3.6) and ov8["fraction_of_bound"] == pytest.approx(1.2)
    assert "120% of the bound 3.00x" in ov8["measurement_flag"]
    assert "117% of the bf16 peak" in ov16["measurement_flag"] and ov16["fraction_of_bound"] == pytest.approx(1.5)
    env = {"date": "d", "cpu": {"name": "x", "logical_cores": 2}, "gpu": {"name": None}, "libraries": {},
           "cpu_peaks": peaks}
    text = markdown_text({"rows": rows, "environment": env, "settings": {
        "command": "c", "warmup": 1, "reps": 2, "parity_frames": 1}, "model": {
        "description": "m", "flops_per_image": 1e9, "flops": {"convention": "x"}}})
    table = text.split("## Reduced precision against its bound")[1]
    assert "| onnxruntime | int8 | 1 | 11/13 units INT8 | 0.40% | 2.00x | 3.00x | 66.7% |" in table
    assert "| openvino | int8 | 1 | 11/13 units INT8 | 0.40% | 3.60x | 3.00x | n/a: 120.0% > 100%, measurement error |" \
        in table
    assert "117.0%" not in text.split("## Reduced precision")[0].replace("n/a: 117.0% > 100%", "")  # never printed bare


def test_rows_and_skip_reasons():
    bare = R.Capabilities(cuda=False, ort_providers=("CPUExecutionProvider",), tensorrt=False, int8_graph=False)
    specs = R.expand_rows(["torch", "onnxruntime", "tensorrt"], ["fp32", "fp16"], [1, 4], bare)
    assert [s.key for s in specs[:4]] == ["torch/cpu/fp32/b1", "torch/cpu/fp32/b4", "torch/cuda/fp16/b1",
                                         "torch/cuda/fp16/b4"]
    assert len(specs) == 2 * 2 + 2 * 2 * 2 + 2 * 2  # torch, onnxruntime cpu+cuda, tensorrt
    reasons = {s.key: R.skip_reason(s, bare) for s in specs}
    assert reasons["torch/cpu/fp32/b1"] is None and reasons["onnxruntime/cpu/fp16/b4"] is None
    assert "no CUDA device" in reasons["torch/cuda/fp16/b1"]
    assert "CUDAExecutionProvider" in reasons["onnxruntime/cuda/fp32/b1"]
    assert "no NVIDIA GPU" in reasons["tensorrt/cuda/fp16/b1"]
    assert "--int8" in R.skip_reason(R.RowSpec("onnxruntime", "cpu", "int8", 1), bare)
    gpu = R.Capabilities(cuda=True, ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider"),
                         tensorrt=True, int8_graph=True)
    assert R.row_devices("torch", "fp32", gpu) == ["cuda"]
    assert all(R.skip_reason(R.RowSpec(b, "cuda", "fp16", 1), gpu) is None for b in ("torch", "onnxruntime", "tensorrt"))
    assert R.skip_reason(R.RowSpec("onnxruntime", "cpu", "int8", 1), gpu) is None
    assert "not installed" in R.skip_reason(R.RowSpec("openvino", "cpu", "fp32", 1), bare)
    intel = R.Capabilities(cuda=False, ort_providers=(), tensorrt=False, int8_graph=False, openvino=("FP32", "INT8"))
    assert R.row_devices("openvino", "bf16", intel) == ["cpu"]
    assert R.skip_reason(R.RowSpec("openvino", "cpu", "fp32", 1), intel) is None
    assert "no BF16" in R.skip_reason(R.RowSpec("openvino", "cpu", "bf16", 1), intel)
    assert "--int8" in R.skip_reason(R.RowSpec("openvino", "cpu", "int8", 1), intel)
    assert "FP16 graphs are for GPUs" in R.skip_reason(R.RowSpec("openvino", "cpu", "fp16", 1), intel)


def test_list_parsing_errors_name_the_option():
    from aaclip.contract.errors import UserError

    assert R.parse_list("torch, onnxruntime,torch", R.BACKENDS, "--backends") == ["torch", "onnxruntime"]
    assert R.parse_batches("4,1,2,1") == [1, 2, 4]
    with pytest.raises(UserError, match="--backends 'tensorflow'"):
        R.parse_list("tensorflow", R.BACKENDS, "--backends")
    with pytest.raises(UserError, match="--batches"):
        R.parse_batches("0,2")


def test_steady_state_excludes_warmup_batches():
    def rec(t_end, frames=2, lat=(0.010, 0.020)):
        return {"frames": frames, "t_end": t_end, "decode": 0.002, "preprocess": 0.001, "inference": 0.050,
                "postprocess": 0.007, "latencies": list(lat)}

    records = [rec(10.5, lat=(1.0, 1.0)), rec(10.6), rec(10.7), rec(10.8)]
    s = steady_state(records, t_run=10.0, warmup_batches=1)
    assert s["frames"] == 6 and s["batches"] == 3
    assert s["elapsed_s"] == pytest.approx(0.3)
    assert s["images_per_s"] == pytest.approx(20.0)
    assert s["stage_ms_per_image"]["inference"] == pytest.approx(25.0)
    assert s["stage_ms_per_image"]["other"] == pytest.approx((0.3 - 3 * 0.060) / 6 * 1e3)
    assert s["latency_p99_ms"] < 21.0  # the warm-up batch's 1 s latencies are excluded
    assert sum(s["stage_share"].values()) == pytest.approx(1.0)
    with pytest.raises(RuntimeError):
        steady_state(records[:1], 10.0, 1)


def test_cli_rejects_bad_model_choice(tmp_path):
    from aaclip.benchmarks.cli import main
    from click.testing import CliRunner

    result = CliRunner().invoke(main, ["--tiny", "--shape", "ViT-B-16@224", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "exactly one of --checkpoint DIR, --tiny or --shape" in result.output
    result = CliRunner().invoke(main, ["--shape", "ViT-B-16", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "NAME@SIZE" in result.output
    result = CliRunner().invoke(main, ["--tiny", "--precisions", "fp8", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--precisions 'fp8'" in result.output
    result = CliRunner().invoke(main, ["--tiny", "--search-frames", "1", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "--search-frames must be >= 2" in result.output and "got 32, 1, 16" in result.output


# ---- a full run on the tiny model -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from aaclip.benchmarks.suite import BenchConfig, run_benchmark

    out = tmp_path_factory.mktemp("bench")
    cfg = BenchConfig(out_dir=out, tiny=True, backends=("torch", "onnxruntime", "openvino", "tensorrt"),
                      precisions=("fp32", "fp16"), batches=(1, 2), reps=2, warmup=1, frames=4, parity_frames=2,
                      command="aaclip-bench --tiny (test)")
    result, files = run_benchmark(cfg)
    return cfg, result, files


def test_every_configured_row_is_present_with_a_status(tiny_run):
    cfg, result, _ = tiny_run
    caps = R.detect_capabilities(False)
    expected = [s.key for s in R.expand_rows(cfg.backends, cfg.precisions, cfg.batches, caps)]
    rows = result["rows"]
    assert [r["key"] for r in rows] == expected
    for r in rows:
        assert set(r) == set(ROW_COLUMNS)
        assert r["status"] in ("ok", "skipped"), (r["key"], r["reason"])
        if r["status"] == "skipped":
            assert r["reason"] and r["images_per_s"] is None
    by_key = {r["key"]: r for r in rows}
    assert by_key["onnxruntime/cpu/fp32/b1"]["status"] == "ok"
    assert by_key["onnxruntime/cpu/fp32/b2"]["status"] == "ok"
    assert by_key["openvino/cpu/fp32/b1"]["status"] == "ok" and by_key["openvino/cpu/fp32/b2"]["status"] == "ok"
    assert "FP16 graphs are for GPUs" in by_key["openvino/cpu/fp16/b1"]["reason"]
    if not caps.cuda:
        assert by_key["torch/cpu/fp32/b1"]["status"] == "ok"
        assert "no CUDA device" in by_key["torch/cuda/fp16/b1"]["reason"]
        assert "GPU" in by_key["tensorrt/cuda/fp16/b2"]["reason"]


def test_throughput_latency_and_flops_are_consistent(tiny_run):
    _, result, _ = tiny_run
    flops = result["model"]["flops_per_image"]
    assert flops == 33_344_256
    for r in (r for r in result["rows"] if r["status"] == "ok"):
        assert r["images_per_s"] == pytest.approx(r["batch"] / (r["latency_mean_ms"] / 1e3), rel=1e-9)
        assert r["ms_per_image"] * r["batch"] == pytest.approx(r["latency_mean_ms"], rel=1e-9)
        assert r["latency_min_ms"] <= r["latency_p50_ms"] <= r["latency_p95_ms"] <= r["latency_p99_ms"] \
            <= r["latency_max_ms"]
        assert r["achieved_tflops"] == pytest.approx(flops * r["images_per_s"] / 1e12, rel=1e-9)
        if r["peak_tflops"] is not None:
            assert r["fraction_of_peak"] == pytest.approx(r["achieved_tflops"] / r["peak_tflops"], rel=1e-9)
        assert r["host_peak_rss_mb"] > 0 and r["reps"] == 2 and r["warmup"] == 1
        if r["backend"] == "onnxruntime":
            assert r["artifact"] == f"aaclip-{r['precision']}.onnx" and r["artifact_size_mb"] > 0
    ort32 = next(r for r in result["rows"] if r["key"] == "onnxruntime/cpu/fp32/b1")
    assert ort32["parity_passed"] is True and ort32["parity_map_rel"] <= 1e-4
    assert ort32["parity"].startswith("PASS")
    ov32 = next(r for r in result["rows"] if r["key"] == "openvino/cpu/fp32/b1")
    assert ov32["parity_passed"] is True and ov32["parity_map_rel"] <= 1e-4
    assert ov32["artifact"] == "aaclip-fp32.onnx" and ov32["loop_status"] == "ok"
    # the CPU peak is measured in the run: every CPU row has a fraction of it, and the probe is recorded
    probe = result["environment"]["cpu_peaks"]
    assert probe["peaks"]["fp32"] > 0
    for r in (r for r in result["rows"] if r["status"] == "ok" and r["device"] == "cpu"):
        assert r["peak_tflops"] == pytest.approx(probe["peaks"]["fp32"], rel=1e-3) and "measured" in r["peak_source"]


def test_rows_are_timed_interleaved(monkeypatch, tmp_path):
    """Round-robin: every round calls each row once, the starting row rotating; warm-up rounds untimed."""
    from aaclip.benchmarks import suite

    order = []

    class Fake:
        def __init__(self, name):
            self.name = name

    groups = [suite._Group([R.RowSpec(b, "cpu", "fp32", 1)], [suite._base_row(R.RowSpec(b, "cpu", "fp32", 1), cfg)],
                           runner=Fake(b)) for b, cfg in [(b, suite.BenchConfig(out_dir=tmp_path, reps=3, warmup=1))
                                                          for b in ("torch", "onnxruntime", "openvino")]]
    monkeypatch.setattr(suite, "row_call", lambda ctx, spec, runner, manifest: lambda: order.append(runner.name))
    monkeypatch.setattr(suite, "timing_fields", lambda ctx, spec, times: {"reps": len(times)})

    class Probe:
        def sample(self):
            order.append("probe")

        def result(self):
            return {"peaks": {"fp32": 1.0}, "probes": {"numpy fp32": 1.0}, "shape": [1, 1, 1], "reps": 4, "seconds": 0}

    class Ctx:
        cfg = suite.BenchConfig(out_dir=tmp_path, reps=3, warmup=1)
        probe = Probe()
        cpu_peaks = None

    ctx = Ctx()
    suite.time_interleaved(ctx, groups)
    assert order == ["torch", "onnxruntime", "openvino", "probe", "onnxruntime", "openvino", "torch", "probe",
                     "openvino", "torch", "onnxruntime", "probe", "torch", "onnxruntime", "openvino", "probe"]
    assert all(g.rows[0]["status"] == "ok" and g.rows[0]["reps"] == 3 for g in groups)
    assert ctx.cpu_peaks["reps"] == 4  # the peak probe's best over every round is what the rows are held against


def test_loop_overhead_is_computed_from_the_two_throughputs(tiny_run):
    _, result, _ = tiny_run
    looped = [r for r in result["rows"] if r["backend"] in ("onnxruntime", "openvino") and r["status"] == "ok"]
    assert looped
    for r in looped:
        assert r["loop_status"] == "ok", r["loop_reason"]
        assert r["loop_frames"] == r["batch"] * 2  # reps batches after the warm-up batch
        assert r["loop_ratio"] == pytest.approx(r["loop_images_per_s"] / r["images_per_s"], rel=1e-12)
        assert r["loop_overhead"] == pytest.approx(1.0 - r["loop_ratio"], rel=1e-12)
        stages = [r[f"loop_{s}_ms_per_image"] for s in STAGES]
        assert all(v >= 0 for v in stages)
        assert sum(stages) >= 1e3 / r["loop_images_per_s"] * (1 - 1e-9)
        if r["loop_other_ms_per_image"] > 0:
            assert sum(stages) == pytest.approx(1e3 / r["loop_images_per_s"], rel=1e-6)
            assert r["loop_non_inference_share"] == pytest.approx(
                1 - r["loop_inference_ms_per_image"] / sum(stages), rel=1e-6)
        assert r["loop_latency_p50_ms"] <= r["loop_latency_p95_ms"] <= r["loop_latency_p99_ms"]
    torch_row = next(r for r in result["rows"] if r["backend"] == "torch" and r["status"] == "ok")
    assert torch_row["loop_status"] == "skipped" and "artifacts" in torch_row["loop_reason"]


def _parse(text: str):
    if text == "":
        return None
    if text in ("True", "False"):
        return text == "True"
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def test_json_csv_markdown_and_plot_agree(tiny_run):
    cfg, result, files = tiny_run
    assert set(files) == {"json", "csv", "markdown", "plot"}
    data = json.loads(files["json"].read_text())
    assert data["rows"] == json.loads(json.dumps(result["rows"]))
    env = data["environment"]
    assert env["libraries"]["onnxruntime"] and env["libraries"]["openvino"]
    assert env["cpu"]["logical_cores"] >= 1 and "torch_intra_op" in env["threads"]
    with open(files["csv"], newline="") as f:
        table = list(csv.DictReader(f))
    assert len(table) == len(data["rows"])
    for line, row in zip(table, data["rows"]):
        assert list(line) == list(ROW_COLUMNS)
        for k in ROW_COLUMNS:
            v, parsed = row[k], _parse(line[k])
            if isinstance(v, float) and not isinstance(parsed, str):
                assert parsed == v or (math.isnan(v) and math.isnan(parsed)), k
            else:
                assert parsed == v, (row["key"], k, line[k], v)
    md = files["markdown"].read_text()
    for r in data["rows"]:
        prefix = f"| {r['backend_label']} | {r['device']} | {r['precision']} | {r['batch']} | {r['status']} |"
        assert md.count(prefix) == 1, prefix
        if r["status"] != "ok":
            assert f"- {r['key']}: {r['status']}: {r['reason']}" in md
    loop_lines = [line for line in md.split("## End-to-end runtime loop")[1].splitlines()
                  if line.startswith(("| ONNX Runtime |", "| OpenVINO |"))]
    assert len(loop_lines) == sum(r["loop_status"] == "ok" for r in data["rows"])
    assert files["plot"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_cli_tiny_run_writes_outputs(tmp_path):
    from aaclip.benchmarks.cli import main
    from click.testing import CliRunner

    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["--tiny", "--backends", "onnxruntime", "--precisions", "fp32", "--batches", "1",
                                       "--reps", "1", "--warmup", "0", "--frames", "2", "--parity-frames", "1",
                                       "--no-loop", "--no-plot", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    data = json.loads((out / "benchmark.json").read_text())
    keys = [r["key"] for r in data["rows"]]
    assert keys == ["onnxruntime/cpu/fp32/b1", "onnxruntime/cuda/fp32/b1"]
    assert data["rows"][0]["status"] == "ok" and data["rows"][0]["loop_status"] == "skipped"
    assert not (out / "benchmark.png").exists()
    assert "2 rows (" in result.output and "| ONNX Runtime | cpu | fp32 | 1 | ok |" in result.output


def test_reduced_precisions_are_searched_by_the_benchmark_itself(monkeypatch, tmp_path, caplog):
    """--precisions fp32,bf16,int8 without --int8: the INT8 graph and the BF16 plan come from the accuracy search
    (BF16 on a CPU faked to have it: OpenVINO then compiles the hint as FP32 here, so this checks the plumbing)."""
    import aaclip.runtime.backends.openvino as ovb
    from aaclip.benchmarks.reduced import SearchSettings
    from aaclip.benchmarks.suite import BenchConfig, run_benchmark

    real = R.detect_capabilities

    def with_bf16(*args, **kwargs):
        caps = real(*args, **kwargs)
        return R.Capabilities(caps.cuda, caps.ort_providers, caps.tensorrt, caps.int8_graph, caps.engines,
                              ("FP32", "BF16", "INT8"))

    monkeypatch.setattr(R, "detect_capabilities", with_bf16)
    monkeypatch.setattr(ovb, "bf16_capable", lambda core=None, device="CPU": True)
    cfg = BenchConfig(out_dir=tmp_path / "out", tiny=True, backends=("onnxruntime", "openvino"),
                      precisions=("fp32", "bf16", "int8"), batches=(1,), reps=1, warmup=0, frames=2, parity_frames=1,
                      loop=False, plot=False, work_dir=tmp_path / "work", command="aaclip-bench (test)",
                      search=SearchSettings(frames=16, holdout=4, search_frames=6))
    with caplog.at_level(logging.INFO, logger="aaclip.calibration.int8"):
        result, files = run_benchmark(cfg)
    rows = {r["key"]: r for r in result["rows"]}
    plans = result["precision_plans"]
    assert "the 6 search frames cannot resolve |AUROC change| (one swapped pair: 0.111, limit 0.02) or rank " \
           "correlation" in caplog.text  # each step checks the maps; the final gate on all 16 frames, everything
    assert {k: result["settings"][k] for k in ("calibration_frames", "holdout", "search_frames")} == \
        {"calibration_frames": 16, "holdout": 4, "search_frames": 6}
    quant = json.loads((tmp_path / "work" / "artifacts" / "aaclip-int8.onnx.manifest.json").read_text())["quantization"]
    assert quant["calibration"]["frames"] == 12 and quant["calibration"]["held_out"] == 4  # 16 read, every 4th held
    assert (quant["gate"]["normals"], quant["gate"]["anomalies"]) == (4 + 4, 4 + 4)  # + 4 synthetic, each defective
    assert set(plans) == {"int8", "bf16"} and plans["int8"]["plan"]["searched"] is True
    ort8, ov8, ov16 = rows["onnxruntime/cpu/int8/b1"], rows["openvino/cpu/int8/b1"], rows["openvino/cpu/bf16/b1"]
    assert ort8["status"] == ov8["status"] == ov16["status"] == "ok"
    assert ort8["artifact"] == "aaclip-int8.onnx" and (tmp_path / "work" / "artifacts" / "aaclip-int8.onnx").is_file()
    assert ort8["precision_plan"] == plans["int8"]["summary"] and ort8["plan_map_err"] == plans["int8"]["map_err"]
    assert ov16["precision_plan"].startswith("13/13 units BF16")
    gates = json.loads((tmp_path / "work" / "artifacts" / "aaclip-fp32.onnx.manifest.json").read_text())
    assert gates["precision_gates"]["openvino-bf16"]["plan"]["units_low"]  # the plan the bf16 row ran
    peaks = result["environment"]["cpu_peaks"]
    assert peaks["reps"] == 1 + 1  # sampled before timing and once in the one timed round
    for r in (ort8, ov8):
        if "int8" in peaks["peaks"]:
            bound = peaks["peaks"]["int8"] / peaks["peaks"]["fp32"]
            assert r["speedup_bound"] == pytest.approx(bound)
            assert r["fraction_of_bound"] == pytest.approx(r["speedup_vs_ort_fp32"] / bound)
    assert "## Reduced precision against its bound" in files["markdown"].read_text()
