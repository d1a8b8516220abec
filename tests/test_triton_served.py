"""The runtime against a real Triton Inference Server: ``aaclip-serve`` (NVIDIA PyTriton's tritonserver) in its own
virtual environment, started on loopback as a separate process and stopped at the end of each test module.

Served events equal local ones, four camera clients are batched by the server, a killed server is reconnected
to with the lost frames counted, and a model repository export of the tiny AA-CLIP model loads and answers.
"""
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from aaclip.contract.manifest import open_artifact
from aaclip.runtime.backends import RunnerOptions, open_runner
from aaclip.runtime.backends.base import infer_frames
from aaclip.runtime.backends.triton import served_manifest
from aaclip.runtime.capture import Backoff
from aaclip.runtime.cli import RunConfig, main, run
from aaclip.runtime.loop import CameraLoop, LoopConfig
from aaclip.runtime.sinks import EventLog
from aaclip.runtime.sources import Source, open_source
from aaclip.serve.launch import Ports, serve_python, start_server
from click.testing import CliRunner
from runtime_fixtures import frame_image, make_onnx_artifact, read_events, write_video

SERVE_PYTHON = serve_python(Path(__file__).parent)
pytestmark = pytest.mark.skipif(
    SERVE_PYTHON is None, reason="no aaclip-serve environment: .ci/run creates .venv-serve (pip install "
                                 "'.[serve]'; PyTriton pins numpy < 2), or set AACLIP_SERVE_PYTHON")
EVENT_KEYS = ("source", "frame", "class", "score", "decision", "anomalous", "alarm", "map_max", "cls_score",
              "threshold")
