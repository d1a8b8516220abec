"""Alarm notifications with the real things: a Mosquitto broker on loopback (exactly the video's alarms,
also across a broker restart, drops counted when the outage queue overflows) and a webhook receiver."""
import json
import threading
import time

import pytest
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import load_manifest
from aaclip.runtime.backends import open_runner
from aaclip.runtime.capture import Backoff
from aaclip.runtime.cli import RunConfig, run
from aaclip.runtime.decide import Decision
from aaclip.runtime.loop import CameraLoop, LoopConfig
from aaclip.runtime.sinks import EventLog
from line_fixtures import Mosquitto, Receiver, ScriptedCamera, Subscriber, needs_mosquitto, needs_paho, wait_until
from runtime_fixtures import frame_image, make_onnx_artifact, read_events, write_video

DEFECTS = [3, 4, 10, 20, 21, 22]  # alarm onsets (debounce 1) at frames 3, 10 and 20


def onsets(events):
    """The events of alarm onsets: what MQTT and the webhook must deliver, in order."""
    return [e for i, e in enumerate(events) if e["alarm"] and (i == 0 or not events[i - 1]["alarm"])]


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker")  # tests using it are marked needs_mosquitto
    b.start()
    yield b
    b.stop()


@needs_paho
def test_mqtt_url_parsing():
    from aaclip.runtime.mqtt import parse_mqtt_url

    t = parse_mqtt_url("mqtt://op:s%40cret@broker.local/factory/line1/?queue=50&decisions=1")
    assert (t.host, t.port, t.prefix, t.queue, t.decisions, t.tls) == ("broker.local", 1883, "factory/line1", 50,
                                                                        True, False)
    assert (t.username, t.password) == ("op", "s@cret") and t.display == "mqtt://broker.local:1883/factory/line1"
    assert parse_mqtt_url("mqtts://b:9999/x").port == 9999 and parse_mqtt_url("mqtts://b/x").port == 8883
    for bad, why in (("http://b/x", "give mqtt://"), ("mqtt://b", "prefix must be non-empty"),
                     ("mqtt://b/a/#", "without '\\+', '#'"), ("mqtt://b/x?qos=2", "unknown option"),
                     ("mqtt://b/x?queue=0", "queue must be >= 1")):
        with pytest.raises(UserError, match=why):
            parse_mqtt_url(bad)


@needs_paho
@needs_mosquitto
def test_broker_receives_exactly_the_alarms_of_a_video(tmp_path, broker):
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 30, defect_frames=DEFECTS)
    events = tmp_path / "events.jsonl"
    sub = Subscriber(broker.port, "factory/#")
    try:
        summary = run(RunConfig(artifact=art, cameras=(str(video),), drop=False, events=events, stats_every=0,
                                mqtt=broker.url("factory/line1")))
        expected = onsets(read_events(events))
        assert summary.alarms == 3 and [e["frame"] for e in expected] == [3, 10, 20]
        wait_until(lambda: len(sub.messages) >= 3, 30.0, "3 messages")
        time.sleep(0.2)  # nothing more arrives
        assert [t for t, _ in sub.messages] == ["factory/line1/v.avi/alarm"] * 3
        assert [m for _, m in sub.messages] == expected  # the payload is the event line itself
    finally:
        sub.close()


def _decision(frame: int, onset: bool = True) -> Decision:
    return Decision(source="line1", source_index=0, frame=frame, class_name="bottle", score=0.62,
                    state="alarm" if onset else "normal", onset=onset, map_max=0.99, cls_score=0.25,
                    threshold=0.5, wall_time=time.time(), latency_s=0.001)


@needs_paho
@needs_mosquitto
def test_alarms_queued_across_a_broker_restart_and_overflow_counted(tmp_path, broker):
    """Alarm 1 goes out live; the broker stops; alarms 2..5 happen during the outage with room for two in
    the queue: 2 and 3 are delivered after the restart, 4 and 5 are dropped and counted."""
    from aaclip.runtime.mqtt import MqttSink

    sub = Subscriber(broker.port, "factory/#")  # a persistent session: the broker keeps its messages
    camera = ScriptedCamera(live=False)
    mqtt = MqttSink(broker.url("factory/line1", queue=2), backoff=Backoff(0.1, 0.3))
    events = tmp_path / "events.jsonl"
    m = load_manifest(make_onnx_artifact(tmp_path))
    clean, defect = frame_image(False), frame_image(True)
    try:
        with open_runner(m, "onnxruntime") as runner:
            loop = CameraLoop(runner, m, [camera], [0], LoopConfig(drop=False, stats_every=0, poll_s=0.02),
                              [EventLog(events), mqtt])
            camera.stop = loop.stop_event
            thread = threading.Thread(target=loop.run, daemon=True)
            thread.start()
            wait_until(mqtt.connected.is_set, 30.0, "the MQTT connection")
            camera.push(clean, defect, clean)
            wait_until(lambda: len(sub.messages) == 1, 30.0, "alarm 1")

            broker.stop()
            wait_until(lambda: not mqtt.connected.is_set(), 30.0, "the sink to notice the outage")
            camera.push(*[defect, clean] * 4)  # alarms 2, 3, 4, 5
            # the loop never waits for the broker: every frame of the outage is inspected while it is down
            # (a loop that waited would stay stuck here, the broker restarts only afterwards)
            wait_until(lambda: loop.summary.frames == 11, 30.0, "the frames of the outage, broker down")
            assert not mqtt.connected.is_set() and broker.proc is None
            assert (mqtt.pending, mqtt.failures) == (2, 2)

            broker.start()
            wait_until(lambda: len(sub.messages) == 3, 30.0, "the queued alarms after the restart")
            loop.stop("test")
            thread.join(10)
    finally:
        sub.close()
    alarms = onsets(read_events(events))
    assert [e["frame"] for e in alarms] == [1, 3, 5, 7, 9]
    assert [msg for _, msg in sub.messages] == alarms[:3]  # 1 live, 2 and 3 queued; 4 and 5 dropped
    assert (mqtt.failures, mqtt.delivered) == (2, 3)


