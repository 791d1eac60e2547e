"""The sandbox HTTP API on a real uvicorn server, driven with httpx: guard, runs, sandboxes."""

from __future__ import annotations

import json

import httpx
import pytest

from tether import errors
from tether.sandbox import audit
from tether.sandbox.api import STATUS_CODES, status_for

from .sandbox_service_fixtures import ApiServer

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(("exc", "status"), [
    (errors.UsageError("x"), 400),
    (errors.ConfigError("x"), 400),
    (errors.AlreadyExistsError("x"), 409),
    (errors.InUseError("x"), 409),
    (errors.LockedError("x"), 409),
    (errors.NotFoundError("x"), 404),
    (errors.AuthError("x"), 401),
    (errors.PermissionDeniedError("x"), 403),
    (errors.RateLimitedError("x"), 429),
    (errors.EnforcementError("x"), 500),
    (errors.TetherError("x"), 500),
], ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v))
def test_error_to_status_table(exc, status):
    assert status_for(exc) == status


def test_every_status_in_the_table_is_documented():
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "sandbox-api.md").read_text()
    for cls, status in STATUS_CODES.items():
        assert f"`{cls.__name__}`" in doc and f"| {status} " in doc


def test_health_is_open_and_everything_else_needs_the_token(api_server: ApiServer):
    with httpx.Client(base_url=api_server.url) as c:
        assert c.get("/health").json() == {"ok": True, "v": 1}
        for method, path, body in [("POST", "/run", {"command": ["true"]}),
                                   ("GET", "/sandboxes", None),
                                   ("GET", "/no-such-route", None)]:
            r = c.request(method, path, json=body)
            assert r.status_code == 401, (path, r.text)
            assert r.headers["www-authenticate"] == "Bearer"
            assert r.json()["kind"] == "AuthError"
        wrong = c.post("/run", json={"command": ["true"]},
                       headers={"Authorization": "Bearer " + api_server.token[:-1] + "X"})
        assert wrong.status_code == 401
        assert c.get("/sandboxes", headers={"Authorization": api_server.token}).status_code \
            == 401  # no "Bearer " scheme
        ok = c.post("/run", json={"command": ["true"]}, headers=api_server.headers())
        assert ok.status_code == 200 and ok.json()["exit_code"] == 0


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example"},
    {"Origin": "null"},
    {"Sec-Fetch-Site": "cross-site"},
], ids=["foreign-origin", "null-origin", "sec-fetch-cross-site"])
def test_browser_cross_origin_requests_are_refused_even_with_the_token(api_server, headers):
    with httpx.Client(base_url=api_server.url) as c:
        r = c.post("/run", json={"command": ["sh", "-c", "echo pwned > /tmp/x"]},
                   headers=api_server.headers(**headers))
    assert r.status_code == 403
    assert "refused" in r.json()["error"] and r.json()["kind"] == "PermissionDeniedError"


def test_an_allowed_origin_passes(isolated, api_workdir):
    from tether.sandbox.api import ApiSettings

    from .sandbox_service_fixtures import TOKEN, start_server

    server, thread, url = start_server(ApiSettings(
        token=TOKEN, workdir=api_workdir, allowed_origins=("http://localhost:3000",)))
    try:
        r = httpx.get(url + "/sandboxes", headers={"Authorization": f"Bearer {TOKEN}",
                                                    "Origin": "http://localhost:3000"})
        assert r.status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)


def test_bodies_over_the_limit_get_413_by_header_and_while_streaming(api_server):
    big = b"x" * (64 * 1024 + 1)
    with httpx.Client(base_url=api_server.url, headers=api_server.headers()) as c:
        c.post("/sandboxes", json={"name": "b"}).raise_for_status()
        r = c.put("/sandboxes/b/files", params={"path": "big"}, content=big)
        assert r.status_code == 413

        def chunks():  # no Content-Length: the limit must hold while reading
            for _ in range(70):
                yield b"y" * 1024

        r = c.put("/sandboxes/b/files", params={"path": "big"}, content=chunks())
        assert r.status_code == 413
        assert c.get("/sandboxes/b/files", params={"path": "big"}).status_code == 404


def test_run_returns_output_exit_code_and_is_audited(api_server):
    with httpx.Client(base_url=api_server.url, headers=api_server.headers()) as c:
        r = c.post("/run", json={"command": ["sh", "-c", "cat; echo err >&2; exit 7"],
                                 "stdin": "fed in\n"})
    body = r.json()
    assert r.status_code == 200
    assert (body["exit_code"], body["stdout"], body["stderr"]) == (7, "fed in\n", "err\n")
    assert body["encoding"] == "utf-8" and body["timed_out"] is False
    last = audit.read()[-1]
    assert (last.via, last.command, last.exit_code) == \
        ("api", ("sh", "-c", "cat; echo err >&2; exit 7"), 7)
    assert "via 127.0.0.1:" in last.who