CLASSES = ("bottle", "cable")


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A two-class darkness artifact served with a 5 ms batching window (so concurrent clients batch)."""
    folder = tmp_path_factory.mktemp("served")
    art = make_onnx_artifact(folder, classes=CLASSES, class_offsets=(0.0, 0.25), threshold=0.6)
    server = start_server(SERVE_PYTHON, art, ["--max-queue-delay-us", "5000", "--max-batch", "8",
                                              "--backend", "onnxruntime"])
    try:
        yield art, server.wait_ready()
    finally:
        server.stop()


def events(path: Path) -> list[dict]:
    return [{k: e[k] for k in EVENT_KEYS} for e in read_events(path)]


def test_served_events_equal_local_events(served, tmp_path):
    art, server = served
    video = write_video(tmp_path / "line.avi", 24, defect_frames=[4, 5, 6, 15, 16])
    results = {}
    for name, artifact in (("local", art), ("grpc", server.grpc_url), ("http", server.http_url)):
        log = tmp_path / f"{name}.jsonl"
        # the server runs the graph on ONNX Runtime (serve --backend onnxruntime): so does the local run
        summary = run(RunConfig(artifact=artifact, cameras=(str(video),), classes=("cable",), drop=False,
                                debounce=2, events=log, stats_every=0, backend="onnxruntime" if name == "local" else "auto"))
        assert (summary.frames, summary.lost, summary.captured) == (24, 0, 24)
        results[name] = events(log)
    assert [e["decision"] for e in results["local"]].count("alarm") == 3  # the video has alarms to compare
    assert results["grpc"] == results["local"]
    assert results["http"] == results["local"]


def test_runtime_refuses_what_it_cannot_run(served, tmp_path):
    art, server = served
    video = write_video(tmp_path / "v.avi", 2)
    cases = (([server.grpc_url, "--batch", "16"], "--batch 16 exceeds the server's max_batch_size 8"),
             ([server.grpc_url.rsplit("/", 1)[0] + "/nope"], "has no model 'nope' ready"),
             ([server.grpc_url, "--backend", "onnxruntime"], "runs on the triton backend"),
             ([f"grpc://127.0.0.1:{Ports().grpc}/aaclip"], "cannot use the Triton server at grpc://127.0.0.1:"))
    for args, message in cases:
        r = CliRunner().invoke(main, [*args, "--camera", str(video), "--class", "bottle"])
        assert r.exit_code == 2, r.output
        assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1 and message in r.stderr, r.stderr


def test_four_camera_clients_are_batched_by_the_server(served, tmp_path):
    art, server = served
    video = write_video(tmp_path / "cam.avi", 30, defect_frames=[10])
    manifest = served_manifest(server.grpc_url)
    options = RunnerOptions(extra={"endpoint": server.grpc_url})
    with open_runner(manifest, "triton", options) as probe:
        before = probe.statistics()
        summaries, errors = [None] * 4, []

        def client(i: int) -> None:
            try:
                with open_runner(manifest, "triton", options) as runner:
                    loop = CameraLoop(runner, manifest, [open_source(str(video))], [i % 2],
                                      LoopConfig(drop=False, stats_every=0, in_flight=2),
                                      [EventLog(tmp_path / f"cam{i}.jsonl")])
                    summaries[i] = loop.run()
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=client, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        window = probe.statistics().minus(before)
    assert not errors and [s.frames for s in summaries] == [30] * 4 and sum(s.lost for s in summaries) == 0
    assert (window.requests, window.inferences) == (120, 120)
    assert window.executions < 120 and window.mean_batch > 1.0, window
    assert max(size for size, _ in window.batches) > 1, window.batches
    assert sum(size * n for size, n in window.batches) == 120
    scores = [[e["raw_score"] for e in read_events(tmp_path / f"cam{i}.jsonl")] for i in range(4)]
    assert scores[0] == scores[2] and scores[1] == scores[3] and scores[0] != scores[1]  # class per client kept


def test_one_station_with_four_cameras_keeps_the_batcher_fed(served, tmp_path):
    """aaclip-runtime with four cameras keeps a request per camera on the server (asynchronous loop)."""
    art, server = served
    videos = tuple(str(write_video(tmp_path / f"cam{i}.avi", 20, defect_frames=[7])) for i in range(4))
    with open_runner(served_manifest(server.grpc_url), "triton",
                     RunnerOptions(extra={"endpoint": server.grpc_url})) as probe:
        before = probe.statistics()
        summary = run(RunConfig(artifact=server.grpc_url, cameras=videos, classes=("bottle",), drop=False,
                                stats_every=0, events=tmp_path / "ev.jsonl"))
        window = probe.statistics().minus(before)
    assert (summary.frames, summary.lost, summary.alarms) == (80, 0, 4)
    assert window.inferences == 80 and window.mean_batch > 1.0 and max(b for b, _ in window.batches) > 1, window
    per_camera = {}
    for e in read_events(tmp_path / "ev.jsonl"):
        per_camera.setdefault(e["source"], []).append(e["frame"])
    assert per_camera == {f"cam{i}.avi": list(range(20)) for i in range(4)}  # every frame, in order per camera


class PacedSource(Source):
    """Frames of a video, looped, one every ``period_s`` (a camera's pace) without being live (no drop)."""

    def __init__(self, video: Path, period_s: float):
        self.inner = open_source(str(video), loop=True)
        self.name, self.period_s = "paced", period_s

    def open(self) -> bool:
        return self.inner.open()

    def read(self):
        time.sleep(self.period_s)
        return self.inner.read()

    def release(self) -> None:
        self.inner.release()


def test_killed_server_is_reconnected_with_lost_frames_counted(tmp_path):
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 10, defect_frames=[3])
    ports = Ports()
    server = start_server(SERVE_PYTHON, art, ports=ports, log_path=tmp_path / "serve.log").wait_ready()
    restarted = None
    try:
        manifest = served_manifest(server.grpc_url)
        runner = open_runner(manifest, "triton", RunnerOptions(extra={"endpoint": server.grpc_url, "timeout_s": 5}))
        runner.activate()
        loop = CameraLoop(runner, manifest, [PacedSource(video, 0.01)], [0],
                          LoopConfig(drop=False, stats_every=0, in_flight=3, max_frames=150,
                                     backoff=Backoff(initial=0.2, maximum=1.0)),
                          [EventLog(tmp_path / "events.jsonl")])
        result = {}
        thread = threading.Thread(target=lambda: result.update(summary=loop.run()))
        thread.start()
        deadline = time.monotonic() + 30
        while loop.summary.frames < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert loop.summary.frames >= 20
        server.kill()  # SIGKILL the server and its tritonserver: a crash, mid-run
        frames_at_kill = loop.summary.frames
        time.sleep(1.0)
        restarted = start_server(SERVE_PYTHON, art, ports=ports, log_path=tmp_path / "serve2.log").wait_ready()
        thread.join(60)
        assert not thread.is_alive()
        runner.deactivate()
    finally:
        server.kill()
        if restarted is not None:
            restarted.stop()
    summary = result["summary"]
    assert summary.frames == 150 and summary.backend_reconnects == 1 and summary.stopped_by == "max-frames"
    assert 1 <= summary.lost and frames_at_kill < 150
    assert summary.captured == summary.frames + summary.lost  # every frame read was decided or counted as lost
    decided = [e["frame"] for e in read_events(tmp_path / "events.jsonl")]
    assert len(decided) == 150 and decided == sorted(set(decided))
    assert len(set(range(summary.captured)) - set(decided)) == summary.lost  # the gap is exactly the lost frames


