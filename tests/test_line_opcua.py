"""The OPC UA output against asyncua's real server on loopback, read by a second real OPC UA client (what a PLC's
HMI or a SCADA does): the alarm and score nodes follow a video's decisions; the station survives a server
restart (its nodes re-created, the outage's alarm changes written after it, overflow counted); Basic256Sha256
with a user and a password file, and refusals (wrong password, no security)."""
import re
import shlex
import shutil
import subprocess
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest
from aaclip.contract.errors import UserError
from aaclip.contract.manifest import load_manifest
from aaclip.runtime.backends import open_runner
from aaclip.runtime.capture import Backoff
from aaclip.runtime.cli import RunConfig, run
from aaclip.runtime.station.outputs import OpcuaOutput
from aaclip.runtime.loop import CameraLoop, LoopConfig
from aaclip.runtime.sinks import EventLog
from line_fixtures import ScriptedCamera, wait_until
from opcua_fixtures import OpcServer, Reader, make_certificate, needs_asyncua
from runtime_fixtures import frame_image, make_onnx_artifact, read_events, write_video

pytestmark = needs_asyncua
DEFECTS = [3, 4, 10, 20, 21, 22]  # alarms (debounce 1) over frames 3-4, 10 and 20-22
NS = "ns=2;s=aaclip"


def node(camera: str, variable: str) -> str:
    return f"{NS}.{camera}.{variable}"


@pytest.fixture
def server(tmp_path):
    s = OpcServer(tmp_path / "plc")
    s.start()
    yield s
    s.stop()


def test_endpoint_parsing():
    from aaclip.runtime.opcua import parse_endpoint

    assert parse_endpoint("opcua://plc-7:4841/line1") == ("opc.tcp://plc-7:4841", "line1")
    assert parse_endpoint("opc.tcp://10.0.0.5") == ("opc.tcp://10.0.0.5:4840", "aaclip")
    for bad in ("http://plc/x", "opcua:///x", "opcua://plc/a/b", "opcua://plc/a.b", "opcua://plc/x?mode=1"):
        with pytest.raises(UserError, match="give opcua://HOST:PORT/ROOT|one name"):
            parse_endpoint(bad)


def test_a_plc_client_reads_the_alarm_and_score_of_a_video(tmp_path, server):
    """The plant's way: the PLC programmer made the nodes; the station writes alarm changes into them; the
    PLC's own client, subscribed, sees Alarm go true and false with each alarm of the video, the score of
    each of those frames, the last alarm's time and the frame count."""
    server.add_camera_nodes("aaclip", "v_avi")
    reader = Reader(server.url)
    reader.connect()
    ids = {v: node("v_avi", v) for v in ("Alarm", "Score", "LastAlarmTime", "FrameCounter", "ModelId")}
    reader.subscribe(list(ids.values()))
    wait_until(lambda: reader.seen(ids["Alarm"]) == [False], 5.0, "the subscription's initial value")
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 30, defect_frames=DEFECTS)
    events = tmp_path / "events.jsonl"
    try:
        summary = run(RunConfig(artifact=art, cameras=(str(video),), drop=False, events=events, stats_every=0,
                                opcua=OpcuaOutput(endpoint=f"opcua://127.0.0.1:{server.port}/aaclip",
                                                   mode="alarms")))
        assert summary.alarms == 3
        ev = read_events(events)
        changes = [e for i, e in enumerate(ev) if e["alarm"] != (i > 0 and ev[i - 1]["alarm"])]
        assert [e["frame"] for e in changes] == [3, 5, 10, 11, 20, 23]
        wait_until(lambda: len(reader.seen(ids["Alarm"])) >= 7, 5.0, "six alarm changes")
        time.sleep(0.2)
        assert reader.seen(ids["Alarm"]) == [False, True, False, True, False, True, False]
        assert reader.seen(ids["Score"])[1:] == pytest.approx([e["score"] for e in changes], abs=1e-6)  # events: 6 decimals
        last_onset = datetime.fromisoformat(changes[4]["timestamp"])
        assert abs(reader.read(ids["LastAlarmTime"]).replace(tzinfo=timezone.utc) - last_onset).total_seconds() < 0.002
        assert reader.read(ids["FrameCounter"]) == 30  # the closing heartbeat's count: every frame inspected
        m = load_manifest(art)
        assert reader.read(ids["ModelId"]) == f"model.onnx@{m.sha256[:12]}"
    finally:
        reader.close()
    # nothing but the station's own nodes was written, and no node was created (they existed)
    assert {n for n, _ in server.writes if "aaclip" in n} <= set(ids.values()) | {node("v_avi", "Heartbeat")}