def test_binary_output_comes_back_base64(api_server):
    with httpx.Client(base_url=api_server.url, headers=api_server.headers()) as c:
        r = c.post("/run", json={"command": ["printf", "\\377\\376"]})
    body = r.json()
    assert body["encoding"] == "base64"
    import base64

    assert base64.b64decode(body["stdout"]) == b"\xff\xfe"


def test_run_honours_the_profile_no_network(api_server):
    from .sandbox_service_fixtures import host_listener

    listener, port = host_listener()
    try:
        probe = (f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED || echo REFUSED")
        with httpx.Client(base_url=api_server.url, headers=api_server.headers()) as c:
            r = c.post("/run", json={"command": ["bash", "-c", probe], "network": "none"})
        assert "REFUSED" in r.json()["stdout"]
    finally:
        listener.close()


@pytest.mark.parametrize(("body", "status"), [
    ({"command": ["true"], "profile": "bogus"}, 400),
    ({"command": []}, 422),
    ({"command": ["true"], "no_such_option": 1}, 422),
    ({"command": ["true"], "network": "allowlist"}, 400),
    ({"command": ["cat"], "stdin_b64": "not base64!"}, 400),
], ids=["unknown-profile", "empty-command", "unknown-field", "allowlist-without-domains",
        "bad-base64-stdin"])
def test_bad_run_requests_are_refused_with_a_reason(api_server, body, status):
    with httpx.Client(base_url=api_server.url, headers=api_server.headers()) as c:
        r = c.post("/run", json=body)
    assert r.status_code == status, r.text
    assert r.json().get("error") or r.json().get("detail")


def test_stream_sends_chunks_in_order_then_exit(api_server):
    script = "echo one; sleep 0.3; echo two >&2; exit 3"
    events = []
    with httpx.Client(base_url=api_server.url, headers=api_server.headers()) as c:
        with c.stream("POST", "/run/stream", json={"command": ["sh", "-c", script]}) as r:
            assert r.headers["content-type"].startswith("text/event-stream")
            event = None
            for line in r.iter_lines():
                if line.startswith("event: "):
                    event = line[7:]
                elif line.startswith("data: "):
                    events.append((event, json.loads(line[6:])))
    import base64

    kinds = [k for k, _ in events]
    assert kinds == ["stdout", "stderr", "exit"]
    assert base64.b64decode(events[0][1]["data"]) == b"one\n"
    assert base64.b64decode(events[1][1]["data"]) == b"two\n"
    assert events[2][1]["exit_code"] == 3


def test_stream_with_bad_options_is_a_plain_http_error(api_server):
    with httpx.Client(base_url=api_server.url, headers=api_server.headers()) as c:
        r = c.post("/run/stream", json={"command": ["true"], "profile": "nope"})
    assert r.status_code == 400


def test_sandbox_lifecycle_and_files(api_server):
    with httpx.Client(base_url=api_server.url, headers=api_server.headers()) as c:
        r = c.post("/sandboxes", json={"name": "web", "profile": "restrictive"})
        assert r.status_code == 201 and r.json()["status"] == "stopped"
        assert c.post("/sandboxes", json={"name": "web"}).status_code == 409
        assert c.post("/sandboxes", json={"name": "Bad Name!"}).status_code == 422
        assert [s["name"] for s in c.get("/sandboxes").json()] == ["web"]

        assert c.put("/sandboxes/web/files", params={"path": "/workspace/in.txt"},
                     content=b"hello\n").status_code == 204
        r = c.post("/sandboxes/web/exec",
                   json={"command": ["sh", "-c", "cat in.txt; echo made > out.txt; pwd"]})
        assert r.json()["stdout"] == "hello\n/workspace\n"
        assert c.get("/sandboxes/web/files", params={"path": "out.txt"}).content == b"made\n"
        r = c.get("/sandboxes/web/files", params={"path": "/etc/passwd"})
        assert r.status_code == 400 and "writable layer" in r.json()["error"]
        assert c.get("/sandboxes/web/files", params={"path": "nothere"}).status_code == 404

        assert c.delete("/sandboxes/web").status_code == 204
        assert c.get("/sandboxes/web").status_code == 404
        assert c.post("/sandboxes/web/exec", json={"command": ["true"]}).status_code == 404


def test_start_without_a_main_command_is_a_usage_error(api_server):
    with httpx.Client(base_url=api_server.url, headers=api_server.headers()) as c:
        c.post("/sandboxes", json={"name": "idle"}).raise_for_status()
        r = c.post("/sandboxes/idle/start")
    assert r.status_code == 400 and "no main command" in r.json()["error"]


def test_openapi_lists_every_route(api_server):
    spec = httpx.get(api_server.url + "/openapi.json").json()
    assert {"/health", "/run", "/run/stream", "/sandboxes", "/sandboxes/{name}",
            "/sandboxes/{name}/exec", "/sandboxes/{name}/files"} <= set(spec["paths"])


def test_create_app_refuses_to_run_without_a_token(isolated, api_workdir):
    from tether.sandbox.api import ApiSettings, create_app

    with pytest.raises(errors.ConfigError):
        create_app(ApiSettings(token=None, workdir=api_workdir))


def test_serve_refuses_auth_none_off_loopback(isolated):
    from tether.sandbox.api import AuthPolicy, serve

    with pytest.raises(errors.UsageError, match="refused"):
        serve(host="0.0.0.0", port=0, auth=AuthPolicy.NONE, announce=lambda s: None)


def test_the_generated_token_is_stored_once_and_reused(isolated):
    from tether import secrets
    from tether.sandbox.api import TOKEN_SECRET_KEY, ensure_token

    token, generated = ensure_token()
    assert generated and len(token) >= 32
    assert secrets.get_secret(TOKEN_SECRET_KEY) == token
    assert ensure_token() == (token, False)
    rotated, generated = ensure_token(rotate=True)
    assert generated and rotated != token


def _start_serve(env, *args):
    import re
    import subprocess

    proc = subprocess.Popen(["tether", "serve", "--port", "0", *args], env=env,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    for _ in range(3):
        line = proc.stderr.readline()
        lines.append(line)
        match = re.search(r"serving the sandbox API on (http://\S+)", line)
        if match:
            return proc, match.group(1), lines
    proc.kill()
    raise AssertionError(f"tether serve did not start: {lines}")


@pytest.mark.timeout(60)
def test_tether_serve_generates_the_token_once_and_requires_it(isolated, tmp_path):
    from tether import secrets
    from tether.sandbox.api import TOKEN_SECRET_KEY

    env = {**isolated.env}
    work = tmp_path / "proj"
    work.mkdir()
    proc, url, lines = _start_serve(env, "--workdir", str(work))
    try:
        token = secrets.get_secret(TOKEN_SECRET_KEY)
        assert token and any(token in line for line in lines)  # shown on first start
        assert httpx.post(url + "/run", json={"command": ["true"]}).status_code == 401
        auth = {"Authorization": f"Bearer {token}"}
        r = httpx.post(url + "/run", json={"command": ["echo", "served"]}, headers=auth)
        assert r.json().get("stdout") == "served\n", r.text
        # its own /docs page may call it; any other origin may not
        assert httpx.get(url + "/sandboxes", headers={**auth, "Origin": url}).status_code == 200
        evil = {**auth, "Origin": url.replace("127.0.0.1", "evil.example")}
        assert httpx.get(url + "/sandboxes", headers=evil).status_code == 403
    finally:
        proc.terminate()
        proc.wait(10)
    proc, url, lines = _start_serve(env, "--workdir", str(work))
    try:
        assert not any(token in line for line in lines)  # never shown again
        assert httpx.get(url + "/sandboxes",
                         headers={"Authorization": f"Bearer {token}"}).status_code == 200
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.timeout(60)
def test_run_through_a_warm_pool_has_fresh_state(isolated, api_workdir):
    import time

    from tether.sandbox.api import ApiSettings
    from tether.sandbox.schemas import RunRequest

    from .sandbox_service_fixtures import TOKEN, start_server

    server, thread, url = start_server(ApiSettings(token=TOKEN, workdir=api_workdir,
                                                   pool_size=1))
    try:
        app_service = server.config.app.state.service
        headers = {"Authorization": f"Bearer {TOKEN}"}
        with httpx.Client(base_url=url, headers=headers) as c:
            def run(script):
                return c.post("/run", json={"command": ["sh", "-c", script]}).json()

            run("true")
            pooled_before = app_service.pool.stats["pooled"]
            outputs = []
            for script in ("echo one > /tmp/t; echo one > here; ls",
                           "cat /tmp/t here 2>&1; ls"):
                deadline = time.monotonic() + 20
                spec = app_service.prepare(RunRequest(command=["sh", "-c", script]))
                while app_service.pool.ready(spec) < 1:
                    assert time.monotonic() < deadline, "the pool never warmed"
                    time.sleep(0.02)
                outputs.append(run(script))
        assert "here" in outputs[0]["stdout"]
        assert "one" not in outputs[1]["stdout"] and "here" not in outputs[1]["stdout"].split()
        assert app_service.pool.stats["pooled"] == pooled_before + 2
        assert sorted(p.name for p in api_workdir.iterdir()) == ["README"]
    finally:
        server.should_exit = True
        thread.join(10)


def _processes_with(marker: str) -> list[str]:
    import os
    from pathlib import Path

    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found


def test_a_stream_client_that_goes_away_ends_the_run(api_server):
    import os
    import time

    marker = f"tether-api-orphan-{os.getpid()}"
    script = f"echo started; (exec -a {marker} sleep 300)"
    with httpx.Client(base_url=api_server.url, headers=api_server.headers()) as c:
        with c.stream("POST", "/run/stream", json={"command": ["bash", "-c", script]}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):  # `echo` ran; the sleep starts right after
                    deadline = time.monotonic() + 10
                    while not _processes_with(marker):
                        assert time.monotonic() < deadline, "the sandboxed sleep never started"
                        time.sleep(0.05)
                    break  # leaving the stream closes the connection: the client hangs up
    # the client has hung up
    deadline = time.monotonic() + 10
    while _processes_with(marker):
        assert time.monotonic() < deadline, "the run outlived its client"
        time.sleep(0.1)
    while not audit.read() or audit.read()[-1].error is None:
        assert time.monotonic() < deadline, "the cancelled run was not audited"
        time.sleep(0.1)
    assert "cancelled" in audit.read()[-1].error


def test_a_flooding_run_whose_client_hangs_up_is_killed_without_wedging_the_server(api_server):
    import os
    import time

    marker = f"tether-api-flood-{os.getpid()}"
    with httpx.Client(base_url=api_server.url, headers=api_server.headers()) as c:
        with c.stream("POST", "/run/stream",
                      json={"command": ["bash", "-c", f"(exec -a {marker} yes)"]}) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    break  # the server's queue fills up behind us; hang up
    deadline = time.monotonic() + 15
    while _processes_with(marker):
        assert time.monotonic() < deadline, "the flooding run outlived its client"
        time.sleep(0.1)
    # the run's thread finished its cleanup (a wedged output relay would block it forever,
    # and the cancelled run would never be audited)
    while not audit.read() or "cancelled" not in (audit.read()[-1].error or ""):
        assert time.monotonic() < deadline, "the cancelled run never finished its cleanup"
        time.sleep(0.1)
    assert httpx.get(api_server.url + "/health", timeout=5).status_code == 200


def test_a_workspace_the_runner_refuses_fails_at_startup(isolated):
    from tether.sandbox.api import ApiSettings, create_app

    with pytest.raises(errors.UsageError, match="home directory"):
        create_app(ApiSettings(token="t", workdir=isolated.home.parent))


def test_start_logs_and_stop_a_main_command_over_http(api_server):
    import time

    with httpx.Client(base_url=api_server.url, headers=api_server.headers()) as c:
        c.post("/sandboxes", json={"name": "svc", "command": [
            "sh", "-c", "echo serving; exec sleep 60"]}).raise_for_status()
        info = c.post("/sandboxes/svc/start").json()
        assert info["status"] == "running" and info["pid"]
        deadline = time.monotonic() + 15
        while c.get("/sandboxes/svc/logs").content != b"serving\n":
            assert time.monotonic() < deadline, "no output from the main command"
            time.sleep(0.1)
        assert c.delete("/sandboxes/svc").status_code == 409  # running: not without force
        assert c.post("/sandboxes/svc/stop").json()["status"] == "stopped"
        assert c.delete("/sandboxes/svc").status_code == 204


def test_runs_past_the_limit_get_429_with_retry_after(isolated, api_workdir):
    from tether.sandbox.api import ApiSettings

    from .sandbox_service_fixtures import TOKEN, start_server

    server, thread, url = start_server(ApiSettings(token=TOKEN, workdir=api_workdir,
                                                   max_runs=1))
    headers = {"Authorization": f"Bearer {TOKEN}"}
    try:
        with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
            with c.stream("POST", "/run/stream",
                          json={"command": ["sh", "-c", "echo busy; sleep 2"]}) as r:
                lines = r.iter_lines()
                next(line for line in lines if line.startswith("data: "))
                refused = c.post("/run", json={"command": ["true"]})
                assert refused.status_code == 429
                assert refused.headers["retry-after"] == "1"
                assert refused.json()["kind"] == "RateLimitedError"
                from tether.sandbox import Client

                with Client(url, TOKEN) as sdk, pytest.raises(errors.RateLimitedError) as info:
                    sdk.run(["true"])
                assert info.value.retry_after == 1.0
                for _ in lines:
                    pass  # let the stream finish: its slot is released
            assert c.post("/run", json={"command": ["true"]}).status_code == 200
    finally:
        server.should_exit = True
        thread.join(10)