def test_model_repository_of_the_tiny_model_loads_in_the_server(tmp_path):
    from aaclip.export.cli import cli as export_cli
    from google.protobuf import text_format
    from model_fixtures import make_tiny_checkpoint
    from tritonclient.grpc import model_config_pb2 as pb

    ckpt = make_tiny_checkpoint(tmp_path / "ckpt")
    r = CliRunner().invoke(export_cli, [str(ckpt), "--format", "triton", "--out", str(tmp_path / "repo"),
                                        "--model-name", "tiny", "--engine-batch", "1:2:4", "-q"])
    assert r.exit_code == 0, r.output
    model_dir = tmp_path / "repo" / "tiny"
    exported = text_format.Parse((model_dir / "config.pbtxt").read_text(), pb.ModelConfig())
    server = start_server(SERVE_PYTHON, tmp_path / "repo", model="tiny", log_path=tmp_path / "serve.log")
    try:
        server.wait_ready()
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(server.grpc_url.split("/")[2])
        served_cfg = client.get_model_config("tiny").config
        client.close()
        manifest = served_manifest(server.grpc_url, batch=4)
        local = open_artifact(model_dir / "1" / "model.onnx")
        frames = [frame_image(i % 3 == 0, (80, 80), seed=i) for i in range(6)]
        ids = [i % 2 for i in range(6)]
        with open_runner(manifest, "triton", RunnerOptions(extra={"endpoint": server.grpc_url})) as remote:
            got = infer_frames(remote, manifest, frames, ids, batch=4)
        with open_runner(local, "onnxruntime", RunnerOptions(device="cpu")) as ort:
            want = infer_frames(ort, local, frames, ids, batch=4)
    finally:
        server.stop()
    # what the server loaded is what the repository says (name, batching, tensors, the manifest parameters)
    assert (served_cfg.name, served_cfg.max_batch_size) == (exported.name, exported.max_batch_size) == ("tiny", 4)
    assert list(served_cfg.dynamic_batching.preferred_batch_size) == [2, 4]
    assert served_cfg.dynamic_batching.max_queue_delay_microseconds == 1000
    assert [(t.name, t.data_type, list(t.dims)) for t in served_cfg.input] == \
        [(t.name, t.data_type, list(t.dims)) for t in exported.input]
    assert [(t.name, t.data_type, list(t.dims)) for t in served_cfg.output] == \
        [(t.name, t.data_type, list(t.dims)) for t in exported.output]
    assert json.loads(served_cfg.parameters["aaclip_manifest"].string_value) == local.data
    assert manifest.sha256 == local.sha256 and manifest.classes == local.classes
    for name in ("anomaly_map", "map_max", "cls_score"):
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6)
    assert not np.allclose(got["cls_score"][0], got["cls_score"][1])  # real, varying outputs


def test_bench_triton_rows_per_number_of_clients(tmp_path):
    from aaclip.benchmarks.suite import BenchConfig, run_benchmark

    cfg = BenchConfig(out_dir=tmp_path / "out", tiny=True, backends=("triton",), precisions=("fp32",), batches=(1,),
                      reps=6, warmup=1, loop=False, plot=False, clients=(1, 3), serve_python=SERVE_PYTHON,
                      work_dir=tmp_path / "work")
    result, files = run_benchmark(cfg)
    rows = {r["key"]: r for r in result["rows"]}
    assert sorted(rows) == ["triton/cpu/fp32/c1", "triton/cpu/fp32/c3"]
    for n, row in ((1, rows["triton/cpu/fp32/c1"]), (3, rows["triton/cpu/fp32/c3"])):
        assert row["status"] == "ok" and row["clients"] == n and row["parity_passed"], row
        assert row["images_per_s"] > 0 and row["latency_p50_ms"] > 0
        assert row["server_queue_ms"] >= 0 and row["server_compute_ms"] > 0
        assert 1.0 <= row["server_batch_mean"] <= n
    assert rows["triton/cpu/fp32/c1"]["server_batch_mean"] == 1.0  # one client never waits for another
    text = files["markdown"].read_text()
    assert "## Served by Triton Inference Server (concurrent clients)" in text
    assert "| Triton (aaclip-serve) | cpu | fp32 | 3 |" in text