def test_server_restart_nodes_recreated_outage_changes_written_and_overflow_counted(tmp_path, server):
    """Nodes the station creates itself (a server without them); the server stops while the line runs: the
    loop does not wait, alarm changes queue (room for 2 of 4: 2 dropped and counted), and after the restart
    (a fresh address space) the nodes are made again, the queue is written in order, then the latest state;
    the heartbeat counts on."""
    from aaclip.runtime.opcua import OpcuaSink

    camera = ScriptedCamera(live=False)
    sink = OpcuaSink(OpcuaOutput(endpoint=f"opcua://127.0.0.1:{server.port}/aaclip", mode="decisions", queue=2,
                                  heartbeat_s=0.2), backoff=Backoff(0.1, 0.3))
    events = tmp_path / "events.jsonl"
    m = load_manifest(make_onnx_artifact(tmp_path))
    clean, defect = frame_image(False), frame_image(True)
    reader = Reader(server.url)
    with open_runner(m, "onnxruntime") as runner:
        loop = CameraLoop(runner, m, [camera], [0], LoopConfig(drop=False, stats_every=0, poll_s=0.02),
                          [EventLog(events), sink])
        camera.stop = loop.stop_event
        thread = threading.Thread(target=loop.run, daemon=True)
        thread.start()
        try:
            wait_until(sink.connected.is_set, 10.0, "the OPC UA connection")
            for n, image in enumerate((clean, defect, clean), 1):  # one at a time: the queue holds two
                camera.push(image)
                wait_until(lambda: sink.written == n, 5.0, f"decision {n} written")
            reader.connect()
            assert reader.read(node("line1", "Alarm")) is False and reader.read(node("line1", "FrameCounter")) == 3
            beat = reader.read(node("line1", "Heartbeat"))
            wait_until(lambda: reader.read(node("line1", "Heartbeat")) > beat, 3.0, "the heartbeat to count")
            reader.close()

            server.stop()
            wait_until(lambda: not sink.connected.is_set(), 5.0, "the sink to notice the outage")
            t0 = time.monotonic()
            camera.push(defect, defect, clean, defect, clean)  # changes at 3, 5, 6, 7; 4 is a plain decision
            wait_until(lambda: loop.summary.frames == 8, 5.0, "the frames of the outage")
            assert time.monotonic() - t0 < 2.0  # the loop never waited for the server
            assert (sink.pending, sink.failures) == (2, 3)  # 3, 5 queued; 4 (not a change), 6, 7 dropped

            server.writes.clear()
            server.start()
            wait_until(sink.connected.is_set, 10.0, "the reconnection")
            reader = Reader(server.url)
            reader.connect()
            wait_until(lambda: reader.read(node("line1", "FrameCounter")) == 8, 5.0, "the latest state")
            assert reader.read(node("line1", "Alarm")) is False  # frame 7 (clean): the final state, not a stale one
            loop.stop("test")
            thread.join(10)
        finally:
            reader.close()
    frames = [e for e in read_events(events)]
    assert [e["alarm"] for e in frames] == [False, True, False, True, True, False, True, False]
    after = server.written("line1.Alarm")
    # the queue first (frames 3: alarm, 5: end), then the latest state (frame 7), and the final write at close
    assert after[:3] == [True, False, False]
    assert server.written("line1.Score")[:3] == pytest.approx([frames[3]["score"], frames[5]["score"],
                                                               frames[7]["score"]], abs=1e-6)
    assert sink.failures == 3 and sink.pending == 0


