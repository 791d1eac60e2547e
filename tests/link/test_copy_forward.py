"""cp and forward through the real gateway: both directions, trees, progress, atomicity when
the gateway dies mid-copy, HTTP through local and reverse forwards."""

from __future__ import annotations

import http.server
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

import tether
from tether import errors

pytestmark = pytest.mark.timeout(90)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


def _make_tree(root: Path) -> dict[str, bytes]:
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha\n")
    (root / "sub" / "b.bin").write_bytes(os.urandom(300_000))
    (root / "sub" / "deeper" / "c").write_bytes(b"")
    (root / "run.sh").write_bytes(b"#!/bin/sh\necho hi\n")
    (root / "run.sh").chmod(0o755)
    return _tree(root)


def test_copy_file_both_ways_with_progress(paired, tmp_path) -> None:
    src = tmp_path / "one.bin"
    src.write_bytes(os.urandom(2_000_000))
    remote = tmp_path / "remote"
    remote.mkdir()
    seen: list[int] = []
    totals: list[int] = []

    def progress(plan):
        totals.append(plan.total_bytes)
        return seen.append

    r = tether.copy([str(src)], f"{paired}:{remote}/", progress=progress)
    assert (r.direction, r.files, r.bytes) == ("upload", 1, 2_000_000)
    assert (remote / "one.bin").read_bytes() == src.read_bytes()
    assert totals == [2_000_000] and sum(seen) == 2_000_000
    back = tmp_path / "back.bin"
    r = tether.copy(f"{paired}:{remote}/one.bin", str(back))
    assert r.direction == "download" and back.read_bytes() == src.read_bytes()
    assert not [p for p in tmp_path.rglob("*tether-part*")]


