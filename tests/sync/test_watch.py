"""Watch mode through the real sshd + gateway: both directions, a killed gateway, a killed
agent, and the session lifecycle through the real CLI (`list`, `conflicts`, `resolve`, `stop`)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from tether.sync import state
from tether.sync.engine import watch_async

from .helpers import snapshot, wait_for

pytestmark = pytest.mark.timeout(90)


async def until(check, timeout=15.0, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def has(path, text):
    return lambda: path.exists() and path.read_text() == text


async def test_watch_both_ways_and_survives_a_killed_link(ws, roots, sync_host):
    (roots.local / "seed.txt").write_text("seed")
    stop = asyncio.Event()
    task = asyncio.create_task(watch_async(ws, roots.local, str(roots.remote), stop=stop))
    try:
        await until(has(roots.remote / "seed.txt", "seed"), what="initial sync")
        (roots.local / "l.txt").write_text("from laptop")
        await until(has(roots.remote / "l.txt", "from laptop"), what="local -> remote")
        (roots.remote / "r.txt").write_text("from workspace")
        await until(has(roots.local / "r.txt", "from workspace"), what="remote -> local")

        sync_host.kill_gateway()  # the link drops mid-session
        (roots.local / "while-down.txt").write_text("queued")
        await asyncio.sleep(0.5)
        assert not (roots.remote / "while-down.txt").exists()
        await asyncio.to_thread(sync_host.ensure_gateway)  # same port: the tunnel is back
        await until(has(roots.remote / "while-down.txt", "queued"), timeout=30,
                    what="sync after reconnect")

        sid = state.session_id(ws, roots.local.resolve(), str(roots.remote))
        # the record names the new agent once the first cycle after reconnecting ended
        await until(lambda: state.pid_alive(state.load_record(sid).agent_pid or 0),
                    what="the new agent in the session record")
        agent_pid = state.load_record(sid).agent_pid
        os.kill(agent_pid, signal.SIGKILL)  # the agent dies on the workspace
        (roots.local / "after-agent.txt").write_text("again")
        await until(has(roots.remote / "after-agent.txt", "again"), timeout=30,
                    what="sync after the agent was killed")
        # the file can land before the cycle that carried it has saved the session record
        await until(lambda: state.load_record(sid).agent_pid not in (None, agent_pid),
                    what="a new agent in the session record")
        assert snapshot(roots.local) == snapshot(roots.remote)
    finally:
        stop.set()
        result = await asyncio.wait_for(task, 10)
    assert result.uploaded >= 4 and result.downloaded >= 1
    assert state.load_record(result.session).status == "stopped"


def _cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, "-m", "tether.cli.main", *args], capture_output=True,
                       text=True, timeout=60, check=False)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_cli_watch_session_list_conflicts_resolve_stop(ws, roots):
    notes = roots.local / "notes.md"
    notes.write_text("base")
    first = _cli("sync", ws, str(roots.local), str(roots.remote), "--json")
    assert json.loads(first.stdout)["uploaded"] == 1
    notes.write_text("laptop")
    (roots.remote / "notes.md").write_text("workspace")
    proc = subprocess.Popen([sys.executable, "-m", "tether.cli.main", "sync", ws,
                             str(roots.local), str(roots.remote), "--watch"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def listed() -> list:
            return json.loads(_cli("sync", "list", "--json").stdout)

        wait_for(lambda: any(s["running"] and s["conflicts"] for s in listed()), 20,
                 "the watching session to report the conflict")
        [session] = listed()
        assert session["pid"] == proc.pid and session["status"] == "watching"
        twice = _cli("sync", ws, str(roots.local), str(roots.remote), check=False)
        assert twice.returncode == 2 and "already running" in twice.stderr
        status = json.loads(_cli("sync", "status", str(roots.local), "--json").stdout)
        assert status["id"] == session["id"] and status["running"] is True
        assert status["mode"] == "two-way-safe" and status["agent_pid"] > 0
        conflicts = json.loads(_cli("sync", "conflicts", "--json").stdout)
        assert [c["path"] for c in conflicts] == ["notes.md"]
        assert conflicts[0]["local"]["kind"] == "file"

        res = json.loads(_cli("sync", "resolve", str(notes), "--keep", "remote",
                              "--json").stdout)
        assert res == {"path": "notes.md", "keep": "remote", "session": session["id"],
                       "remaining": []}
        assert notes.read_text() == "workspace"
        assert (roots.remote / "notes.md").read_text() == "workspace"

        stopped = json.loads(_cli("sync", "stop", session["id"][:6], "--json").stdout)
        assert stopped == {"stopped": [session["id"]]}
        assert proc.wait(10) == 0
        [after] = listed()
        assert after["running"] is False and after["status"] == "stopped"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_cli_one_shot_output_and_bad_input(ws, roots, cli):
    (roots.local / "x.txt").write_text("x")
    r = cli("sync", ws, str(roots.local), str(roots.remote))
    assert r.exit_code == 0, r.stderr
    assert "1 up, 0 down, 0 deleted, 0 conflicts" in r.stdout
    [rec] = cli("sync", "list", "--json").json()
    assert rec["status"] == "idle" and rec["local"] == str(roots.local.resolve())
    listed = cli("sync", "list").stdout
    assert rec["id"] in listed and "idle" in listed
    r = cli("sync", ws, str(roots.local / "missing"), "x")
    assert r.exit_code == 2 and "not a directory" in r.stderr
    r = cli("sync", ws, str(roots.local), "x", "--mode", "yolo")
    assert r.exit_code == 2 and "two-way-safe" in r.stderr
    r = cli("sync", "nohost", str(roots.local), "x")
    assert r.exit_code == 10
    r = cli("sync", "resolve", str(roots.local / "nothing"), "--keep", "local")
    assert r.exit_code == 10
    r = cli("sync", "resolve", str(roots.local / "x.txt"), "--keep", "bogus")
    assert r.exit_code == 2 and "--keep must be local, remote or both" in r.stderr
    assert "hint: e.g. tether sync resolve PATH --keep both" in r.stderr
    r = cli("sync", "stop", "--json")
    assert r.exit_code == 10 and "not running" in r.json()["error"]


def test_cli_one_shot_with_an_unresolved_conflict_exits_3(ws, roots, cli):
    notes = roots.local / "notes.md"
    notes.write_text("base")
    assert cli("sync", ws, str(roots.local), str(roots.remote)).exit_code == 0
    notes.write_text("laptop")
    (roots.remote / "notes.md").write_text("workspace")
    r = cli("sync", ws, str(roots.local), str(roots.remote))
    assert r.exit_code == 3, r.stderr
    assert "1 conflicts" in r.stdout and "incomplete: 1 unresolved conflict (exit 3)" in r.stdout
    assert "tether sync resolve PATH" in r.stdout
    r = cli("sync", ws, str(roots.local), str(roots.remote), "--json")
    assert r.exit_code == 3 and [c["path"] for c in r.json()["conflicts"]] == ["notes.md"]
    assert cli("sync", "resolve", str(notes), "--keep", "local").exit_code == 0
    r = cli("sync", ws, str(roots.local), str(roots.remote))
    assert r.exit_code == 0 and "incomplete" not in r.stdout, r.stdout


async def test_watch_falls_back_to_polling_without_a_watcher(ws, roots, monkeypatch):
    """An exhausted inotify watch limit (ENOSPC) must not stop syncing: rescans every 2 s."""
    import errno

    from tether.sync import watch

    def no_inotify(root, on_paths):
        raise OSError(errno.ENOSPC, "inotify watch limit reached")

    monkeypatch.setattr(watch, "start_observer", no_inotify)
    stop = asyncio.Event()
    task = asyncio.create_task(watch_async(ws, roots.local, str(roots.remote), stop=stop))
    try:
        sid = state.session_id(ws, roots.local.resolve(), str(roots.remote))

        def first_cycle_done() -> bool:
            try:
                return state.load_record(sid).cycles >= 1
            except Exception:  # noqa: BLE001 - not written yet
                return False

        await until(first_cycle_done, what="the first cycle")
        await asyncio.sleep(0.3)
        (roots.local / "polled.txt").write_text("found by a rescan")
        began = time.monotonic()
        await until(has(roots.remote / "polled.txt", "found by a rescan"), timeout=10,
                    what="the periodic rescan")
        assert time.monotonic() - began > 0.5  # it really waited for a rescan
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_link_killed_mid_transfer_never_shows_half_a_file(ws, roots, sync_host):
    (roots.local / "seed").write_text("s")
    stop = asyncio.Event()
    task = asyncio.create_task(watch_async(ws, roots.local, str(roots.remote), stop=stop))
    big = os.urandom(96 << 20)
    target = roots.remote / "big.bin"

    def temps() -> list:
        return [p for p in roots.remote.iterdir() if p.name.startswith(".tether-sync-")]

    try:
        await until(has(roots.remote / "seed", "s"), what="initial sync")
        (roots.local / "big.bin").write_bytes(big)
        await until(lambda: bool(temps()) or target.exists(), timeout=30,
                    what="the transfer to start")
        mid_transfer = bool(temps()) and not target.exists()
        sync_host.kill_gateway()
        assert mid_transfer  # the link really died in the middle of the file
        await asyncio.sleep(0.3)
        assert not target.exists() or target.read_bytes() == big  # whole or absent
        await asyncio.to_thread(sync_host.ensure_gateway)
        await until(lambda: target.exists() and target.stat().st_size == len(big),
                    timeout=60, what="the file after reconnecting")
        assert target.read_bytes() == big
        await until(lambda: not temps(), what="the dead agent's temp file to go")
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
