"""End to end on loopback: `tether up` (real sshd + gateway), `tether connect`, and the real
OpenSSH client, scp, rsync and git going through `tether proxy` and the WebSocket bridge."""

from __future__ import annotations

import contextlib
import filecmp
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import tether
from tether.gateway.state import HostState
from tether.link import profiles
from tether.link.connstring import ConnectionString

pytestmark = pytest.mark.timeout(120)


@dataclass
class Env:
    root: Path
    home: Path
    tether_home: Path
    workdir: Path
    env: dict[str, str]

    @property
    def ssh_config(self) -> Path:
        return self.home / ".ssh" / "config"

    def ssh(self, host: str, *command: str, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(["ssh", "-F", str(self.ssh_config), "-o", "BatchMode=yes", host,
                               *command], capture_output=True, text=True, env=self.env,
                              timeout=timeout)

    def run(self, *argv: str, timeout: float = 60, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env,
                              timeout=timeout, **kw)

    def cli(self, *args: str) -> tuple[int, str, str]:
        """The real entry point in-process (env already points at this Env)."""
        from tether.cli.main import main

        out, err, code = io.StringIO(), io.StringIO(), 0
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main(list(args))
            except SystemExit as exc:
                code = exc.code if isinstance(exc.code, int) else 0
        return code, out.getvalue(), err.getvalue()


def make_env(root: Path) -> Env:
    home, th, work = root / "home", root / "th", root / "work"
    for d in (home, th, work):
        d.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HOME": str(home), "TETHER_HOME": str(th),
           "TETHER_SECRETS_BACKEND": "file", "NO_COLOR": "1", "COLUMNS": "120",
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for key in ("SSH_AUTH_SOCK", "TETHER_DEBUG", "GIT_SSH_COMMAND"):
        env.pop(key, None)
    return Env(root, home, th, work, env)


@contextlib.contextmanager
def activated(e: Env) -> Iterator[Env]:
    with pytest.MonkeyPatch.context() as mp:
        for key in ("HOME", "TETHER_HOME", "TETHER_SECRETS_BACKEND", "NO_COLOR", "COLUMNS"):
            mp.setenv(key, e.env[key])
        mp.delenv("SSH_AUTH_SOCK", raising=False)
        yield e


@pytest.fixture(scope="module")
def host(tmp_path_factory) -> Iterator[tuple[Env, tether.HostHandle]]:
    """One workspace for the module, this machine paired with it as `lap`."""
    e = make_env(tmp_path_factory.mktemp("e2e"))
    with activated(e):
        handle = tether.up(e.workdir, connect="lap")
        try:
            yield e, handle
        finally:
            handle.stop()


def sshd_connections(e: Env) -> int:
    log = HostState().dir / "sshd.log"
    return log.read_text(errors="replace").count("Connection from")


def make_tree(root: Path) -> Path:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (root / "sub" / "deeper" / "c").write_text("gamma")
    return root


def same_tree(a: Path, b: Path) -> bool:
    cmp = filecmp.dircmp(a, b)
    if cmp.left_only or cmp.right_only or cmp.diff_files or cmp.funny_files:
        return False
    return all(same_tree(a / d, b / d) for d in cmp.common_dirs)


# -- the happy paths ----------------------------------------------------------------------


def test_up_pairs_this_machine_and_ssh_works(host) -> None:
    e, handle = host
    assert handle.info["connected"]["ssh_host"] == "tether-lap"
    text = e.ssh_config.read_text()
    assert "Host tether-lap" in text and "StrictHostKeyChecking yes" in text
    assert "HostKeyAlias tether-lap" in text and " proxy lap" in text
    r = e.ssh("tether-lap", "echo ok; echo $TETHER_WORKSPACE")
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["ok", str(e.workdir)]
    pinned = profiles.known_hosts_path("lap").read_text()
    assert pinned.startswith("tether-lap ssh-ed25519 ")


def test_scp_and_rsync_trees_both_ways(host) -> None:
    e, _ = host
    src = make_tree(e.root / "src")
    r = e.run("scp", "-F", str(e.ssh_config), "-q", "-r", str(src), f"tether-lap:{e.root}/up")
    assert r.returncode == 0, r.stderr
    assert same_tree(src, e.root / "up")
    r = e.run("scp", "-F", str(e.ssh_config), "-q", "-r", f"tether-lap:{e.root}/up",
              str(e.root / "down"))
    assert r.returncode == 0 and same_tree(src, e.root / "down")
    ssh = f"ssh -F {e.ssh_config}"
    r = e.run("rsync", "-a", "-e", ssh, f"{src}/", f"tether-lap:{e.root}/rs/")
    assert r.returncode == 0, r.stderr
    assert same_tree(src, e.root / "rs")
    r = e.run("rsync", "-a", "-e", ssh, f"tether-lap:{e.root}/rs/", f"{e.root}/rs-back/")
    assert r.returncode == 0 and same_tree(src, e.root / "rs-back")


def test_git_push_and_pull_over_the_link(host) -> None:
    e, _ = host
    bare = e.root / "remote.git"
    assert e.run("git", "init", "-q", "--bare", str(bare)).returncode == 0
    env = {**e.env, "GIT_SSH_COMMAND": f"ssh -F {e.ssh_config} -o BatchMode=yes"}
    one, two = e.root / "one", e.root / "two"
    r = subprocess.run(["git", "clone", "-q", f"tether-lap:{bare}", str(one)], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    (one / "f.txt").write_text("over the bridge\n")
    for argv in (["git", "add", "f.txt"], ["git", "commit", "-q", "-m", "c1"],
                 ["git", "push", "-q", "origin", "HEAD:main"]):
        r = subprocess.run(argv, cwd=one, env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
    r = subprocess.run(["git", "clone", "-q", "-b", "main", f"tether-lap:{bare}", str(two)],
                       env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert (two / "f.txt").read_text() == "over the bridge\n"


def test_hosts_status_and_pair_code_json(host) -> None:
    e, handle = host
    code, out, _ = e.cli("hosts", "--json")
    assert code == 0
    [row] = json.loads(out)
    assert row["name"] == "lap" and row["workspace_id"] == handle.workspace_id
    code, out, _ = e.cli("host", "status", "--json")
    status = json.loads(out)
    assert code == 0 and status["running"] and status["url"] == handle.url
    assert status["clients"] >= 1 and status["tunnel"] == "local"
    assert "access_token" not in out and "code" not in status
    code, out, _ = e.cli("host", "pair-code", "--json")
    cs = ConnectionString.decode(json.loads(out)["connection_string"])
    assert cs.workspace_id == handle.workspace_id and cs.expires_at > time.time()


# -- bad input and refusals -----------------------------------------------------------------


def test_wrong_access_token_never_reaches_sshd(host) -> None:
    e, _ = host
    good = profiles.access_token("lap")
    before = sshd_connections(e)
    profiles.set_access_token("lap", "tt_wrong")
    try:
        r = e.ssh("tether-lap", "true")
    finally:
        profiles.set_access_token("lap", good)
    assert r.returncode == 255
    assert "refused our access token" in r.stderr
    time.sleep(0.3)
    assert sshd_connections(e) == before
    assert e.ssh("tether-lap", "true").returncode == 0


def test_connect_refuses_a_different_host_key(host) -> None:
    e, handle = host
    real = ConnectionString.decode(handle.pair_code())
    forged = ConnectionString(real.url, real.workspace_id, real.pairing_code, real.expires_at,
                              "SHA256:" + "B" * 43)
    before = e.ssh_config.read_text()
    # known workspace under `lap`: the new key is refused, nothing changes
    code, out, err = e.cli("connect", forged.encode(), "--name", "lap")
    assert code == 12 and "WARNING" in err and "pinned" in err
    assert e.ssh_config.read_text() == before
    # a new name: the gateway's key does not match the string; nothing is saved
    code, out, err = e.cli("connect", forged.encode(), "--name", "evil")
    assert code == 12 and "nothing was saved" in err
    assert "tether-evil" not in e.ssh_config.read_text()
    with pytest.raises(tether.errors.NotFoundError):
        profiles.load_profile("evil")


@pytest.mark.parametrize("text,exit_code,fragment", [
    ("tether1:garbage!", 2, "malformed"),
    ("http://127.0.0.1:1", 2, "not a tether connection string"),
], ids=["garbage", "plain-url"])
def test_connect_malformed_string(host, text, exit_code, fragment) -> None:
    e, _ = host
    code, out, err = e.cli("connect", text, "--name", "x")
    assert code == exit_code and fragment in err and "hint:" in err


def test_used_and_expired_codes(host) -> None:
    e, handle = host
    text = handle.pair_code()
    code, _, err = e.cli("connect", text, "--name", "second")
    assert code == 0, err
    code, _, err = e.cli("connect", text, "--name", "third")
    assert code == 12 and "already used or has expired" in err
    state = HostState()
    old_code, expires = state.issue_code(ttl_s=60, now=int(time.time()) - 600)
    cs = ConnectionString.decode(text)
    stale = ConnectionString(cs.url, cs.workspace_id, old_code, expires, cs.host_key_fingerprint)
    code, _, err = e.cli("connect", stale.encode(), "--name", "fourth")
    assert code == 12 and "pair-code" in err
    code, out, _ = e.cli("hosts", "rm", "second", "--json")
    assert code == 0 and "tether-second" not in e.ssh_config.read_text()
    code, _, err = e.cli("hosts", "rm", "second")
    assert code == 10


def test_second_up_is_refused(host) -> None:
    e, _ = host
    code, _, err = e.cli("up", str(e.workdir))
    assert code == 11 and "already running" in err


def test_gateway_down_is_a_clear_error(host, tmp_path) -> None:
    e, handle = host
    from tether.gateway.server import bind

    sock = bind(0)
    dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()
    lap = profiles.load_profile("lap")
    profiles.save_profile(profiles.HostProfile(**{**lap.__dict__, "url": dead}))
    try:
        r = e.ssh("tether-lap", "true")
    finally:
        profiles.save_profile(lap)
    assert r.returncode == 255 and "cannot reach the gateway" in r.stderr
    cs = ConnectionString.decode(handle.pair_code())
    moved = ConnectionString(dead, cs.workspace_id, cs.pairing_code, cs.expires_at,
                             cs.host_key_fingerprint)
    code, _, err = e.cli("connect", moved.encode(), "--name", "elsewhere")
    assert code == 1 and "cannot reach the gateway" in err


def test_lost_token_pairs_again(host) -> None:
    e, handle = host
    from tether import secrets

    secrets.delete_secret(profiles.token_key("lap"))
    assert e.ssh("tether-lap", "true").returncode == 255
    code, out, err = e.cli("connect", handle.pair_code(), "--name", "lap", "--json")
    assert code == 0, err
    assert json.loads(out)["paired"] is True
    assert e.ssh("tether-lap", "true").returncode == 0
