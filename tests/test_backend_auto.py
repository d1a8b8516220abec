"""The one --backend auto rule (runtime/backends/registry.py + machine.py), as an Intel and as an AMD CPU
resolve it: what each command prints, what --verify checks and records in the manifest, and the runtime's
warning on a backend an artifact was never verified on."""
import json
import logging
import shutil

import pytest
from aaclip.contract.errors import ArtifactError
from aaclip.contract.manifest import load_manifest, record_parity, verified_on, write_manifest
from aaclip.export.cli import cli as export_cli
from aaclip.runtime import backends as B
from aaclip.runtime.backends import registry
from aaclip.runtime.cli import RunConfig, run
from click.testing import CliRunner
from model_fixtures import make_tiny_checkpoint
from runtime_fixtures import make_onnx_artifact, write_video

DEPLOYS_ON = {"intel": "openvino", "amd": "onnxruntime"}


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    """Each test sees the once-per-process messages anew."""
    monkeypatch.setattr(registry, "_ANNOUNCED", set())
    monkeypatch.setattr(registry, "_WARNED", set())


@pytest.fixture(scope="module")
def exported_once(tmp_path_factory):
    from aaclip.export.onnx_export import export_onnx

    root = tmp_path_factory.mktemp("auto")
    make_tiny_checkpoint(root / "ckpt")
    return export_onnx(root / "ckpt", root / "model.onnx", classes=["disk"]).path


@pytest.fixture
def exported(exported_once, tmp_path):
    """A fresh copy of the tiny export (its manifest names the checkpoint by its absolute path)."""
    for name in ("model.onnx", "model.onnx.manifest.json"):
        shutil.copy(exported_once.parent / name, tmp_path / name)
    return tmp_path / "model.onnx"


@pytest.mark.both_cpus
def test_every_command_prints_what_auto_resolved_to(tmp_path, cpu_vendor, caplog):
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 3)
    with caplog.at_level(logging.INFO):
        summary = run(RunConfig(art, (str(video),), drop=False, stats_every=0))
    assert summary.frames == 3
    said = [r.getMessage() for r in caplog.records if r.name == "aaclip.runtime.backends.registry"]
    vendor = {"intel": "Intel CPU (GenuineIntel", "amd": "AMD CPU (AuthenticAMD"}[cpu_vendor]
    assert said[0].startswith(f"--backend auto -> {DEPLOYS_ON[cpu_vendor]} for this onnx artifact on this machine: "
                              f"{vendor}, pinned by $AACLIP_CPU_VENDOR), no CUDA execution provider")
    assert B.AUTO_RULE in said[0]
    # the help of every command that runs an artifact quotes the same rule
    from aaclip.calibration.cli import cli as calibrate_cli
    from aaclip.runtime.cli import main as runtime_cli

    for command, args in ((runtime_cli, ["-h"]), (export_cli, ["-h"]), (calibrate_cli, ["threshold", "-h"])):
        text = " ".join(CliRunner().invoke(command, args).output.split())
        assert "auto: TensorRT for engines; for ONNX graphs OpenVINO on an Intel CPU" in text, command.name


@pytest.mark.both_cpus
def test_verify_checks_where_auto_deploys_plus_onnxruntime_and_records_it(exported, cpu_vendor):
    r = CliRunner().invoke(export_cli, ["--verify", str(exported), "--frames", "2"])
    assert r.exit_code == 0, r.output
    checked = [line for line in r.output.splitlines() if line.endswith("vs PyTorch:")]
    want = ["openvino", "onnxruntime"] if cpu_vendor == "intel" else ["onnxruntime"]
    assert checked == [f"{exported} (fp32, {b} backend) vs PyTorch:" for b in want]
    assert r.output.count("  PASS") == len(want)
    m = load_manifest(exported)
    assert m.verified_on == frozenset((b, "fp32") for b in want)
    record = m.data["parity"][f"{want[0]}-fp32"]
    assert record["passed"] is True and record["artifact_sha256"] == m.sha256 and record["frames"] == 2
    assert record["map_rel"] <= record["tolerances"]["map_rel"]


def test_old_manifests_load_and_bad_parity_records_are_refused(tmp_path):
    art = make_onnx_artifact(tmp_path)
    m = load_manifest(art)
    assert "parity" not in m.data and m.verified_on == frozenset()  # today's manifests: verified nowhere
    m = record_parity(art, [{"backend": "onnxruntime", "precision": "fp32", "passed": True},
                            {"backend": "openvino", "precision": "fp32", "passed": False}])
    assert m.verified_on == {("onnxruntime", "fp32")}  # a failed check verifies nothing
    data = dict(m.data)
    data["parity"] = {"x": {"backend": "onnxruntime", "precision": "fp64", "passed": True}}
    with pytest.raises(ArtifactError, match="field 'parity.x.precision' is 'fp64'"):
        write_manifest(art, data)
    # a record of another artifact (a manifest copied beside an edited graph) does not count
    data["parity"] = {"x": {"backend": "onnxruntime", "precision": "fp32", "passed": True, "artifact_sha256": "0" * 64}}
    assert verified_on(data) == frozenset()
    # accuracy gates count for their backend and precision, forced ones do not
    gates = {"openvino-bf16": {"backend": "openvino", "precision": "bf16", "passed": True, "forced": False},
             "openvino-x": {"backend": "openvino", "precision": "int8", "passed": False, "forced": True}}
    assert verified_on(dict(data, precision_gates=gates)) == {("openvino", "bf16")}


def test_runtime_warns_once_on_a_backend_the_artifact_was_never_verified_on(tmp_path, caplog):
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 2)

    def warnings_after_two_runs(backend):
        caplog.clear()
        for _ in range(2):
            run(RunConfig(art, (str(video),), backend=backend, drop=False, stats_every=0))
        return [r.getMessage() for r in caplog.records if "never checked against PyTorch" in r.getMessage()]

    said = warnings_after_two_runs("onnxruntime")
    assert said == [f"model.onnx runs on onnxruntime in fp32, where its outputs were never checked against PyTorch "
                    f"(verified on: nothing on record); run aaclip-export --verify {art} --backend onnxruntime on "
                    "this machine"]
    record_parity(art, [{"backend": "onnxruntime", "precision": "fp32", "passed": True}])
    registry._WARNED.clear()
    assert warnings_after_two_runs("onnxruntime") == []  # verified there: silent
    said = warnings_after_two_runs("openvino")
    assert len(said) == 1 and "runs on openvino in fp32" in said[0] and "(verified on: onnxruntime fp32)" in said[0]
    json.loads(load_manifest(art).path.read_text())  # still a valid manifest
