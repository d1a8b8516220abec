"""Secrets stay out of sight: a running ``aaclip-runtime`` with every credentialed output (MQTT with a password,
a signed webhook, OPC UA with a user, the line view behind a token) shows none of them in ``ps``, its log (at
debug level), any file it writes or the page; a password in a URL is refused. Signed webhooks verify with the
snippet of docs/security.md, which fails for a tampered body, another secret or an old timestamp."""
import hashlib
import hmac
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from aaclip.runtime.cli import RunConfig, run
from aaclip.runtime.station.outputs import WebhookOutput
from line_fixtures import Mosquitto, Receiver, Subscriber, free_port, needs_mosquitto, needs_paho, wait_until
from opcua_fixtures import OpcServer, needs_asyncua
from runtime_fixtures import make_onnx_artifact, read_events, write_video

DOC = Path(__file__).resolve().parents[1] / "docs" / "security.md"
DEFECTS = [3, 4, 10, 20, 21, 22]
SECRETS = {"mqtt": "mqtt-Pw-71c9e2", "webhook": "hook-Key-4fa8d1", "opcua": "opc-Pw-93b6aa", "http": "http-Tok-2d7e5c"}


def doc_snippet() -> dict:
    """The receiver's verification snippet of docs/security.md, executed: its namespace."""
    text = DOC.read_text()
    match = re.search(r"<!-- webhook-verify -->\s*```python\n(.*?)```", text, re.S)
    assert match, "docs/security.md lost its webhook verification snippet"
    namespace: dict = {}
    exec(compile(match.group(1), str(DOC), "exec"), namespace)
    return namespace


def test_signed_webhooks_verify_with_the_documented_snippet(tmp_path):
    secret_file = tmp_path / "webhook.secret"
    secret_file.write_text(SECRETS["webhook"] + "\n")
    secret_file.chmod(0o600)
    receiver = Receiver()
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 30, defect_frames=DEFECTS)
    try:
        run(RunConfig(artifact=art, cameras=(str(video),), drop=False, stats_every=0, events=tmp_path / "e.jsonl",
                      webhook=WebhookOutput(url=receiver.url, secret_file=secret_file)))
    finally:
        receiver.close()
    verify = doc_snippet()["verify"]
    key = SECRETS["webhook"].encode()
    assert len(receiver.calls) == 3
    for call in receiver.calls:
        header, body = call["headers"]["X-Aaclip-Signature"], call["body"]
        assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
        assert verify(key, header, body) is True
        event = json.loads(body)
        tampered = json.dumps({**event, "score": 0.01}, separators=(",", ":")).encode()
        assert verify(key, header, tampered) is False
        assert verify(key, header, body + b" ") is False
        assert verify(b"another secret", header, body) is False
        assert verify(key, header.replace("v1=", "v1=0"), body) is False
        old = int(time.time()) - 3600  # a correctly signed but replayed (old) POST
        mac = hmac.new(key, f"{old}.".encode() + body, hashlib.sha256).hexdigest()
        assert verify(key, f"t={old},v1={mac}", body) is False
        assert verify(key, "garbage", body) is False
    assert [json.loads(c["body"])["frame"] for c in receiver.calls] == [3, 10, 20]


def test_unsigned_without_a_secret(tmp_path):
    receiver = Receiver()
    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 8, defect_frames=[3])
    try:
        run(RunConfig(artifact=art, cameras=(str(video),), drop=False, stats_every=0, webhook=receiver.url))
    finally:
        receiver.close()
    assert len(receiver.calls) == 1 and "X-Aaclip-Signature" not in receiver.calls[0]["headers"]


@pytest.mark.parametrize("option,url,fix", [
    ("--mqtt", "mqtt://op:{pw}@127.0.0.1/factory", "--mqtt-password-file"),
    ("--webhook", "http://op:{pw}@127.0.0.1/hook", "--webhook-secret-file"),
    ("--opcua", "opcua://op:{pw}@127.0.0.1:4840/aaclip", "--opcua-password-file")])
def test_password_in_a_url_is_refused(tmp_path, option, url, fix):
    from aaclip.runtime.cli import main
    from click.testing import CliRunner

    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 2)
    r = CliRunner().invoke(main, [str(art), "--camera", str(video), option, url.format(pw="hunter2")])
    assert r.exit_code == 2 and r.stderr.count("\n") == 1, r.output
    assert "contains a password" in r.stderr and fix in r.stderr and "hunter2" not in r.stderr


def test_empty_or_missing_secret_file_is_a_user_error(tmp_path):
    from aaclip.runtime.cli import main
    from click.testing import CliRunner

    art = make_onnx_artifact(tmp_path)
    video = write_video(tmp_path / "v.avi", 2)
    (tmp_path / "empty").write_text("\n")
    for name, message in (("empty", "is empty"), ("missing", "cannot read the webhook secret file")):
        r = CliRunner().invoke(main, [str(art), "--camera", str(video), "--webhook", "http://127.0.0.1:9/x",
                                      "--webhook-secret-file", str(tmp_path / name)])
        assert r.exit_code == 2 and message in r.stderr and r.stderr.count("\n") == 1, r.output