# ---- webhook ------------------------------------------------------------------------------------------
def test_webhook_receives_the_alarms_of_a_video(tmp_path):
    receiver = Receiver()
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 30, defect_frames=DEFECTS)
    events = tmp_path / "events.jsonl"
    try:
        run(RunConfig(artifact=art, cameras=(str(video),), drop=False, events=events, stats_every=0,
                      webhook=receiver.url))
    finally:
        receiver.close()
    assert [c["path"] for c in receiver.calls] == ["/hook"] * 3
    assert {c["type"] for c in receiver.calls} == {"application/json"}
    assert receiver.events() == onsets(read_events(events))


def test_webhook_retries_then_delivers_and_never_blocks(tmp_path):
    from aaclip.runtime.webhook import WebhookSink

    receiver = Receiver(statuses=(503, 500))  # two failures, then 200
    sink = WebhookSink(receiver.url, timeout_s=1.0, backoff=Backoff(0.05, 0.1))
    sink.emit(_decision(7), None)
    sink.emit(_decision(8, onset=False), None)  # not an alarm onset: not sent
    wait_until(lambda: sink.sent == 1, 30.0, "the delivery")
    sink.close()
    receiver.close()
    assert [c["status"] for c in receiver.calls] == [503, 500, 200]
    assert len({c["body"] for c in receiver.calls}) == 1 and receiver.events()[0]["frame"] == 7
    assert sink.failures == 0

    # emit only queues: the receiver holds its first answer back, so a sink that waited for the network in
    # emit would either post more than one alarm or wait for ever; the queue holds two, the rest are dropped.
    hold = threading.Event()
    held = Receiver(hold=hold)
    sink = WebhookSink(held.url, timeout_s=60.0, attempts=1, backoff=Backoff(0.05, 0.05), queue_size=2)
    try:
        sink.emit(_decision(0), None)
        wait_until(lambda: len(held.calls) == 1, 30.0, "the worker to post alarm 0")  # and wait for its answer
        emitter = threading.Thread(target=lambda: [sink.emit(_decision(frame), None) for frame in range(1, 6)])
        emitter.start()
        emitter.join(30.0)  # a guard against hanging, not a speed limit: the POST hangs until `hold` is set
        assert not emitter.is_alive(), "emit waited for the receiver"
        assert (len(held.calls), held.answered) == (1, 0)  # all six emits returned while the POST hangs
        assert (sink.queue.qsize(), sink.failures, sink.sent) == (2, 3, 0)  # 1 and 2 queued; 3, 4, 5 dropped
    finally:
        hold.set()
    wait_until(lambda: sink.sent == 3, 30.0, "the queued alarms")
    sink.close()
    held.close()
    assert [json.loads(c["body"])["frame"] for c in held.calls] == [0, 1, 2] and sink.failures == 3

    # an attempt that times out counts as a failure once the attempts are used up
    hold = threading.Event()
    slow = Receiver(hold=hold)
    sink = WebhookSink(slow.url, timeout_s=0.2, attempts=2, backoff=Backoff(0.05, 0.05))
    sink.emit(_decision(9), None)
    wait_until(lambda: sink.failures == 1 and len(slow.calls) == 2, 30.0, "two timed-out attempts")
    hold.set()
    sink.close()
    slow.close()
    assert sink.sent == 0 and len(slow.calls) == 2 and json.loads(slow.calls[0]["body"])["frame"] == 9


def test_bad_urls_exit_2(tmp_path):
    from aaclip.runtime.cli import main
    from click.testing import CliRunner

    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 2)
    for option, value, message in (("--webhook", "ftp://x/y", "give an http:// or https:// URL"),
                                   ("--http", "x:y", "give [HOST]:PORT")):
        r = CliRunner().invoke(main, [str(art), "--camera", str(video), option, value])
        assert r.exit_code == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.output
