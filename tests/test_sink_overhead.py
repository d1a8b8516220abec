"""The line-output overhead benchmark: its arithmetic on known numbers, and one small real run."""
import json

import pytest
from aaclip.benchmarks.sink_overhead import added_cpu_ms, main, summarize
from click.testing import CliRunner
from line_fixtures import needs_mosquitto, needs_paho
from runtime_fixtures import make_onnx_artifact


def _run(rep, config, ips, cpu, loop_cpu, emit):
    return {"rep": rep, "config": config, "images_per_s": ips, "cpu_ms": cpu, "loop_cpu_ms": loop_cpu,
            "emit_cpu_ms": emit, "alarms": 2, "latency_p50_ms": 1.0, "browser_cpu_ms": 0.0, "broker_cpu_ms": 0.0,
            "views_sent": 0, "mqtt_messages": 0, "mqtt_dropped": 0}


def test_comparisons_are_made_within_a_repetition():
    runs = [_run(0, "off", 100.0, 2.0, 1.9, 0.1), _run(0, "web", 95.0, 2.1, 1.96, 0.14),
            _run(1, "off", 50.0, 4.0, 3.8, 0.1), _run(1, "web", 49.0, 4.2, 3.9, 0.2),  # a slow repetition
            _run(2, "off", 100.0, 2.0, 1.9, 0.1), _run(2, "web", 90.0, 2.2, 2.0, 0.2)]
    # rep 0: emit +0.04, other threads (cpu - loop) 0.14 - 0.10 = +0.04 -> 0.08 ms on 2.0 ms: +4%
    assert added_cpu_ms(runs[1], runs[0]) == pytest.approx(0.08)
    off, web = summarize(runs, ["off", "web"])
    assert off["added_cpu"] == 0 and off["throughput_change"] == 0
    assert web["added_cpu"] == pytest.approx(0.05)  # median of 4%, 5% (0.2 / 4.0) and 10% (0.2 / 2.0)
    assert web["added_cpu_range"] == pytest.approx((0.04, 0.10))
    assert web["throughput_change"] == pytest.approx(-0.05)   # median of -5%, -2%, -10%
    assert web["images_per_s"] == 90.0 and web["reps"] == 3


@needs_paho
@needs_mosquitto
def test_a_small_interleaved_run(tmp_path):
    art = make_onnx_artifact(tmp_path, name="dark.onnx")
    out = tmp_path / "out"
    r = CliRunner().invoke(main, ["--artifact", str(art), "--reps", "2", "--frames", "40", "--warmup", "5",
                                  "--size", "96x128", "--configs", "off,web-idle,mqtt", "--out", str(out), "-q"])
    assert r.exit_code == 0, r.output
    data = json.loads((out / "sink_overhead.json").read_text())
    assert [row["config"] for row in data["rows"]] == ["off", "web-idle", "mqtt"]
    runs = data["runs"]
    assert sorted((x["rep"], x["config"]) for x in runs) == [(rep, c) for rep in (0, 1)
                                                             for c in ("mqtt", "off", "web-idle")]
    assert [x["config"] for x in runs[:3]] == ["off", "web-idle", "mqtt"]  # rotated each repetition
    assert [x["config"] for x in runs[3:]] == ["web-idle", "mqtt", "off"]
    assert all(x["frames"] == 35 and x["images_per_s"] > 0 and x["cpu_ms"] > 0 for x in runs)
    alarms = {x["alarms"] for x in runs}  # the same video and threshold: the same alarms every run
    assert len(alarms) == 1 and alarms.pop() >= 1
    assert all(x["mqtt_messages"] == x["alarms"] for x in runs if x["config"] == "mqtt")  # one per alarm
    assert "| web-idle |" in r.output and (out / "sink_overhead.md").read_text().count("\n| ") == 4
