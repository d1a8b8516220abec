"""Access control of the line view: 401 without credentials and 200 with a bearer token or a user's password
for the page, the stream, a thumbnail and /metrics (over plain HTTP and over HTTPS with a certificate made by
the openssl CLI), /healthz open by choice; the bind rules; the viewer and connection caps; the password hashes
and ``aaclip-runtime --hash-password``."""
import base64
import http.client
import logging
import shutil
import socket
import ssl
import subprocess

import pytest
from aaclip.contract.errors import UserError
from aaclip.runtime.http_auth import HttpAuth, hash_password, load_users, parse_hash, verify_password
from aaclip.runtime.station.outputs import HttpAuthSettings, HttpOutput
from aaclip.runtime.web import BOUNDARY, HttpAccess, LineView
from line_fixtures import Feeder, ScriptedCamera, needs_prometheus, wait_until
from test_line_web import running_loop

TOKEN = "tok-5b0d7c1e9a"
PASSWORD = "line-lead-pass-41"
needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


def self_signed(tmp_path):
    """A test certificate for 127.0.0.1 made with the openssl CLI (as an admin would)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "2", "-subj", "/CN=aaclip-test", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def request(view, path, headers=None, cafile=None, read=True):
    """(status, headers, body) of a GET; for a stream, the body is its first part's header block."""
    if cafile is not None:
        context = ssl.create_default_context(cafile=str(cafile))
        conn = http.client.HTTPSConnection("127.0.0.1", view.port, timeout=5, context=context)
    else:
        conn = http.client.HTTPConnection("127.0.0.1", view.port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        r = conn.getresponse()
        if r.getheader("Content-Type", "").startswith("multipart/"):
            body = r.fp.readline()  # the first part's boundary: frames flow
        else:
            body = r.read() if read else b""
        return r.status, dict(r.getheaders()), body
    finally:
        conn.close()


def basic(user, password):
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


@needs_prometheus
@pytest.mark.parametrize("tls", [False, pytest.param(True, marks=needs_openssl)], ids=["http", "https"])
def test_401_without_credentials_200_with_token_or_password(tmp_path, tls):
    token_file, users_file = tmp_path / "token", tmp_path / "users"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    users_file.write_text(f"# line leads\nanna:{hash_password(PASSWORD)}\n")
    cert, key = self_signed(tmp_path) if tls else (None, None)
    view = LineView.from_options(HttpOutput(listen="127.0.0.1:0", auth=HttpAuthSettings(token_file=token_file,
                                             users_file=users_file), tls_cert=cert, tls_key=key, view_fps=20))
    assert view.url.startswith("https://" if tls else "http://")
    camera = ScriptedCamera()
    feeder = Feeder(camera, fps=20)
    with running_loop(tmp_path, camera, [view]):
        feeder.start()
        feeder.defect(1)
        wait_until(lambda: view.cameras and view.cameras[0].alarms == 1, 10.0, "an alarm (for its thumbnail)")
        paths = ["/", "/cam/0", "/cam/0/state.json", "/cam/0/stream.mjpg", "/cam/0/alarm/1.jpg", "/metrics"]
        get = lambda path, headers=None: request(view, path, headers, cert)
        for path in paths:
            status, headers, _ = get(path)
            assert status == 401, path
            assert headers["WWW-Authenticate"].startswith('Basic realm="aaclip line view"') and "Bearer" in \
                headers["WWW-Authenticate"]
            for wrong in ({"Authorization": f"Bearer {TOKEN}x"}, basic("anna", PASSWORD + "x"),
                          basic("bob", PASSWORD), {"Authorization": TOKEN}):
                assert get(path, wrong)[0] == 401, (path, wrong)
            for right in ({"Authorization": f"Bearer {TOKEN}"}, basic("anna", PASSWORD)):
                status, headers, body = get(path, right)
                assert status == (302 if path == "/" else 200), (path, right)
            if path == "/cam/0/stream.mjpg":
                assert body == f"--{BOUNDARY}\r\n".encode()
            if path == "/cam/0/alarm/1.jpg":
                assert body[:2] == b"\xff\xd8"  # a JPEG
            if path == "/metrics":
                assert b"aaclip_frames_inspected_total" in body
        status, _, body = get("/healthz")  # open by default: a liveness probe needs no secret
        assert status == 200 and b'"healthy":true' in body
        if tls:  # nothing is served in clear on the HTTPS port
            with pytest.raises((http.client.HTTPException, ConnectionError, OSError)):
                status = request(view, "/healthz")[0]
                assert status != 200
    feeder.halt.set()


def test_healthz_behind_credentials_when_asked(tmp_path):
    view = LineView("127.0.0.1:0", access=HttpAccess(auth=HttpAuth(token=TOKEN), healthz_open=False))
    try:
        assert request(view, "/healthz")[0] == 401
        assert request(view, "/healthz", {"Authorization": f"Bearer {TOKEN}"})[0] == 503  # let in; loop not started
    finally:
        view.close()


def test_bind_rules(caplog):
    with pytest.raises(UserError, match="listening beyond this machine without authentication"):
        LineView("0.0.0.0:0")
    view = LineView(":0")  # a bare port: loopback only
    try:
        assert view.host == "127.0.0.1"
    finally:
        view.close()
    with caplog.at_level(logging.WARNING, "aaclip.runtime.web"):
        view = LineView("0.0.0.0:0", access=HttpAccess(allow_anonymous=True))
        view.close()
        assert "without authentication (--http-allow-anonymous)" in caplog.text
        caplog.clear()
        view = LineView("0.0.0.0:0", access=HttpAccess(auth=HttpAuth(token=TOKEN)))
        view.close()
        assert "unencrypted" in caplog.text  # credentials without TLS beyond loopback: said


def test_viewer_cap_503_and_connection_cap_and_idle_timeout(tmp_path):
    camera = ScriptedCamera()
    view = LineView("127.0.0.1:0", view_fps=20, access=HttpAccess(max_viewers=2, max_connections=4))
    feeder = Feeder(camera, fps=20)
    with running_loop(tmp_path, camera, [view]):
        feeder.start()
        wait_until(lambda: view.cameras and view.cameras[0].inspected > 2, 5.0, "frames")
        streams = [http.client.HTTPConnection("127.0.0.1", view.port, timeout=5) for _ in range(3)]
        statuses = []
        for conn in streams:
            conn.request("GET", "/cam/0/stream.mjpg")
            r = conn.getresponse()
            statuses.append(r.status)
            if r.status == 503:
                assert r.getheader("Retry-After") == "5" and b"at most 2 streams" in r.read()
        assert statuses == [200, 200, 503] and view.server.viewers == 2
        for conn in streams:
            conn.close()
        wait_until(lambda: view.server.viewers == 0, 5.0, "the viewers to leave")
        assert request(view, "/cam/0/stream.mjpg")[0] == 200  # room again

        wait_until(lambda: view.server.connections == 0, 5.0, "no connections")
        view.access.timeout = 60.0  # the idle ones stay while the cap is checked, however slow this machine
        idle = [socket.create_connection(("127.0.0.1", view.port)) for _ in range(4)]  # send nothing
        wait_until(lambda: view.server.connections == 4, 5.0, "four idle connections")
        extra = socket.create_connection(("127.0.0.1", view.port), timeout=5)
        assert extra.recv(100).startswith(b"HTTP/1.1 503")  # no thread for it: answered and closed at once
        extra.close()
        for s in idle:
            s.close()
        wait_until(lambda: view.server.connections == 0, 5.0, "the idle clients to leave")
        view.access.timeout = 0.5  # a client that sends nothing is dropped by the request timeout
        silent = socket.create_connection(("127.0.0.1", view.port), timeout=10)
        assert silent.recv(100) == b""  # closed by the server (a socket.timeout here would fail the test)
        silent.close()
        wait_until(lambda: view.server.connections == 0, 5.0, "the silent connection to be dropped")
        assert request(view, "/healthz")[0] == 200
    feeder.halt.set()


def test_password_hashes():
    stored = hash_password(PASSWORD)
    n, r, p, salt, digest = parse_hash(stored)
    assert (n, r, p, len(salt), len(digest)) == (2 ** 14, 8, 1, 16, 32) and PASSWORD not in stored
    assert verify_password(PASSWORD, stored) and not verify_password(PASSWORD + " ", stored)
    assert hash_password(PASSWORD) != stored  # a new salt each time
    # a known vector: the stored form is hashlib.scrypt's output with the stored parameters
    import hashlib

    fixed = hash_password("pw", salt=b"0123456789abcdef", n=16, r=1, p=1)
    assert fixed.split("$")[-1] == base64.b64encode(hashlib.scrypt(b"pw", salt=b"0123456789abcdef", n=16, r=1, p=1,
                                                                   dklen=32)).decode()
    auth = HttpAuth(users={"anna": stored})
    header = basic("anna", PASSWORD)["Authorization"]
    assert auth.check(header) == "anna" and auth.check(header) == "anna"  # the second from the cache
    assert auth.check(basic("anna", "nope")["Authorization"]) is None and auth.check(None) is None
    for bad in ("md5$abc", "scrypt$3$8$1$AAAA$AAAA", "scrypt$16$8$1$!!$AAAA"):
        with pytest.raises(ValueError):
            parse_hash(bad)


def test_users_file_errors(tmp_path):
    f = tmp_path / "users"
    f.write_text("anna:not-a-hash\n")
    with pytest.raises(UserError, match="user anna: not a scrypt"):
        load_users(f)
    f.write_text("just-a-name\n")
    with pytest.raises(UserError, match="line 1: give NAME:HASH"):
        load_users(f)


def test_hash_password_command():
    from aaclip.runtime.cli import main
    from click.testing import CliRunner

    r = CliRunner().invoke(main, ["--hash-password"], input=PASSWORD + "\n")
    assert r.exit_code == 0, r.output
    stored = r.stdout.strip()
    assert verify_password(PASSWORD, stored) and PASSWORD not in r.output
    r = CliRunner().invoke(main, ["--hash-password"], input="\n")
    assert r.exit_code == 2 and "error: an empty password" in r.stderr


def test_write_routes_refuse_cross_site_requests():
    """For routes that change something (i25's review POSTs): a browser's request from another site's page is
    refused even though the browser attaches the saved password; the station's own page passes."""
    from aaclip.runtime.http_auth import cross_site

    own = {"Host": "station-7:8080", "Origin": "https://station-7:8080"}
    assert not cross_site(own) and not cross_site({"Host": "station-7:8080"})  # curl, scripts: no Origin
    assert not cross_site({"Host": "station-7:8080", "Referer": "https://station-7:8080/cam/0"})
    assert cross_site({"Host": "station-7:8080", "Origin": "https://evil.example"})
    assert cross_site({"Host": "station-7:8080", "Referer": "http://evil.example/page"})
    assert cross_site({"Host": "station-7:8080", "Origin": "null"})  # sandboxed or file:// pages


def test_users_inline_in_the_station_section(tmp_path):
    """[outputs.http.auth] users = ["NAME:HASH"]: the hashes live in the station file."""
    view = LineView.from_options(HttpOutput(listen="127.0.0.1:0", healthz_open=False,
                                            auth=HttpAuthSettings(users=[f"anna:{hash_password(PASSWORD)}"])))
    try:
        assert request(view, "/healthz")[0] == 401
        assert request(view, "/healthz", basic("anna", PASSWORD + "!"))[0] == 401
        assert request(view, "/healthz", basic("anna", PASSWORD))[0] == 503  # let in; the loop has not started
    finally:
        view.close()
    with pytest.raises(UserError, match="entry 1: give NAME:HASH"):
        LineView.from_options(HttpOutput(listen="127.0.0.1:0", auth=HttpAuthSettings(users=[PASSWORD])))