@needs_paho
@needs_mosquitto
@needs_asyncua
def test_no_secret_in_ps_logs_files_or_page(tmp_path):
    station = tmp_path / "station"
    secrets_dir = tmp_path / "secrets"  # the secret files themselves live apart from what the station writes
    station.mkdir()
    secrets_dir.mkdir()
    files = {}
    for name, value in SECRETS.items():
        files[name] = secrets_dir / f"{name}.secret"
        files[name].write_text(value + "\n")
        files[name].chmod(0o600)
    broker = Mosquitto(tmp_path / "broker", users={"station": SECRETS["mqtt"], "reader": "reader-pw"})
    broker.start()
    plc = OpcServer(tmp_path / "plc", users={"station": SECRETS["opcua"]})
    plc.start()
    receiver = Receiver()
    sub = Subscriber(broker.port, "factory/#", credentials=("reader", "reader-pw"))
    art = make_onnx_artifact(station)
    video = write_video(station / "line.avi", 30, defect_frames=DEFECTS)
    http_port = free_port()
    log_path = station / "runtime.log"
    cmd = [sys.executable, "-m", "aaclip.runtime.cli", str(art), "--camera", str(video), "--loop", "--no-drop", "-v",
           "--events", str(station / "events.jsonl"), "--evidence", str(station / "evidence"), "--evidence-max", "20",
           "--http", f"127.0.0.1:{http_port}", "--http-token-file", str(files["http"]),
           "--mqtt", f"mqtt://station@127.0.0.1:{broker.port}/factory/line1", "--mqtt-password-file",
           str(files["mqtt"]),
           "--webhook", receiver.url, "--webhook-secret-file", str(files["webhook"]),
           "--opcua", f"opcua://127.0.0.1:{plc.port}/aaclip", "--opcua-username", "station", "--opcua-password-file",
           str(files["opcua"]), "--stats-every", "1"]
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=station)
    try:
        wait_until(lambda: len(sub.messages) >= 2, 60.0, "MQTT alarms through the password-protected broker")
        wait_until(lambda: ("station", True) in plc.logins and plc.written("Alarm"), 30.0, "OPC UA writes as 'station'")
        wait_until(lambda: len(receiver.calls) >= 2, 30.0, "signed webhook POSTs")
        ps = subprocess.run(["ps", "-eo", "pid,args", "ww"], capture_output=True, text=True, check=True).stdout
        assert str(proc.pid) in ps and "--mqtt-password-file" in ps  # the process is listed, with its flags
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/cam/0/state.json",
                                         headers={"Authorization": f"Bearer {SECRETS['http']}"})
        with urllib.request.urlopen(request, timeout=5) as r:
            page_state = r.read()
        request = urllib.request.Request(f"http://127.0.0.1:{http_port}/cam/0",
                                         headers={"Authorization": f"Bearer {SECRETS['http']}"})
        with urllib.request.urlopen(request, timeout=5) as r:
            page = r.read()
        assert json.loads(page_state)["counters"]["inspected"] > 0
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            rc = proc.wait(30)
        finally:
            if proc.poll() is None:
                proc.kill()
            sub.close()
            receiver.close()
            plc.stop()
            broker.stop()
    assert rc == 0, log_path.read_text()[-3000:]
    written = [p for p in station.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"events.jsonl", "runtime.log", "model.onnx", "line.avi"}
    assert any(p.parent.name == "evidence" for p in written)
    assert read_events(station / "events.jsonl")[0]["source"] == "line.avi"
    outputs = {"ps": ps.encode(), "cmdline": cmdline, "state.json": page_state, "page": page,
               "mqtt messages": json.dumps([m for _, m in sub.messages]).encode(),
               "webhook bodies": b"".join(c["body"] for c in receiver.calls),
               "opcua writes": repr(plc.writes).encode(), **{str(p): p.read_bytes() for p in written}}
    log_text = log_path.read_text()
    assert "DEBUG" in log_text or " D " in log_text  # the debug log was on: libraries had every chance
    for name, secret in SECRETS.items():
        for where, data in outputs.items():
            assert secret.encode() not in data, f"the {name} secret appears in {where}"


