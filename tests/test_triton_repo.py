"""Triton model repository export (aaclip-export --format triton) and the served contract, without a server.

Every generated config.pbtxt is parsed with Triton's own model_config.proto (tritonclient's model_config_pb2).
"""
import json
from pathlib import Path

import pytest
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import load_manifest, open_artifact, write_manifest
from aaclip.contract.served import (
    MANIFEST_PARAMETER,
    check_served_tensors,
    find_repository_model,
    served_inputs,
    served_outputs,
)
from aaclip.export.cli import cli as export_cli
from aaclip.export.triton_repo import TritonRepoOptions, write_model_repository
from aaclip.runtime.backends.triton import ServerStats, parse_endpoint
from click.testing import CliRunner
from google.protobuf import text_format
from runtime_fixtures import make_onnx_artifact, manifest_dict
from tritonclient.grpc import model_config_pb2 as pb


def parse_config(model_dir: Path) -> pb.ModelConfig:
    return text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())


def tensors(entries) -> dict:
    return {t.name: (pb.DataType.Name(t.data_type), list(t.dims),
                     list(t.reshape.shape) if t.HasField("reshape") else None) for t in entries}


def test_onnx_repository_config_follows_triton_schema(tmp_path):
    art = make_onnx_artifact(tmp_path, classes=("bottle", "cable"), class_offsets=(0.0, 1.0), threshold=0.625)
    options = TritonRepoOptions(model_name="line3", version=2, max_batch=16, preferred_batches=(4, 16),
                                max_queue_delay_us=2500, instances=2, gpus=(0, 1), tensorrt_accelerator="fp16")
    model_dir = write_model_repository(art, tmp_path / "repo", options)
    assert model_dir == tmp_path / "repo" / "line3"
    assert sorted(p.name for p in (model_dir / "2").iterdir()) == ["model.onnx", "model.onnx.manifest.json"]
    assert (model_dir / "2" / "model.onnx").read_bytes() == art.read_bytes()

    cfg = parse_config(model_dir)
    assert (cfg.name, cfg.platform, cfg.max_batch_size, cfg.default_model_filename) == (
        "line3", "onnxruntime_onnx", 16, "model.onnx")
    assert tensors(cfg.input) == {"image": ("TYPE_UINT8", [64, 64, 3], None), "class_id": ("TYPE_INT64", [1], [])}
    assert tensors(cfg.output) == {"anomaly_map": ("TYPE_FP32", [64, 64], None), "map_max": ("TYPE_FP32", [1], []),
                                   "cls_score": ("TYPE_FP32", [1], [])}
    assert list(cfg.dynamic_batching.preferred_batch_size) == [4, 16]
    assert cfg.dynamic_batching.max_queue_delay_microseconds == 2500
    [group] = cfg.instance_group
    assert (group.count, pb.ModelInstanceGroup.Kind.Name(group.kind), list(group.gpus)) == (2, "KIND_GPU", [0, 1])
    [accel] = cfg.optimization.execution_accelerators.gpu_execution_accelerator
    assert accel.name == "tensorrt" and accel.parameters["precision_mode"] == "FP16"
    [warm] = cfg.model_warmup
    assert warm.batch_size == 1 and {k: (list(v.dims), v.zero_data) for k, v in warm.inputs.items()} == {
        "image": ([64, 64, 3], True), "class_id": ([1], True)}
    # the manifest beside the model file, and the same manifest (with its score constants) as parameters
    served = open_artifact(model_dir / "2" / "model.onnx")
    assert served.data["artifact"]["file"] == "model.onnx" and served.sha256 == load_manifest(art).sha256
    assert json.loads(cfg.parameters[MANIFEST_PARAMETER].string_value) == served.data
    assert float(cfg.parameters["score.threshold"].string_value) == 0.625
    assert cfg.parameters["score.source"].string_value == "default"
    assert find_repository_model(tmp_path / "repo") == (model_dir / "config.pbtxt", model_dir / "2" / "model.onnx")

    with pytest.raises(UserError, match="exists and is not empty"):
        write_model_repository(art, tmp_path / "repo", options)


