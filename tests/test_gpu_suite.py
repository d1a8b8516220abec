"""``aaclip-bench --suite gpu`` on a machine without a GPU: it checks the engine build path (TensorRT-RTX, ahead of
time) and the report writer, writes the report with no GPU figure, says so in one line and exits 2."""
import json

import pytest
from aaclip.benchmarks.cli import main
from aaclip.benchmarks.gpu_suite import Check, SuiteResult, markdown
from click.testing import CliRunner

NO_GPU = {"available": False, "name": None, "driver": None}


@pytest.fixture
def no_gpu(monkeypatch):
    import aaclip.benchmarks.environment as env

    monkeypatch.setattr(env, "gpu_environment", lambda: dict(NO_GPU))


def test_no_gpu_checks_what_it_can_and_exits_2(no_gpu, tmp_path):
    has_rtx = pytest.importorskip("importlib.util").find_spec("tensorrt_rtx") is not None
    r = CliRunner().invoke(main, ["--suite", "gpu", "--out", str(tmp_path / "out"), "-q"])
    assert r.exit_code == 2, r.output
    assert r.stderr.strip().splitlines()[-1].startswith("error: no NVIDIA GPU here, so no GPU figure was measured")
    report = json.loads((tmp_path / "out" / "suite.json").read_text())
    checks = {c["name"].split(" (")[0]: c for c in report["checks"]}
    assert checks["NVIDIA GPU"]["status"] == "failed"
    assert checks["report writer"]["status"] == "ok"
    build = checks["engine build path"]
    if has_rtx:
        assert build["status"] == "ok" and "TensorRT-RTX" in build["detail"]
        assert "'min': 1, 'opt': 8, 'max': 32" in build["detail"]  # the suite's batch profile
    else:
        assert build["status"] == "failed"
    assert report["rows"] == [] and report["parity"] == [] and report["int8"] is None  # no GPU figure, ever
    md = (tmp_path / "out" / "suite.md").read_text()
    assert "No NVIDIA GPU here: no GPU figure was measured" in md and "| NVIDIA GPU | failed |" in md
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["suite.json", "suite.md"]  # checks' files removed


def test_a_failing_engine_build_is_reported_and_the_suite_still_exits_2(no_gpu, tmp_path, monkeypatch):
    import aaclip.export.engine as engine
    from aaclip.contract.errors import UserError

    def missing(flavour):
        raise UserError("TensorRT-RTX is not installed: pip install tensorrt-rtx-cu13")

    monkeypatch.setattr(engine, "load_flavour", missing)
    r = CliRunner().invoke(main, ["--suite", "gpu", "--out", str(tmp_path), "-q"])
    assert r.exit_code == 2
    checks = json.loads((tmp_path / "suite.json").read_text())["checks"]
    assert checks[1]["status"] == "failed" and "TensorRT-RTX is not installed" in checks[1]["detail"]
    assert "engine build path (TensorRT-RTX, tiny model, FP16, batch 1..32): failed" in r.stderr


def test_report_tables_of_a_gpu_run():
    row = {"status": "ok", "backend": "tensorrt", "device": "cuda", "precision": "fp16", "batch": 8,
           "images_per_s": 41.5, "latency_p50_ms": 190.0, "latency_p99_ms": 201.0, "device_mem_mb": 3100,
           "fraction_of_peak": 0.42, "loop_images_per_s": 39.0}
    over = dict(row, precision="int8", fraction_of_peak=1.3)
    result = SuiteResult(gpu={"available": True, "name": "NVIDIA H100 80GB HBM3", "driver": "580"},
                         checks=[Check("NVIDIA GPU", "ok", "H100")], rows=[row, over],
                         parity=[{"engine": "aaclip-fp16.engine", "passed": True, "map_rel": 8e-4, "cls_abs": 3e-6}])
    md = markdown(result)
    assert "| tensorrt | cuda | fp16 | 8 | 41.5 | 190 | 201 | 3100 | 42.0% | 39 |" in md
    assert "| tensorrt | cuda | int8 | 8 | 41.5 | 190 | 201 | 3100 | n/a (>100%) | 39 |" in md
    assert "| aaclip-fp16.engine | PASS | 0.0008 | 3e-06 |" in md
    assert "No NVIDIA GPU" not in md and "GPU: NVIDIA H100 80GB HBM3 (driver 580)" in md
