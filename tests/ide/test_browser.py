"""A real code-server behind the real gateway, driven by headless Chromium.

One workspace per test (code-server's login limiter allows 2 wrong passwords a minute per
process, and a start costs ~1 s): the browser session test walks the whole user path in
order: refused with a wrong password, the workbench with the right one, a file, a terminal
command, the test's own extension, code-server's /proxy/<port>/, and the WebSocket that
carried all of it.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tether.ide.server import group_members

from .conftest import build_vsix, screenshot_kept_if_passing

# func_only: the first run on a machine installs code-server in a fixture (~4-5 minutes)
pytestmark = [pytest.mark.ide, pytest.mark.timeout(240, func_only=True)]
ARTIFACTS = Path(__file__).parent / "artifacts"


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def ide_processes(marker: str) -> list[int]:
    """Live pids whose command line names ``marker`` (the IDE folder of one workspace)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if marker in cmd and state != "Z":
                found.append(int(entry.name))
    return found


@pytest.fixture
def web_app():
    """A user's own web app on a loopback port (reached through /proxy/<port>/)."""
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"user app saw {self.path}".encode()
            self.send_response(200)
            self.send_header("content-type", "text/plain")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_browser_session_through_the_gateway(ide_env, chromium, tmp_path, web_app,
                                              monkeypatch):
    ws_dir = tmp_path / "project"
    ws_dir.mkdir()
    (ws_dir / "hello.py").write_text("print('hello from the workspace')\n")
    marker = tmp_path / "extension-activated.txt"
    vsix = build_vsix(tmp_path / "marker.vsix", marker)
    monkeypatch.setenv("TETHER_IDE_PASSWORD", "right-password-for-tests")

    with screenshot_kept_if_passing(ARTIFACTS / "workbench.png", tmp_path) as shots:
        _browser_session(ws_dir, vsix, marker, chromium, tmp_path, web_app, shots)


def _browser_session(ws_dir, vsix, marker, chromium, tmp_path, web_app, shots) -> None:
    import tether

    handle = tether.up(ws_dir, tunnel="local", ide=True, ide_extensions=(str(vsix),))
    page = None
    try:
        ide = handle.info["ide"]
        url = ide["url"]
        assert url == handle.info["local_url"] + "/"  # the gateway, not code-server's port
        assert ide["upstream"] != handle.info["local_url"]
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+", ide["upstream"])
        workspace = handle._workspace
        pgid = workspace.ide.server.proc.pid
        runtime_dir = workspace.ide.server.runtime_dir
        tmp_sockets_before = set(Path("/tmp").glob("vscode-*.sock"))

        page = chromium.new_page(viewport={"width": 1280, "height": 800})
        sockets = []
        frames = {"received": 0}

        def on_socket(ws):
            sockets.append(ws)
            ws.on("framereceived", lambda _: frames.__setitem__("received",
                                                                frames["received"] + 1))

        page.on("websocket", on_socket)

        # a wrong password is refused: the login form comes back with an error
        page.goto(url)
        page.wait_for_selector("input[type=password]")
        assert "/login" in page.url
        page.fill("input[type=password]", "not-the-password")
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_selector("text=/incorrect password/i", timeout=15_000)
        assert page.query_selector(".monaco-workbench") is None

        # the right one reaches the workbench
        page.fill("input[type=password]", "right-password-for-tests")
        page.click("button[type=submit], input[type=submit]")
        page.wait_for_selector(".monaco-workbench", timeout=90_000)
        assert page.url.startswith(url)

        # the test's own .vsix was installed at start and activates in the session
        wait_for(marker.exists, 60, "the extension's activation marker")
        assert marker.read_text().startswith("activated in pid ")

        # a file opens from the workspace (quick open)
        page.wait_for_selector(".explorer-folders-view, .monaco-list", timeout=30_000)
        page.keyboard.press("Control+P")
        page.wait_for_selector(".quick-input-widget input", timeout=15_000)
        page.keyboard.type("hello.py")
        page.click(".quick-input-list .monaco-list-row:has-text('hello.py')", timeout=15_000)
        page.wait_for_selector(".tab[aria-label*='hello.py']", timeout=15_000)
        page.wait_for_selector(".view-lines:has-text('hello from the workspace')",
                               timeout=15_000)

        # a terminal command runs on the host, in the workspace, with the user's environment
        page.keyboard.press("Control+Backquote")
        page.wait_for_selector(".terminal-wrapper .xterm", timeout=30_000)
        page.click(".terminal-wrapper .xterm")
        time.sleep(1.0)  # the shell prints its prompt before it reads input
        page.keyboard.type("env > term-env.txt; pwd > ran-here.txt\n")
        done = wait_for(lambda: (ws_dir / "ran-here.txt").exists()
                        and (ws_dir / "ran-here.txt").read_text(), 30, "the terminal command")
        assert done.strip() == str(ws_dir)
        env = dict(line.split("=", 1) for line in
                   (ws_dir / "term-env.txt").read_text().splitlines() if "=" in line)
        assert "HASHED_PASSWORD" not in env and "PASSWORD" not in env
        assert "right-password-for-tests" not in (ws_dir / "term-env.txt").read_text()
        assert env.get("XDG_CONFIG_HOME") == os.environ["XDG_CONFIG_HOME"]

        # kept as tests/ide/artifacts/workbench.png only once every check below passed
        shots["png"] = page.screenshot()

        # the workbench WebSocket went through the gateway and stayed up all along
        through_gateway = [s for s in sockets
                           if s.url.startswith(url.replace("http", "ws", 1))]
        assert through_gateway, [s.url for s in sockets]
        open_now = [s for s in through_gateway if not s.is_closed()]
        assert open_now, "every WebSocket through the gateway closed during the session"
        assert frames["received"] > 10

        # the user's own web app through code-server's /proxy/<port>/, via the gateway
        response = page.goto(f"{url}proxy/{web_app}/some/page?x=1")
        assert response is not None and response.status == 200
        assert "user app saw /some/page?x=1" in page.content()

        # password never reached code-server's argv or its log
        cmdlines = [Path(f"/proc/{p}/cmdline").read_bytes() for p in group_members(pgid)]
        assert not any(b"right-password-for-tests" in c for c in cmdlines)
        log = workspace.ide.server.layout.log.read_text()
        assert "right-password-for-tests" not in log
        members = group_members(pgid)
        assert len(members) >= 3  # server, extension host, pty host / shell
        assert list(runtime_dir.glob("vscode-ipc-*.sock"))  # VS Code's sockets live here
    except BaseException:
        if page is not None:  # what the browser showed, for the failure report
            page.screenshot(path=str(tmp_path / "failure.png"))
            print(f"screenshot at failure: {tmp_path / 'failure.png'}")
        raise
    finally:
        handle.stop()
    # stopping `up` stops the whole group: no stragglers, no sockets left behind
    wait_for(lambda: not group_members(pgid), 10, "code-server's process group to exit")
    assert not runtime_dir.exists()
    assert set(Path("/tmp").glob("vscode-*.sock")) <= tmp_sockets_before