def test_cpu_instances_and_option_errors(tmp_path):
    art = make_onnx_artifact(tmp_path)
    cfg = parse_config(write_model_repository(art, tmp_path / "repo", TritonRepoOptions(instance_kind="cpu",
                                                                                       warmup=False)))
    assert [pb.ModelInstanceGroup.Kind.Name(g.kind) for g in cfg.instance_group] == ["KIND_CPU"]
    assert "class_id" not in tensors(cfg.input) and not cfg.model_warmup
    assert not cfg.HasField("optimization") and not cfg.dynamic_batching.preferred_batch_size
    for options, message in ((TritonRepoOptions(max_batch=4, preferred_batches=(8,)), "outside 1..4"),
                             (TritonRepoOptions(instance_kind="cpu", tensorrt_accelerator="fp16"), "needs --instance"),
                             (TritonRepoOptions(model_name="a/b"), "--model-name")):
        with pytest.raises(UserError, match=message):
            write_model_repository(art, tmp_path / "other", options)


def test_engine_repository_takes_the_profile(tmp_path):
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"not a real plan: the repository export only copies it")
    trt = {"flavour": "tensorrt", "version": "10.3.0", "gpu_name": "Orin", "compute_capability": "8.7"}
    write_manifest(engine, manifest_dict(engine, batch={"min": 1, "opt": 4, "max": 12}, tensorrt=trt))
    model_dir = write_model_repository(engine, tmp_path / "repo", TritonRepoOptions(preferred_batches=(4,)))
    cfg = parse_config(model_dir)
    assert (cfg.platform, cfg.max_batch_size, cfg.default_model_filename) == ("tensorrt_plan", 12, "model.plan")
    assert (model_dir / "1" / "model.plan").read_bytes() == engine.read_bytes()
    assert load_manifest(model_dir / "1" / "model.plan").tensorrt["version"] == "10.3.0"
    with pytest.raises(UserError, match="an engine is TensorRT already"):
        write_model_repository(engine, tmp_path / "r2", TritonRepoOptions(tensorrt_accelerator="fp16"))
    write_manifest(engine, manifest_dict(engine, batch={"min": 2, "opt": 4, "max": 8}, tensorrt=trt))
    with pytest.raises(UserError, match="batches from 1"):
        write_model_repository(engine, tmp_path / "r3")


