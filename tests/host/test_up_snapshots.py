"""`tether up --restore/--autosave`: a workspace and its identity survive a wiped host.

Real sshd, gateway, OpenSSH client and snapshot stores (file:// and a moto S3 server).
"Fresh machine" = the host's state dir removed and a new workspace folder; the laptop side
(profile, pinned key, ssh config) stays, as it would on a real laptop.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

import tether
from tests.host.test_link_e2e import activated, make_env
from tests.host.test_up_process import _alive
from tether.errors import UsageError
from tether.host import persist
from tether.snapshot import api as snap
from tether.tunnels.supervisor import wait_for

pytestmark = pytest.mark.timeout(90)


def _host(e) -> Path:
    return e.tether_home / "state" / "host"


def _tags(store: str) -> set[str]:
    return {t for s in snap.list_snapshots(store) for t in s.tags}


def _up(e, tether_bin, *args):
    r = e.run(tether_bin, "up", *args, "--detach", "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _down(e, tether_bin) -> None:
    r = e.run(tether_bin, "down", "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["stopped"], r.stdout + r.stderr


def test_autosave_then_restore_on_a_fresh_host_keeps_key_and_pairing(tmp_path, tether_bin):
    e = make_env(tmp_path)
    store = f"file://{tmp_path / 'store'}"
    (e.workdir / "src").mkdir()
    (e.workdir / "src" / "main.py").write_text("print('hi')\n")
    first = _up(e, tether_bin, str(e.workdir), "--connect", "lap", "--autosave", store,
                "--restore", store)
    assert first["restore"]["restored"] == []  # first run: nothing to restore, no error
    assert set(first["restore"]["skipped"]) == {"workspace", "identity"}
    assert e.ssh("tether-lap", "true").returncode == 0
    _down(e, tether_bin)  # the final save happens before down returns
    status = json.loads(e.run(tether_bin, "host", "status", "--json").stdout)
    assert status["autosave"]["last_ok"] is True and status["autosave"]["saves"] == 1
    assert {"component:workspace", "component:identity"} <= _tags(store)
    # it holds the host's private key: a store folder tether makes is private
    assert (tmp_path / "store").stat().st_mode & 0o777 == 0o700

    # a wiped machine: no host state, an empty new folder
    shutil.rmtree(_host(e))
    fresh = tmp_path / "fresh" / "work"
    second = _up(e, tether_bin, str(fresh), "--restore", store)
    assert (fresh / "src" / "main.py").read_text() == "print('hi')\n"
    assert second["restore"]["identity"] == "installed"
    assert second["host_key_fingerprint"] == first["host_key_fingerprint"]
    assert second["workspace_id"] == first["workspace_id"]
    # only identity travels: the saved component holds no runtime file (run.json, codes)
    saved = tmp_path / "saved-identity"
    snap.pull(store, saved, ref="component:identity")
    assert sorted(p.name for p in saved.iterdir()) == sorted(persist.IDENTITY_FILES)
    assert (_host(e) / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600
    # the laptop paired with the old machine reconnects with the new string, no pairing
    r = e.run(tether_bin, "connect", second["connection_string"], "--name", "lap", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["paired"] is False
    ok = e.ssh("tether-lap", f"cat {fresh}/src/main.py")
    assert ok.returncode == 0 and ok.stdout == "print('hi')\n", ok.stderr
    _down(e, tether_bin)


def test_venv_component_restores_to_its_path_and_python_api(tmp_path):
    e = make_env(tmp_path)
    store = f"file://{tmp_path / 'store'}"
    venv = tmp_path / "venvs" / "ml"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    cfg = venv / "pyvenv.cfg"
    # recorded as made by another Python: the restore must say so, not fail
    cfg.write_text("".join("version = 3.10.99\n" if line.startswith("version") else line
                           for line in cfg.read_text().splitlines(keepends=True)))
    with activated(e):
        handle = tether.up(e.workdir, autosave=store, venvs=[venv])
        handle.stop()  # the Python handle's stop saves too
        assert "component:venv:ml" in _tags(store)
        shutil.rmtree(venv.parent)
        shutil.rmtree(_host(e))
        handle = tether.up(e.workdir, restore=store, venvs=[venv])
        try:
            restore = handle.info["restore"]
            assert "venv:ml" in restore["restored"]
            assert any("venv:ml" in w and "3.10.99" in w and "--rebuild-venv" in w
                       for w in restore["warnings"]), restore["warnings"]
        finally:
            handle.stop()
    assert (venv / "bin" / "python").is_symlink()
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import sys; print(sys.prefix)"],
                       capture_output=True, text=True, check=True)
    assert r.stdout.strip() == str(venv)


def test_corrupt_store_stops_up_before_anything_starts(tmp_path, tether_bin):
    e = make_env(tmp_path)
    store_dir = tmp_path / "store"
    store = f"file://{store_dir}"
    (e.workdir / "f.txt").write_text("data\n")
    _up(e, tether_bin, str(e.workdir), "--autosave", store)
    _down(e, tether_bin)
    for pack in (store_dir / "packs").rglob("*"):
        if pack.is_file():
            pack.write_bytes(b"\0garbage" * 64)
    shutil.rmtree(_host(e))
    fresh = tmp_path / "fresh"
    r = e.run(tether_bin, "up", str(fresh), "--restore", store, "--detach")
    assert r.returncode != 0
    assert r.stderr.startswith(f"error: restoring from {store} failed: "), r.stderr
    assert "nothing was started" in r.stderr and "Traceback" not in r.stderr
    assert not (_host(e) / "run.json").exists()
    assert not (_host(e) / "ssh_host_ed25519_key").exists()  # no identity half-installed
    assert list(fresh.iterdir()) == []  # nothing restored halfway
    status = json.loads(e.run(tether_bin, "host", "status", "--json").stdout)
    assert status["running"] is False


def test_sigterm_of_a_foreground_up_saves_before_exit(tmp_path, tether_bin):
    e = make_env(tmp_path)
    store = f"file://{tmp_path / 'store'}"
    proc = subprocess.Popen([tether_bin, "up", str(e.workdir), "--autosave", store, "--json"],
                            env=e.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        raw = ""
        while not raw.endswith("}\n"):
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            raw += line
        sshd_pid = json.loads((_host(e) / "run.json").read_text())["sshd_pid"]
        (e.workdir / "late.txt").write_text("written while up\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert wait_for(lambda: not _alive(sshd_pid), 5)
    assert persist.read_status(_host(e))["last_ok"] is True
    out = tmp_path / "check"
    snap.pull(store, out, ref="component:workspace")
    assert (out / "late.txt").read_text() == "written while up\n"


def test_identity_over_a_different_identity_is_refused_unless_forced(tmp_path, tether_bin):
    e = make_env(tmp_path)
    store = f"file://{tmp_path / 'store'}"
    saved = _up(e, tether_bin, str(e.workdir), "--autosave", store)
    _down(e, tether_bin)
    shutil.rmtree(_host(e))
    other = _up(e, tether_bin, str(e.workdir))  # this machine's own, different identity
    _down(e, tether_bin)
    assert other["host_key_fingerprint"] != saved["host_key_fingerprint"]
    key_before = (_host(e) / "ssh_host_ed25519_key").read_bytes()
    r = e.run(tether_bin, "up", str(e.workdir), "--restore", store, "--detach")
    assert r.returncode == 2, r.stderr
    assert "different workspace identity" in r.stderr and "--force-identity" in r.stderr
    assert (_host(e) / "ssh_host_ed25519_key").read_bytes() == key_before
    assert not (_host(e) / persist.INCOMING_DIR).exists()
    forced = _up(e, tether_bin, str(e.workdir), "--restore", store, "--force-identity")
    assert forced["host_key_fingerprint"] == saved["host_key_fingerprint"]
    assert forced["restore"]["identity"] == "replaced"
    _down(e, tether_bin)


def test_only_identity_files_are_staged(tmp_path):
    host = tmp_path / "host"
    host.mkdir()
    for name in (*persist.IDENTITY_FILES, "run.json", "pairing.json", "up.lock", "sshd.log",
                 "sshd_config", "autosave.json"):
        (host / name).write_text(name)
    stage = persist.stage_identity(host)
    assert sorted(p.name for p in stage.iterdir()) == sorted(persist.IDENTITY_FILES)
    (host / "clients.json").unlink()
    persist.stage_identity(host)
    assert not (stage / "clients.json").exists()  # a file gone here is gone from the copy


@pytest.mark.parametrize(("text", "seconds"), [
    pytest.param("10m", 600, id="minutes"), pytest.param("90s", 90, id="seconds"),
    pytest.param("1h", 3600, id="hours"), pytest.param(30, 30, id="number")])
def test_every_accepts(text, seconds):
    assert persist.check_every(text) == seconds


@pytest.mark.parametrize("text", [pytest.param("5s", id="too-short"),
                                  pytest.param("soon", id="not-a-duration")])
def test_every_rejects(text):
    with pytest.raises(UsageError):
        persist.check_every(text)


@pytest.mark.parametrize(("url", "ok"), [
    pytest.param("default", True, id="default"), pytest.param("file:///x", True, id="file"),
    pytest.param("s3://bucket/p", True, id="s3"), pytest.param("ftp://x/y", False, id="ftp"),
    pytest.param("/just/a/path", False, id="no-scheme")])
def test_store_urls(url, ok, tmp_path, monkeypatch):
    monkeypatch.setenv("TETHER_HOME", str(tmp_path))
    if ok:
        resolved = persist.resolve_store(url)
        assert resolved.startswith(("file://", "s3://"))
        if url == "default":
            assert resolved == f"file://{tmp_path}/state/snapshots"
    else:
        with pytest.raises(UsageError):
            persist.resolve_store(url)


def test_s3_store_round_trip(tmp_path, monkeypatch):
    from tests.snapshot.fakes.moto_s3 import serve_moto_s3

    e = make_env(tmp_path)
    (e.workdir / "model.txt").write_text("weights\n")
    with serve_moto_s3() as s3:
        s3.client().create_bucket(Bucket="ws-bucket")
        for key, value in (("AWS_ACCESS_KEY_ID", "testing"),
                           ("AWS_SECRET_ACCESS_KEY", "testing"),
                           ("AWS_DEFAULT_REGION", "us-east-1"),
                           ("TETHER_S3_ENDPOINT_URL", s3.endpoint)):
            monkeypatch.setenv(key, value)
        store = "s3://ws-bucket/tether"
        with activated(e):
            first = tether.up(e.workdir, autosave=store)
            first.stop()
            fingerprint = first.info["host_key_fingerprint"]
            shutil.rmtree(_host(e))
            fresh = tmp_path / "fresh"
            second = tether.up(fresh, restore=store)
            second.stop()
    assert second.info["host_key_fingerprint"] == fingerprint
    assert (fresh / "model.txt").read_text() == "weights\n"
    assert os.stat(fresh / "model.txt").st_size == 8


def test_a_failing_autosave_is_a_warning_and_shows_in_status(tmp_path):
    e = make_env(tmp_path)
    blocker = tmp_path / "store"
    a_file = tmp_path / "a-file"
    a_file.write_text("")
    messages: list[str] = []
    with activated(e):
        with pytest.raises(UsageError, match="not a folder"):  # refused up front
            tether.up(e.workdir, autosave=f"file://{a_file}")
        assert tether.host_status()["running"] is False
        handle = tether.up(e.workdir, autosave=f"file://{blocker}", announce=messages.append)
        assert handle.status()["autosave"]["last_save_at"] is None
        blocker.rmdir()  # the store goes away while the workspace runs
        blocker.write_text("a file where the store should be\n")
        handle.stop()  # the final save fails: stop still stops, nothing raised
        status = tether.host_status()
    assert status["running"] is False
    a = status["autosave"]
    assert a["last_ok"] is False and a["last_error"] and a["saves"] == 0
    assert any(m.startswith(f"warning: autosave to file://{blocker} failed: ")
               for m in messages), messages


def test_periodic_autosave_while_running_shows_in_status(tmp_path):
    e = make_env(tmp_path)
    store = f"file://{tmp_path / 'store'}"
    (e.workdir / "a.txt").write_text("one\n")
    with activated(e):
        handle = tether.up(e.workdir, autosave=store, autosave_every="10s")
        try:
            assert wait_for(lambda: (handle.status()["autosave"] or {}).get("saves"), 20)
            status = handle.status()
            assert status["running"] and status["autosave"]["last_ok"] is True
            assert status["autosave"]["last_saved"] == ["identity", "workspace"]
            assert "component:workspace" in _tags(store)
        finally:
            handle.stop()