def test_copy_tree_both_ways_cli(paired, cli, tmp_path) -> None:
    src = tmp_path / "proj"
    want = _make_tree(src)
    remote = tmp_path / "remote"
    remote.mkdir()
    r = cli("cp", "-r", str(src), f"{paired}:{remote}", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["files"] == len(want) and r.json()["direction"] == "upload"
    assert _tree(remote / "proj") == want
    assert os.access(remote / "proj" / "run.sh", os.X_OK)  # modes travel
    down = tmp_path / "down"
    down.mkdir()
    r = cli("cp", "-r", f"{paired}:{remote}/proj", str(down))
    assert r.exit_code == 0, r.stderr
    assert "download: 4 files" in r.stdout
    assert _tree(down / "proj") == want


def test_copy_refusals(paired, cli, tmp_path) -> None:
    d = tmp_path / "d"
    d.mkdir()
    r = cli("cp", str(d), f"{paired}:{tmp_path}/x")
    assert r.exit_code == 2 and "add -r" in r.stderr
    r = cli("cp", f"{paired}:{tmp_path}/missing", str(tmp_path))
    assert r.exit_code == 10 and "does not exist" in r.stderr
    r = cli("cp", "a", "b")
    assert r.exit_code == 2 and "both sides are local" in r.stderr
    r = cli("cp", "nohost:x", str(tmp_path))
    assert r.exit_code == 10 and "tether hosts" in r.stderr
    r = cli("cp", str(d), f"{paired}:{tmp_path}/no-dir/sub/x")
    assert r.exit_code == 10, r.stderr
    assert f"{paired}:{tmp_path}/no-dir/sub does not exist" in r.stderr
    assert f"hint: create the directory first: tether exec {paired} -- mkdir -p" in r.stderr
    (d / "f").write_text("f")
    r = cli("cp", str(d / "f"), f"{paired}:{tmp_path}/no-dir/sub/x")
    assert r.exit_code == 10 and "no-dir/sub does not exist" in r.stderr
    r = cli("cp", f"{paired}:{d}/f", f"{tmp_path}/no-dir/x")
    assert r.exit_code == 10 and "hint: create the directory first: mkdir -p" in r.stderr
    r = cli("cp", str(d / "f"), f"{paired}:{d}/f/x")
    assert r.exit_code == 10 and f"{paired}:{d}/f is not a directory" in r.stderr


@pytest.mark.parametrize("upload", [True, False], ids=["upload", "download"])
def test_gateway_killed_mid_copy_leaves_nothing_half_written(paired, host, tmp_path,
                                                             upload) -> None:
    big = tmp_path / "big.bin"
    chunk = b"tether" * (1 << 17)
    with big.open("wb") as fh:  # not sparse: SFTP would skip the holes
        for _ in range(256):
            fh.write(chunk)
    target = tmp_path / ("up.bin" if upload else "down.bin")
    started = threading.Event()
    copied = [0]

    def progress(plan):
        def advance(n: int) -> None:
            copied[0] += n
            if copied[0] > 20 * 1024 * 1024:
                started.set()
        return advance

    killer = threading.Thread(target=lambda: started.wait(30) and host.kill_gateway())
    killer.start()
    src, dst = (str(big), f"{paired}:{target}") if upload else (f"{paired}:{big}", str(target))
    with pytest.raises(errors.ConnectError, match="dropped during the copy"):
        tether.copy(src, dst, progress=progress)
    killer.join()
    assert started.is_set() and copied[0] < big.stat().st_size
    assert not target.exists()
    parts = [p for p in tmp_path.iterdir() if "tether-part" in p.name]
    if not upload:  # the local temporary is cleaned up
        assert parts == []
    host.start_gateway()
    if upload:  # the remote one could not be (the link was gone): the next upload sweeps it
        assert [p.name.rsplit("-", 1)[0] for p in parts] == [".up.bin.tether-part"]
        idle = time.time() - 120  # a part written to 2 minutes ago belongs to no live cp
        os.utime(parts[0], (idle, idle))
        from tether.link.pairing import connect

        connect(host.connection_string(), paired)  # the restarted gateway has a new port
        tether.copy(str(big), f"{paired}:{target}")
        assert target.stat().st_size == big.stat().st_size
        assert not [p for p in tmp_path.iterdir() if "tether-part" in p.name]


def test_next_upload_sweeps_only_its_own_idle_leftovers(paired, tmp_path) -> None:
    remote = tmp_path / "remote"
    remote.mkdir()
    src = tmp_path / "t.bin"
    src.write_bytes(b"new content")
    idle = time.time() - 120
    names = {".t.bin.tether-part-0123abcd": idle,   # a dead upload of t.bin: swept
             ".t.bin.tether-part-89abcdef": None,   # fresh: maybe another cp in flight
             ".u.bin.tether-part-0123abcd": idle,   # another target's
             ".t.bin.tether-part-notmine1": idle,   # not a name tether makes
             "t.bin.tether-part-0123abcd": idle}    # not hidden: not tether's
    for name, mtime in names.items():
        (remote / name).write_bytes(b"x" * 1000)
        if mtime is not None:
            os.utime(remote / name, (mtime, mtime))
    tether.copy(str(src), f"{paired}:{remote}/")
    assert (remote / "t.bin").read_bytes() == b"new content"
    assert sorted(p.name for p in remote.iterdir()) == sorted(
        ["t.bin", *[n for n in names if n != ".t.bin.tether-part-0123abcd"]])
    # a tree upload into existing directories sweeps there too
    (remote / "tree" / "sub").mkdir(parents=True)
    (remote / "tree" / "sub" / ".f.tether-part-00000000").write_bytes(b"old")
    os.utime(remote / "tree" / "sub" / ".f.tether-part-00000000", (idle, idle))
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    (tmp_path / "tree" / "sub" / "f").write_bytes(b"f")
    tether.copy(str(tmp_path / "tree"), f"{paired}:{remote}", recursive=True)
    assert [p.name for p in (remote / "tree" / "sub").iterdir()] == ["f"]


def test_ctrl_c_mid_upload_removes_the_remote_temporary(paired, tether_bin, tmp_path) -> None:
    big = tmp_path / "big.bin"
    chunk = os.urandom(1 << 20)
    with big.open("wb") as fh:
        for _ in range(400):
            fh.write(chunk)
    remote = tmp_path / "remote"
    remote.mkdir()
    proc = subprocess.Popen([tether_bin, "cp", str(big), f"{paired}:{remote}/"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # interrupt once the upload is under way
            parts = [p for p in remote.iterdir() if "tether-part" in p.name]
            if parts and parts[0].stat().st_size > 4 << 20:
                break
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.01)
        else:
            raise AssertionError("the upload did not start")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 130, proc.communicate()
    finally:
        proc.kill()
    assert list(remote.iterdir()) == []  # the link was still up: the temporary went with it


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802
        body = f"hello from {self.server.server_port}".encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def web() -> int:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_port
    server.shutdown()


def test_forward_both_ways_api(paired, web) -> None:
    with tether.forward(paired, [f"0:{web}"]) as fw:
        port = fw.forwards[0].bound_port
        assert port != web
        assert httpx.get(f"http://127.0.0.1:{port}/").text == f"hello from {web}"
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)  # closed with the block
    with tether.forward(paired, [f"0:{web}", f"0:{web}"], reverse=True) as fw:
        ports = [f.bound_port for f in fw.forwards]
        assert len(set(ports)) == 2 and fw.to_dicts()[0]["direction"] == "reverse"
        for p in ports:  # listening on the host, reaching this machine
            assert httpx.get(f"http://127.0.0.1:{p}/").text == f"hello from {web}"


def test_forward_port_in_use(paired, web) -> None:
    with pytest.raises(errors.InUseError, match="cannot listen"):
        tether.forward(paired, [f"{web}:{web}"])


def test_forward_cli_until_ctrl_c(paired, tether_bin, web) -> None:
    proc = subprocess.Popen([tether_bin, "forward", paired, f"0:{web}", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        while not lines or lines[-1] != "}\n":
            lines.append(proc.stdout.readline())
            assert lines[-1], proc.stderr.read()
        info = json.loads("".join(lines))
        port = info["forwards"][0]["listen_port"]
        assert httpx.get(f"http://127.0.0.1:{port}/").text == f"hello from {web}"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
    finally:
        proc.kill()
    time.sleep(0.1)
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/", timeout=2)


def test_cli_progress_bar_on_a_terminal(paired, tether_bin, tmp_path) -> None:
    import pty

    from tests.conftest import read_pty_to_end

    src = tmp_path / "p.bin"
    src.write_bytes(os.urandom(64 * 1024 * 1024))
    (tmp_path / "dst").mkdir()
    pid, fd = pty.fork()
    if pid == 0:
        os.environ.pop("NO_COLOR", None)
        os.environ["TERM"] = "xterm"
        os.execv(tether_bin, [tether_bin, "cp", str(src), f"{paired}:{tmp_path}/dst/"])
    try:
        out = read_pty_to_end(fd)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out[-500:]
    text = out.decode(errors="replace")
    assert "1 file" in text and "/s" in text  # the bar: label, bytes, rate
    assert "upload: 1 file," in text
    assert (tmp_path / "dst" / "p.bin").stat().st_size == src.stat().st_size


def test_several_sources_into_a_directory(paired, tmp_path) -> None:
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("b")
    remote = tmp_path / "remote"
    remote.mkdir()
    r = tether.copy([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")], f"{paired}:{remote}")
    assert r.files == 2 and sorted(p.name for p in remote.iterdir()) == ["a.txt", "b.txt"]
    with pytest.raises(errors.UsageError, match="not an existing directory"):
        tether.copy([str(tmp_path / "a.txt"), str(tmp_path / "b.txt")],
                    f"{paired}:{remote}/missing")
    back = tmp_path / "back"
    back.mkdir()
    tether.copy([f"{paired}:{remote}/a.txt", f"{paired}:{remote}/b.txt"], str(back))
    assert (back / "a.txt").read_text() == "a" and (back / "b.txt").read_text() == "b"