def test_cli_fp16_repository_from_checkpoint_and_graph(tiny_ckpt, tmp_path):
    r = CliRunner().invoke(export_cli, [str(tiny_ckpt), "--format", "triton", "--precision", "fp16", "--out",
                                        str(tmp_path / "repo"), "--engine-batch", "1:2:4", "-q"])
    assert r.exit_code == 0, r.output
    model_dir = Path(r.stdout.strip())
    cfg = parse_config(model_dir)
    manifest = open_artifact(model_dir / "1" / "model.onnx")
    assert manifest.precision == "fp16" and cfg.max_batch_size == 4
    assert list(cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert tensors(cfg.input)["class_id"] == ("TYPE_INT64", [1], [])  # two classes in the tiny model
    assert manifest.rebuild_command.startswith(f"aaclip-export {tiny_ckpt} --format triton --precision fp16")
    assert not [p for p in (tmp_path / "repo").iterdir() if p.name.startswith(".")]  # temporary export removed
    # from the exported graph (a copy), as version 2 of the same model
    r = CliRunner().invoke(export_cli, [str(model_dir / "1" / "model.onnx"), "--format", "triton", "--out",
                                        str(tmp_path / "repo"), "--model-version", "2", "-q"])
    assert r.exit_code == 0, r.output
    assert (model_dir / "2" / "model.onnx").read_bytes() == (model_dir / "1" / "model.onnx").read_bytes()
    r = CliRunner().invoke(export_cli, [str(model_dir / "1" / "model.onnx"), "--format", "triton", "--out",
                                        str(tmp_path / "repo"), "--model-version", "2"])
    assert r.exit_code == 2 and "exists and is not empty" in r.stderr
    r = CliRunner().invoke(export_cli, [str(tiny_ckpt), "--format", "triton"])
    assert r.exit_code == 2 and "--out REPO" in r.stderr


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    from model_fixtures import make_tiny_checkpoint

    return make_tiny_checkpoint(tmp_path_factory.mktemp("ckpt"))


def _metadata(manifest, **changes):
    inputs = [{"name": t.name, "datatype": t.wire_type, "shape": [-1, *t.dims]} for t in served_inputs(manifest)]
    outputs = [{"name": t.name, "datatype": t.wire_type, "shape": [-1, *t.dims]} for t in served_outputs(manifest)]
    for name, change in changes.items():
        for entry in inputs + outputs:
            if entry["name"] == name:
                entry.update(change)
    return inputs, outputs


def test_served_tensor_check_names_each_mismatch(tmp_path):
    manifest = load_manifest(make_onnx_artifact(tmp_path, classes=("a", "b"), class_offsets=(0.0, 1.0)))
    assert check_served_tensors(manifest, 8, *_metadata(manifest)) == []
    ins, outs = _metadata(manifest, image={"shape": [-1, 32, 32, 3]}, map_max={"datatype": "FP16"})
    problems = check_served_tensors(manifest, 8, ins, outs)
    assert problems == ["input 'image' is UINT8 [-1, 32, 32, 3], expected UINT8 [-1, 64, 64, 3]",
                        "output 'map_max' is FP16 [-1, 1], expected FP32 [-1, 1]"]
    ins, outs = _metadata(manifest)
    problems = check_served_tensors(manifest, 4, ins[:1] + [{"name": "mask", "datatype": "BOOL", "shape": [-1]}],
                                    outs[1:], batch=8)
    assert problems[0] == "--batch 8 exceeds the server's max_batch_size 4"
    assert "input 'class_id' is missing" in problems[1] and "output 'anomaly_map' is missing" in problems[3]
    assert problems[2] == "the server's model takes input(s) ['mask'] the artifact does not have"
    assert check_served_tensors(manifest, 0, ins, outs)[0].startswith("max_batch_size is 0")


def test_endpoints_and_statistics_parsing():
    e = parse_endpoint("grpc://10.1.2.3/aaclip")
    assert (e.scheme, e.host, e.port, e.model, e.version) == ("grpc", "10.1.2.3", 8001, "aaclip", "")
    e = parse_endpoint("http://rack-7:9000/line3/2")
    assert (e.address, e.model, e.version, str(e)) == ("rack-7:9000", "line3", "2", "http://rack-7:9000/line3/2")
    assert parse_endpoint("model.onnx") is None and parse_endpoint("runs/x/model.engine") is None
    for bad in ("grpc://host:8001", "grpc://host:8001/a/b/c", "http://host:x/a"):
        with pytest.raises(UserError, match="is not a served model"):
            parse_endpoint(bad)
    # gRPC's JSON leaves zero counters out and writes int64 as strings
    before = ServerStats.from_json({"model_stats": [{"inference_stats": {}}]})
    after = ServerStats.from_json({"model_stats": [{
        "inference_count": "12", "execution_count": "5",
        "inference_stats": {"success": {"count": "6", "ns": "9"}, "queue": {"count": "6", "ns": "3000000"},
                            "compute_input": {"ns": "1000000"}, "compute_infer": {"ns": "4000000"},
                            "compute_output": {"ns": "1000000"}},
        "batch_stats": [{"batch_size": "1", "compute_infer": {"count": "2"}},
                        {"batch_size": "4", "compute_infer": {"count": "1"}}]}]})
    window = after.minus(before)
    assert (window.requests, window.inferences, window.executions, window.batches) == (6, 12, 5, ((1, 2), (4, 1)))
    assert window.mean_batch == pytest.approx(2.4) and window.queue_ms == pytest.approx(0.5)
    assert window.compute_ms == pytest.approx(1.0)
