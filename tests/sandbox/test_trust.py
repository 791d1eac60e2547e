"""Project tether.toml files apply only when trusted: a sandbox that writes one cannot weaken
the next run, whichever door (CLI, Python, API, warm pool, named sandbox) that run comes by."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from tether.errors import ConfigError, UsageError
from tether.sandbox import named, runner, trust

from .sandbox_service_fixtures import TOKEN, start_server

pytestmark = pytest.mark.timeout(90)

# what a hostile run plants: every key that would widen the next run
PLANT = ("printf '[sandbox]\\nnetwork = \"full\"\\nlandlock = false\\n"
         "env = [\"PLANTED_SECRET\"]\\nmounts = [\"%s:/stolen:ro\"]\\n' > tether.toml")
# what the next run reports: the secret if it got it, its network interfaces, its Landlock
PROBE = ["sh", "-c", "echo secret=$PLANTED_SECRET; tail -n +3 /proc/net/dev | cut -d: -f1; "
         "ls /stolen 2>&1 | head -1; touch /dev/shm/x 2>&1 && touch /usr/x 2>&1; true"]


@pytest.fixture
def secret_env(monkeypatch):
    monkeypatch.setenv("PLANTED_SECRET", "s3cr3t")


def _plant(workspace: Path, host_home: Path) -> None:
    r = runner.run(runner.build_spec(["sh", "-c", PLANT % host_home.parent], profile="moderate",
                                     workdir=workspace))
    assert r.exit_code == 0 and (workspace / "tether.toml").exists(), r.stderr


def _not_weakened(stdout: str) -> None:
    assert "s3cr3t" not in stdout and "secret=\n" in stdout
    assert [line.strip() for line in stdout.splitlines()][1] == "lo"   # its own loopback only
    assert "No such file or directory" in stdout                        # /stolen not bound


def test_cli_a_planted_tether_toml_does_not_weaken_the_next_restrictive_run(
        cli, workspace, host_home, secret_env, monkeypatch):
    monkeypatch.chdir(workspace)
    _plant(workspace, host_home)
    r = cli("sandbox", "run", "--profile", "restrictive", "--", *PROBE)
    assert r.exit_code == 2 and r.stdout == ""
    assert r.stderr.splitlines()[0] == (f"error: {workspace}/tether.toml has a [sandbox] section "
                                        "you have not trusted: it could widen what the sandbox "
                                        "may do")
    assert r.stderr.splitlines()[1].startswith("hint: review its [sandbox] section, then "
                                               f"`tether sandbox trust {workspace}/tether.toml`")
    r = cli("sandbox", "run", "--profile", "restrictive", "--ignore-project-config", "--",
            *PROBE)
    assert r.exit_code == 0, r.stderr
    _not_weakened(r.stdout)


def test_a_trusted_tether_toml_cannot_be_rewritten_by_a_run(cli, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    (workspace / "tether.toml").write_text("[sandbox]\npids = 100\n")
    r = cli("sandbox", "trust")
    assert r.exit_code == 0 and r.stdout.startswith(f"trusted {workspace}/tether.toml"), r.stderr
    r = cli("sandbox", "run", "--", "sh", "-c", "echo 'network = \"full\"' >> tether.toml; "
                                                "mv tether.toml t.old; rm -f tether.toml; ls")
    assert r.exit_code == 0, r.stderr
    assert (workspace / "tether.toml").read_text() == "[sandbox]\npids = 100\n"
    assert not (workspace / "t.old").exists()


def test_a_tether_toml_planted_below_a_trusted_one_is_refused(workspace, host_home, secret_env,
                                                              tmp_path):
    # the trusted file sits above the workspace, out of the sandbox's reach; the planted one
    # is nearer and would win
    (tmp_path / "tether.toml").write_text("[sandbox]\npids = 100\n")
    trust.trust(tmp_path)
    assert runner.build_spec(["true"], workdir=workspace).limits.pids == 100
    _plant(workspace, host_home)
    with pytest.raises(ConfigError, match="you have not trusted"):
        runner.sandbox_run(PROBE, profile="restrictive", workdir=workspace)


def test_trust_cli_list_revoke_and_json(cli, workspace, monkeypatch):
    (workspace / "tether.toml").write_text("[sandbox]\npids = 100\n")
    monkeypatch.chdir(workspace)
    r = cli("sandbox", "trust", "--json", str(workspace))
    record = r.json()
    assert r.exit_code == 0 and record["path"] == str(workspace / "tether.toml")
    assert len(record["sha256"]) == 64
    store = trust.store_path()
    assert oct(store.stat().st_mode & 0o777) == "0o600"
    assert json.loads(store.read_text())["v"] == 1
    assert [x["path"] for x in cli("sandbox", "trust", "--list", "--json").json()] == \
        [record["path"]]
    r = cli("sandbox", "trust", "--revoke", "tether.toml")
    assert r.exit_code == 0 and r.stdout.startswith("revoked the trust in")
    assert cli("sandbox", "trust", "--list", "--json").json() == []
    r = cli("sandbox", "trust", "missing.toml")
    assert r.exit_code == 10 and r.stderr.startswith("error: ") and "\nhint: " in r.stderr
    r = cli("sandbox", "trust", "--revoke")
    assert r.exit_code == 2 and "hint: " in r.stderr


def test_api_a_planted_tether_toml_does_not_weaken_the_next_run(isolated, api_workdir,
                                                                host_home, secret_env):
    from tether.sandbox.api import ApiSettings

    server, thread, url = start_server(ApiSettings(token=TOKEN, workdir=api_workdir))
    try:
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=60) as c:
            r = c.post("/run", json={"command": ["sh", "-c", PLANT % host_home.parent],
                                     "profile": "moderate"})
            assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
            assert (api_workdir / "tether.toml").exists()    # a cold API run writes the host
            r = c.post("/run", json={"command": PROBE, "profile": "restrictive"})
        assert r.status_code == 400, r.text
        body = r.json()
        assert body["kind"] == "ConfigError" and "not trusted" in body["error"]
        assert "tether sandbox trust" in body["hint"]
    finally:
        server.should_exit = True
        thread.join(10)


def test_pool_a_planted_tether_toml_never_reaches_the_next_run(isolated, api_workdir,
                                                               host_home, secret_env):
    import time

    from tether.sandbox.api import ApiSettings
    from tether.sandbox.schemas import RunRequest

    server, thread, url = start_server(ApiSettings(token=TOKEN, workdir=api_workdir,
                                                   pool_size=1))
    try:
        service = server.config.app.state.service
        plant = RunRequest(command=["sh", "-c", PLANT % host_home.parent], profile="moderate")
        deadline = time.monotonic() + 30
        while service.pool.ready(service.prepare(plant)) < 1:
            assert time.monotonic() < deadline, "the pool never warmed"
            time.sleep(0.02)
        with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {TOKEN}"},
                          timeout=60) as c:
            before = service.pool.stats["pooled"]
            r = c.post("/run", json=plant.model_dump(exclude_none=True))
            assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
            assert service.pool.stats["pooled"] == before + 1
            r = c.post("/run", json={"command": PROBE, "profile": "restrictive"})
        assert r.status_code == 200, r.text
        _not_weakened(r.json()["stdout"])
        assert not (api_workdir / "tether.toml").exists()
    finally:
        server.should_exit = True
        thread.join(10)


def test_a_named_sandbox_ignores_a_tether_toml_in_its_own_workspace(isolated, host_home,
                                                                    secret_env):
    named.create("box", named.RunOptions(profile="restrictive"))
    box = named.get("box")
    (box.workspace / "tether.toml").write_text('[sandbox]\nnetwork = "full"\n'
                                               'env = ["PLANTED_SECRET"]\n')
    r = named.exec_sync("box", PROBE)
    assert r.exit_code == 0, r.stderr
    out = r.stdout.decode()
    assert "s3cr3t" not in out and [x.strip() for x in out.splitlines()][1] == "lo"


def test_a_workspace_holding_the_trust_store_is_refused(isolated, monkeypatch, tmp_path):
    # TETHER_HOME inside the project: a writable run could rewrite the trust record (and read
    # the secrets file), so it is refused like the home
    project = tmp_path / "project"
    (project / ".tether").mkdir(parents=True)
    monkeypatch.setenv("TETHER_HOME", str(project / ".tether"))
    with pytest.raises(UsageError, match="refusing to expose tether's config directory"):
        runner.sandbox_run(["true"], workdir=project, profile="restrictive")
    other = tmp_path / "other"
    other.mkdir()
    assert runner.sandbox_run(["true"], workdir=other, profile="restrictive").exit_code == 0
