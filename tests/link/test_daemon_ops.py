"""`tether status` and `tether cp` through the link daemon (ops ``status`` and ``copy``):
the installed binary, compared with the same command run in-process
(``TETHER_LINK_DAEMON=0``); connection reuse seen in the daemon's ``ping``; relative paths;
errors; Ctrl-C and a killed client mid-copy; falling back when the daemon is too old."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tether.link import daemon_client, wire

pytestmark = pytest.mark.timeout(120)

STABLE_STATUS_KEYS = ("name", "reachable", "url", "workspace", "disk_total_bytes", "gpus",
                      "system", "hostname", "error")


def _run(tether_bin: str, *args: str, cwd: Path | None = None, daemon: bool = True,
         ) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    if not daemon:
        env["TETHER_LINK_DAEMON"] = "0"
    return subprocess.run([tether_bin, *args], capture_output=True, text=True, timeout=60,
                          stdin=subprocess.DEVNULL, cwd=cwd, env=env)


def _ping() -> dict:
    return daemon_client.request("ping")


def _parts(*dirs: Path) -> list[Path]:
    return [p for d in dirs for p in d.rglob("*") if "tether-part" in p.name]


def test_status_through_the_daemon_reuses_its_connection(paired, tether_bin) -> None:
    direct = _run(tether_bin, "status", paired, "--json", daemon=False)
    assert direct.returncode == 0, direct.stderr
    assert not Path(daemon_client.socket_path()).exists()  # in-process: no daemon
    first = _run(tether_bin, "status", paired, "--json")
    assert first.returncode == 0, first.stderr
    want, got = json.loads(direct.stdout), json.loads(first.stdout)
    assert sorted(got) == sorted(want)  # the same keys
    assert {k: got[k] for k in STABLE_STATUS_KEYS} == {k: want[k] for k in STABLE_STATUS_KEYS}
    assert 0 < got["rtt_ms"] < 1000
    ping = _ping()
    assert ping["hosts"] == [paired] and ping["opens"] == {paired: 1}
    human = _run(tether_bin, "status", paired)
    assert human.returncode == 0 and "round trip" in human.stdout and human.stderr == ""
    again = _ping()
    assert again["pid"] == ping["pid"] and again["opens"] == {paired: 1}  # no new connection


def test_status_of_an_unreachable_host_exits_1(direct, tether_bin) -> None:
    import dataclasses

    from tether.link import profiles

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    profiles.save_profile(dataclasses.replace(profiles.load_profile(direct),
                                              url=f"tcp://127.0.0.1:{port}"))
    results = [_run(tether_bin, "status", direct, "--json", daemon=d) for d in (True, False)]
    for r in results:
        assert r.returncode == 1, r.stderr
    via_daemon, in_process = (json.loads(r.stdout) for r in results)
    assert via_daemon == in_process and via_daemon["reachable"] is False
    r = _run(tether_bin, "status", "nohost")
    assert r.returncode == 10 and "tether hosts" in r.stderr


def test_cp_through_the_daemon_matches_in_process(paired, tether_bin, tmp_path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    work = tmp_path / "work"
    (work / "tree" / "sub").mkdir(parents=True)
    (work / "rel.txt").write_bytes(b"relative\n")
    (work / "tree" / "sub" / "x.bin").write_bytes(os.urandom(100_000))
    outputs = []
    for daemon in (False, True):
        dst = remote / ("daemon" if daemon else "direct")
        dst.mkdir()
        # relative local paths: resolved against the CLI's cwd, not the daemon's "/"
        r = _run(tether_bin, "cp", "rel.txt", f"{paired}:{dst}/", "--json", cwd=work,
                 daemon=daemon)
        assert r.returncode == 0, r.stderr
        assert (dst / "rel.txt").read_bytes() == b"relative\n"
        outputs.append(json.loads(r.stdout))
        r = _run(tether_bin, "cp", "-r", "tree", f"{paired}:{dst}", cwd=work, daemon=daemon)
        assert r.returncode == 0 and "upload: 1 file," in r.stdout, r.stderr
        back = work / ("back-daemon" if daemon else "back-direct")
        back.mkdir()
        r = _run(tether_bin, "cp", f"{paired}:{dst}/rel.txt", f"{back.name}/copy.txt",
                 cwd=work, daemon=daemon)
        assert r.returncode == 0, r.stderr
        assert (back / "copy.txt").read_bytes() == b"relative\n"
        r = _run(tether_bin, "cp", "-r", f"{paired}:{dst}/tree", back.name, cwd=work,
                 daemon=daemon)
        assert r.returncode == 0, r.stderr
        assert (back / "tree" / "sub" / "x.bin").read_bytes() == \
            (work / "tree" / "sub" / "x.bin").read_bytes()
    assert not (Path("/") / "rel.txt").exists() and not (Path("/") / "back-daemon").exists()
    direct, via_daemon = outputs
    assert sorted(via_daemon) == sorted(direct)  # the same JSON keys
    for key in ("host", "direction", "files", "bytes"):
        assert via_daemon[key] == direct[key]
    assert _ping()["opens"] == {paired: 1}  # four copies, one connection
    assert _parts(tmp_path) == []


@pytest.mark.parametrize("case", ["missing-remote", "missing-local", "no-parent", "is-dir"])
def test_cp_errors_are_the_same_through_the_daemon(paired, tether_bin, tmp_path, case) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "f.txt").write_text("f")
    args = {"missing-remote": [f"{paired}:{tmp_path}/missing.bin", "."],
            "missing-local": ["nope.txt", f"{paired}:{tmp_path}/d/"],
            "no-parent": [f"{paired}:{tmp_path}/f.txt", "no-dir/sub/x"],
            "is-dir": ["d", f"{paired}:{tmp_path}/x"]}[case]
    direct = _run(tether_bin, "cp", *args, cwd=tmp_path, daemon=False)
    via_daemon = _run(tether_bin, "cp", *args, cwd=tmp_path)
    assert direct.returncode in (2, 10), direct.stderr
    assert (via_daemon.returncode, via_daemon.stdout, via_daemon.stderr) == \
        (direct.returncode, direct.stdout, direct.stderr)
    assert via_daemon.stderr.startswith("error: ") and "Traceback" not in via_daemon.stderr
    if case == "missing-remote":
        assert via_daemon.returncode == 10
        assert via_daemon.stderr == f"error: {paired}:{tmp_path}/missing.bin does not exist\n"
    if case == "no-parent":  # the local path as the user wrote it, in the message and the hint
        assert via_daemon.stderr == ("error: no-dir/sub does not exist, so no-dir/sub/x cannot "
                                     "be created\nhint: create the directory first: mkdir -p "
                                     "no-dir/sub\n")
    if case != "is-dir":  # a usage error is caught before any daemon is asked
        assert Path(daemon_client.socket_path()).exists()
    direct_json = _run(tether_bin, "cp", *args, "--json", cwd=tmp_path, daemon=False)
    daemon_json = _run(tether_bin, "cp", *args, "--json", cwd=tmp_path)
    assert json.loads(daemon_json.stdout) == json.loads(direct_json.stdout)


def _big(path: Path, mib: int = 256) -> Path:
    chunk = b"tether" * (1 << 17)  # not sparse: SFTP would skip the holes
    with path.open("wb") as fh:
        for _ in range(mib * (1 << 20) // len(chunk)):
            fh.write(chunk)
    return path


def _wait_for_part(where: Path, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # interrupt once the transfer is under way
        parts = _parts(where)
        try:
            if parts and parts[0].stat().st_size > 4 << 20:
                return
        except FileNotFoundError:
            pass
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("the copy did not start")


@pytest.mark.parametrize("how", ["ctrl-c", "killed"])
@pytest.mark.parametrize("upload", [True, False], ids=["upload", "download"])
def test_interrupted_copy_leaves_nothing_half_written(paired, tether_bin, tmp_path, upload,
                                                      how) -> None:
    src_dir, dst_dir = tmp_path / "src", tmp_path / "dst"
    src_dir.mkdir()
    dst_dir.mkdir()
    big = _big(src_dir / "big.bin")
    src, dst = (str(big), f"{paired}:{dst_dir}/") if upload else \
        (f"{paired}:{big}", f"{dst_dir}/")
    assert _run(tether_bin, "status", paired).returncode == 0  # a warm daemon
    proc = subprocess.Popen([tether_bin, "cp", src, dst], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    try:
        _wait_for_part(dst_dir, proc)
        if how == "ctrl-c":
            proc.send_signal(signal.SIGINT)  # a SIGNAL frame: the daemon cancels, then answers
            _, err = proc.communicate(timeout=15)
            assert proc.returncode == 130 and "Traceback" not in err, err  # as in-process
            assert list(dst_dir.iterdir()) == []  # cleaned up before the CLI returned
        else:
            proc.kill()  # the socket closes: the daemon cancels all the same
            proc.wait()
            deadline = time.monotonic() + 15
            while list(dst_dir.iterdir()) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert list(dst_dir.iterdir()) == []
    finally:
        proc.kill()
        proc.wait()
    assert [p.name for p in src_dir.iterdir()] == ["big.bin"]  # nothing left on either side
    ping = _ping()
    assert ping["opens"] == {paired: 1}  # the warm connection survived the cancel
    r = _run(tether_bin, "exec", paired, "--", "echo", "still-here")
    assert r.stdout == "still-here\n"


def test_daemon_off_runs_in_process(paired, tether_bin, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TETHER_LINK_DAEMON", "0")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "r").mkdir()
    r = _run(tether_bin, "status", paired, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["reachable"] is True, r.stderr
    r = _run(tether_bin, "cp", "a.txt", f"{paired}:{tmp_path}/r/", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "r" / "a.txt").read_text() == "a", r.stderr
    assert not Path(daemon_client.socket_path()).exists()


class _OldDaemon:
    """A stand-in for a daemon of an older tether on the socket: it answers OPEN requests of
    ops it does not know like v1 daemons did (closing at once), or with an ``unknown_op``
    error frame, and counts them."""

    def __init__(self, path: str, mode: str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.mode = mode
        self.ops: list[str] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                decoder = wire.Decoder()
                frames = []
                while not frames:
                    data = conn.recv(65536)
                    if not data:
                        break
                    frames = decoder.feed(data)
                if frames:
                    self.ops.append(json.loads(frames[0][1])["op"])
                    if self.mode == "unknown-op":
                        conn.sendall(wire.encode_json(wire.ERROR, {
                            "kind": "ProtocolError", "message": "unknown", "hint": None,
                            "unknown_op": True}))

    def close(self) -> None:
        self.sock.close()


@pytest.mark.parametrize("mode", ["closes", "unknown-op"])
def test_an_older_daemon_makes_the_cli_run_in_process(paired, tether_bin, tmp_path,
                                                      mode) -> None:
    old = _OldDaemon(daemon_client.socket_path(), mode)
    try:
        (tmp_path / "a.txt").write_text("a")
        (tmp_path / "r").mkdir()
        r = _run(tether_bin, "status", paired, "--json")
        assert r.returncode == 0 and json.loads(r.stdout)["reachable"] is True, r.stderr
        r = _run(tether_bin, "cp", "a.txt", f"{paired}:{tmp_path}/r/", "--json", cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["files"] == 1
        assert (tmp_path / "r" / "a.txt").read_text() == "a"
        assert old.ops == ["status", "copy"]  # asked first, then done in-process
    finally:
        old.close()
        Path(daemon_client.socket_path()).unlink(missing_ok=True)