def test_log_filter_masks_registered_secrets(tmp_path):
    """Defence in depth: a library that logs a secret at debug level shows *** instead."""
    import logging

    from aaclip.runtime.credentials import read_secret

    handler = logging.FileHandler(tmp_path / "log.txt")
    root = logging.getLogger()
    root.addHandler(handler)
    old_level = root.level
    root.setLevel(logging.DEBUG)
    try:
        f = tmp_path / "pw"
        f.write_text("s3cr3t-Value-99\n")
        f.chmod(0o600)
        assert read_secret("test password", f, None) == "s3cr3t-Value-99"
        logging.getLogger("some.library").debug("connecting with password=%s to %s", "s3cr3t-Value-99", "host")
        try:
            raise ValueError("bad password s3cr3t-Value-99")
        except ValueError:
            logging.getLogger("some.library").exception("failed")
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)
        handler.close()
    text = (tmp_path / "log.txt").read_text()
    assert "connecting with password=*** to host" in text and "bad password ***" in text
    assert "s3cr3t-Value-99" not in text


def test_station_file_sections_round_trip_and_hold_no_secret(tmp_path):
    """The flags -> --print-config -> --config round trip carries the access and secret-file keys of
    [outputs.http], [outputs.mqtt], [outputs.webhook] and [outputs.opcua], never a secret; relative files in the
    station file are taken from its folder; a password in a URL of the file is refused like on the command line."""
    from aaclip.runtime.cli import main
    from aaclip.runtime.station import load_station
    from click.testing import CliRunner

    art = make_onnx_artifact(tmp_path)
    for name, value in SECRETS.items():
        (tmp_path / f"{name}.secret").write_text(value + "\n")
    args = [str(art), "--camera", "0", "--http", "0.0.0.0:8443", "--http-token-file", str(tmp_path / "http.secret"),
            "--max-viewers", "4", "--healthz-auth", "--http-timeout", "5",
            "--mqtt", "mqtt://station@broker/factory", "--mqtt-password-file", str(tmp_path / "mqtt.secret"),
            "--webhook", "https://mes/hook", "--webhook-secret-file", str(tmp_path / "webhook.secret"),
            "--opcua", "opcua://plc:4840/line1", "--opcua-mode", "decisions", "--opcua-username", "station",
            "--opcua-password-file", str(tmp_path / "opcua.secret"), "--print-config"]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 0, r.output
    for secret in SECRETS.values():
        assert secret not in r.stdout
    station_file = tmp_path / "station.toml"
    station_file.write_text(r.stdout)
    out = load_station(station_file).outputs
    assert (out.http.listen, out.http.auth.token_file, out.http.max_viewers, out.http.healthz_open, out.http.timeout) == \
        ("0.0.0.0:8443", tmp_path / "http.secret", 4, False, 5.0)
    assert (out.mqtt.url, out.mqtt.password_file) == ("mqtt://station@broker/factory", tmp_path / "mqtt.secret")
    assert out.webhook.secret_file == tmp_path / "webhook.secret"
    assert (out.opcua.endpoint, out.opcua.mode, out.opcua.username, out.opcua.password_file) == \
        ("opcua://plc:4840/line1", "decisions", "station", tmp_path / "opcua.secret")
    r2 = CliRunner().invoke(main, ["--config", str(station_file), "--print-config"])
    assert r2.exit_code == 0 and r2.stdout == r.stdout  # the printed station reproduces itself

    relative = tmp_path / "site"
    relative.mkdir()
    (relative / "token").write_text("a-token-of-some-length\n")
    (relative / "station.toml").write_text(f'[artifacts.m]\npath = "{art}"\n[[cameras]]\nsource = "0"\n'
                                           f'[outputs.http]\nlisten = ":0"\n[outputs.http.auth]\ntoken_file = "token"\n'
                                           f'[outputs.mqtt]\nurl = "mqtt://op:pw@broker/x"\n')
    loaded = load_station(relative / "station.toml")
    assert loaded.outputs.http.auth.token_file == relative / "token"
    video = write_video(tmp_path / "v.avi", 2)
    r3 = CliRunner().invoke(main, ["--config", str(relative / "station.toml"), "--camera", str(video)])
    assert r3.exit_code == 2 and "contains a password" in r3.stderr and "pw@" not in r3.stderr, r3.output


def test_security_doc_station_example_reads(tmp_path):
    from aaclip.runtime.http_auth import parse_users
    from aaclip.runtime.station import load_station

    text = re.search(r"```toml\n(.*?)```", DOC.read_text(), re.S).group(1)
    art = make_onnx_artifact(tmp_path)
    (tmp_path / "station.toml").write_text(f'[artifacts.m]\npath = "{art.name}"\n[[cameras]]\nsource = "0"\n' + text)
    out = load_station(tmp_path / "station.toml").outputs
    assert out.http.auth.users_file == tmp_path / "secrets" / "users" and out.http.listen == "0.0.0.0:8080"
    assert parse_users(out.http.auth.users, "x") == {"anna": out.http.auth.users[0].split(":", 1)[1]}
    assert out.opcua.security == "Basic256Sha256" and out.opcua.password_file == tmp_path / "secrets" / "opcua.pw"
    assert out.webhook.secret_file == tmp_path / "secrets" / "webhook.key"