def test_up_ide_cli_detached_then_down(ide_env, cli, tmp_path):
    ws_dir = tmp_path / "project"
    ws_dir.mkdir()
    r = cli("up", str(ws_dir), "--ide", "--detach", "--show-password", "--idle-timeout",
            "30m", "--json")
    assert r.exit_code == 0, r.stderr
    info = r.json()
    try:
        ide = info["ide"]
        shown = ide["password"]
        assert ide["password_generated"] and len(shown) == 23
        assert cli("ide", "password", "--json").json()["password"] == shown
        ide_dir = os.environ["TETHER_HOME"]  # every IDE path of this test lives under it
        base = ide["url"]
        # code-server answers /login through the gateway; the right password gets a cookie
        assert httpx.get(base + "login").status_code == 200
        wrong = httpx.post(base + "login", data={"password": "wrong-password-x"})
        assert wrong.status_code == 200 and "password" in wrong.text.lower()
        right = httpx.post(base + "login", data={"password": shown})
        assert right.status_code == 302 and "code-server-session" in right.headers.get(
            "set-cookie", "")
        pids = ide_processes(ide_dir)
        assert pids, "code-server is not running"
        argv = [Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0") for p in pids]
        assert any(b"--idle-timeout-seconds" in a and b"1800" in a for a in argv)
        assert all(shown.encode() not in b"".join(a) for a in argv)
    finally:
        down = cli("down", "--json")
    assert down.exit_code == 0, down.stderr
    wait_for(lambda: not ide_processes(ide_dir), 10, "code-server to stop after `tether down`")
    assert json.loads(down.stdout)["stopped"]


def test_gateway_origins_and_auth(ide_env, tmp_path, web_app, monkeypatch):
    """WebSockets through the gateway work for its own origin only; everything needs login."""
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    import tether

    monkeypatch.setenv("TETHER_IDE_PASSWORD", "origin-test-password")
    ws_dir = tmp_path / "project"
    ws_dir.mkdir()
    with tether.up(ws_dir, tunnel="local", ide=True) as handle:
        gw = handle.info["local_url"]
        # not logged in: the IDE and the user's app behind /proxy/ are both closed
        assert httpx.get(gw + "/").status_code == 302
        anon = httpx.get(f"{gw}/proxy/{web_app}/x")
        assert anon.status_code != 200 and "user app saw" not in anon.text
        login = httpx.post(gw + "/login", data={"password": "origin-test-password"})
        assert login.status_code == 302
        cookie = login.headers["set-cookie"].split(";")[0]
        app = httpx.get(f"{gw}/proxy/{web_app}/x", headers={"cookie": cookie})
        assert app.status_code == 200 and app.text == "user app saw /x"
        # someone else logging in lets nobody else in (the gateway keeps no cookies)
        stranger = httpx.get(f"{gw}/?folder={ws_dir}")
        assert stranger.status_code == 302 and "login" in stranger.headers["location"]

        url = gw.replace("http", "ws", 1) + "/?type=Management&reconnectionToken=t1" \
            "&reconnection=false&skipWebSocketFrames=false"
        with connect(url, additional_headers={"Cookie": cookie, "Origin": gw},
                     open_timeout=10) as sock:
            assert sock.protocol.state.name == "OPEN"
        with pytest.raises(InvalidStatus) as refused:
            connect(url, additional_headers={"Cookie": cookie,
                                             "Origin": "https://evil.example"},
                    open_timeout=10)
        assert refused.value.response.status_code == 403

        # code-server's own login limiter works through the gateway: after a burst of 14
        # failures (12/hour + 2/minute buckets) it refuses every attempt, the right one too
        for attempt in range(1, 20):
            text = httpx.post(gw + "/login", data={"password": f"guess-{attempt}-xx"}).text
            if "rate limit" in text.lower():
                break
            assert "incorrect password" in text.lower()
        assert attempt == 15
        locked = httpx.post(gw + "/login", data={"password": "origin-test-password"})
        assert locked.status_code == 200 and "rate limit" in locked.text.lower()


def test_new_tunnel_url_is_trusted_after_a_tunnel_restart(ide_env, tmp_path, monkeypatch):
    """A restarted tunnel has a new host: the IDE must accept WebSockets from it."""
    import signal

    from websockets.sync.client import connect

    from tests.host.conftest import RelayTunnel
    from tether.host.workspace import UpOptions, Workspace

    monkeypatch.setenv("TETHER_IDE_PASSWORD", "relay-test-password")
    ws_dir = tmp_path / "project"
    ws_dir.mkdir()
    messages: list[str] = []
    workspace = Workspace(UpOptions(directory=ws_dir, ide=True, supervise_interval_s=0.1),
                          announce=messages.append, tunnel=RelayTunnel(0))
    workspace.start()
    try:
        def websocket_opens(base: str) -> bool:
            login = httpx.post(base + "/login", data={"password": "relay-test-password"})
            assert "set-cookie" in login.headers, (login.status_code, login.headers)
            cookie = login.headers["set-cookie"].split(";")[0]
            url = base.replace("http", "ws", 1) + "/?type=Management&reconnectionToken=r" \
                "&reconnection=false&skipWebSocketFrames=false"
            with connect(url, additional_headers={"Cookie": cookie, "Origin": base},
                         open_timeout=10):
                return True

        first_url, first_pid = workspace.url, workspace.ide.server.proc.pid
        assert first_url != workspace.local_url and websocket_opens(first_url)
        os.kill(workspace.supervisor.tunnel.proc.pid, signal.SIGKILL)
        # announced after the IDE restarted for the new URL
        wait_for(lambda: any("new URL" in m for m in messages), 30, "the tunnel restart")
        assert workspace.url != first_url and workspace.ide.server.proc.pid != first_pid
        assert websocket_opens(workspace.url)
        wait_for(lambda: not group_members(first_pid), 10, "the old code-server to exit")
    finally:
        workspace.stop()


def test_ide_install_is_instant_when_cached(ide_env, cli):
    r = cli("ide", "install", "--json")
    assert r.exit_code == 0, r.stderr
    data = r.json()
    assert data["installed"] is False and data["duration_s"] < 2
    assert data["code_server"]["source"] == "tools"
    assert data["code_server"]["node"].endswith("node-24/bin/node")
    out = subprocess.run([*data["code_server"]["argv"], "--version"], capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert out.splitlines()[-1].startswith(data["version"] + " ")


def test_code_server_left_by_a_crashed_up_is_stopped_at_the_next_start(ide_env, tmp_path):
    from tether.ide.install import require
    from tether.ide.password import hash_password
    from tether.ide.server import IdeOptions, IdeServer

    ws_dir = tmp_path / "project"
    ws_dir.mkdir()
    options = IdeOptions(workspace=ws_dir, root=tmp_path / "ide")
    hashed = hash_password("crash-test-password")
    first = IdeServer(require(), options, hashed).start()
    pgid, runtime_dir = first.proc.pid, first.runtime_dir
    first.proc = first.runtime_dir = None  # its owner was SIGKILLed: nobody stops it
    assert group_members(pgid) and runtime_dir.is_dir()
    second = IdeServer(require(), options, hashed).start()
    try:
        wait_for(lambda: not group_members(pgid), 10, "the stale code-server to stop")
        assert not runtime_dir.exists()
        assert httpx.get(second.url + "/healthz").status_code == 200
    finally:
        second.stop()
    assert not (tmp_path / "ide" / "code-server.pid").exists()


def test_ctrl_c_on_foreground_up_stops_code_server(ide_env, tmp_path, tether_bin):
    import signal

    ws_dir = tmp_path / "project"
    ws_dir.mkdir()
    proc = subprocess.Popen([tether_bin, "up", str(ws_dir), "--ide", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        raw = ""
        while True:  # the JSON document ends with a "}" line
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            raw += line
            if line.startswith("}"):
                break
        ide = json.loads(raw)["ide"]
        pgid = ide["pid"]
        assert group_members(pgid)
        assert httpx.get(ide["url"] + "login").status_code == 200
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_for(lambda: not group_members(pgid), 10, "code-server to stop with `up`")