def station_certificate(directory):
    """The station's certificate and key made with the openssl command of docs/security.md (PEM, key as .key)."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "security.md").read_text()
    command = re.search(r"```bash\n(openssl req .*?clientAuth\")\n```", text, re.S).group(1)
    subprocess.run(shlex.split(command.replace("\\\n", " ")), cwd=directory, check=True, capture_output=True,
                   timeout=60)
    return directory / "station.pem", directory / "station.key"


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")
def test_basic256sha256_with_user_and_password_file(tmp_path):
    """The server offers only Basic256Sha256 SignAndEncrypt and checks users; the station connects with its
    certificate and the password from a file. A wrong password, or no security, gets no connection: the run
    still inspects every frame and counts the writes it could not make."""
    server = OpcServer(tmp_path / "plc", secure=True, users={"station": "plc-pass-8d1f"})
    server.start()
    cert, key = station_certificate(tmp_path)
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 30, defect_frames=DEFECTS)
    try:
        results = {}
        for label, password, security in (("right", "plc-pass-8d1f", "Basic256Sha256"),
                                          ("wrong", "guess", "Basic256Sha256"), ("plain", "plc-pass-8d1f", "none")):
            secret = tmp_path / f"{label}.pw"
            secret.write_text(password + "\n")
            secret.chmod(0o600)
            server.logins.clear()
            before = len(server.writes)
            options = OpcuaOutput(endpoint=f"opcua://127.0.0.1:{server.port}/aaclip", mode="alarms",
                                   security=security, certificate=cert if security != "none" else None,
                                   private_key=key if security != "none" else None, username="station",
                                   password_file=secret)
            summary = run(RunConfig(artifact=art, cameras=(str(video),), drop=False, stats_every=0, opcua=options,
                                    reconnect_delay=0.1, reconnect_max=0.2))
            results[label] = (summary, list(server.logins), server.writes[before:])
        summary, logins, writes = results["right"]
        assert summary.frames == 30 and ("station", True) in logins
        alarm = [v for n, v in writes if n.endswith("Alarm")]
        assert alarm[:6] == [True, False, True, False, True, False] and set(alarm[6:]) <= {False}  # + latest state
        assert summary.write_failures == 0
        summary, logins, writes = results["wrong"]
        assert summary.frames == 30 and logins and all(not ok for _, ok in logins) and not writes
        assert summary.write_failures == 6  # the six alarm changes, not written
        summary, logins, writes = results["plain"]
        assert summary.frames == 30 and not logins and not writes and summary.write_failures == 6
    finally:
        server.stop()


def test_security_without_certificate_is_a_user_error(tmp_path):
    from aaclip.runtime.opcua import OpcuaSink

    cert, key = make_certificate(tmp_path, "station", "urn:test:station", server=False)
    (tmp_path / "bad.key").write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    with pytest.raises(UserError, match="private key .*bad.key cannot be read"):
        OpcuaSink(OpcuaOutput(endpoint="opcua://127.0.0.1:1/x", security="Basic256Sha256", certificate=cert,
                               private_key=tmp_path / "bad.key"))
    with pytest.raises(UserError, match="no application URI|not an application instance certificate"):
        OpcuaSink(OpcuaOutput(endpoint="opcua://127.0.0.1:1/x", security="Basic256Sha256", certificate=key,
                               private_key=key))

    with pytest.raises(UserError, match="needs --opcua-certificate and --opcua-private-key"):
        OpcuaSink(OpcuaOutput(endpoint="opcua://127.0.0.1:1/x", security="Basic256Sha256"))
    with pytest.raises(UserError, match="a password without --opcua-username"):
        OpcuaSink(OpcuaOutput(endpoint="opcua://127.0.0.1:1/x"), password="p")
