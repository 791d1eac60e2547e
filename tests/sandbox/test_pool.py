"""The warm pool: every pooled run gets fresh state, and the requested profile still holds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tether.sandbox.pool import WarmPool, shape_of
from tether.sandbox.profiles import Mount, resolve_spec, with_command

from .sandbox_service_fixtures import host_listener

pytestmark = pytest.mark.timeout(90)


@pytest.fixture
def work(tmp_path: Path) -> Path:
    w = tmp_path / "work"
    w.mkdir()
    (w / "README").write_text("project\n")
    return w


@pytest.fixture
def pool(isolated, tmp_path: Path):
    with WarmPool(size=1, scratch_root=tmp_path / "scratch") as p:
        yield p


def pooled(pool: WarmPool, spec, **kw):
    """Run ``spec`` on a warm sandbox (waits for one), asserting it really was pooled."""
    pool.warm(spec, wait=True, timeout=30)
    before = pool.stats["pooled"]
    result = pool.run(spec, **kw)
    assert pool.stats["pooled"] == before + 1, "the run did not use a warm sandbox"
    return result


def test_nothing_leaks_from_one_pooled_run_to_the_next(pool, work):
    spec = resolve_spec("moderate", ["true"], workdir=work)
    write = with_command(spec, ["sh", "-c", "echo leak > /tmp/t; echo leak > ~/h; "
                                "echo leak > leaked; echo changed > README; ls"])
    r = pooled(pool, write)
    assert r.exit_code == 0 and b"leaked" in r.stdout
    look = with_command(spec, ["sh", "-c", "cat /tmp/t ~/h leaked 2>&1; cat README"])
    r = pooled(pool, look)
    assert b"leak\n" not in r.stdout and r.stdout.endswith(b"project\n")
    # a pooled run never writes the host workspace
    assert sorted(p.name for p in work.iterdir()) == ["README"]
    assert (work / "README").read_text() == "project\n"


def test_no_process_outlives_a_pooled_run(pool, work):
    marker = f"tether-pool-orphan-{os.getpid()}"
    spec = resolve_spec("moderate", ["sh", "-c", f"(exec -a {marker} sleep 300) & echo ok"],
                        workdir=work)
    assert pooled(pool, spec).stdout == b"ok\n"
    time.sleep(0.2)
    survivors = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if marker.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                survivors.append(pid)
        except OSError:
            continue
    assert survivors == []


def test_no_network_holds_on_the_pooled_path(pool, work):
    listener, port = host_listener()
    try:
        probe = f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo CONNECTED || echo REFUSED"
        closed = resolve_spec("restrictive", ["bash", "-c", probe], workdir=work)
        assert b"REFUSED" in pooled(pool, closed).stdout
        # the same probe does connect with the host network: the test can tell the difference
        opened = resolve_spec("moderate", ["bash", "-c", probe], workdir=work)
        assert b"CONNECTED" in pooled(pool, opened).stdout
    finally:
        listener.close()


def test_read_only_mounts_hold_on_the_pooled_path(pool, work, tmp_path: Path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "in").write_text("x")
    spec = resolve_spec("moderate", ["true"], workdir=work,
                        mounts=[Mount(data, Path("/data"), read_only=True)])
    r = pooled(pool, with_command(spec, ["sh", "-c", "cat /data/in; echo y > /data/in"]))
    assert r.stdout == b"x" and r.exit_code != 0
    assert (data / "in").read_text() == "x"
    restrictive = resolve_spec("restrictive", ["sh", "-c", "echo y > README"], workdir=work)
    assert pooled(pool, restrictive).exit_code != 0


def test_limits_hold_on_the_pooled_path(pool, work):
    spec = resolve_spec("moderate", ["sleep", "30"], workdir=work, timeout=0.5)
    started = time.monotonic()
    r = pooled(pool, spec)
    assert r.timed_out and time.monotonic() - started < 10
    seccomp = resolve_spec("moderate", ["grep", "^Seccomp:", "/proc/self/status"], workdir=work)
    assert b"Seccomp:\t2" in pooled(pool, seccomp).stdout
    mem = resolve_spec("moderate", ["python3", "-c", "b = bytearray(300 << 20); print('ok')"],
                       workdir=work, memory="64M")
    r = pooled(pool, mem)
    assert r.exit_code != 0 and b"ok" not in r.stdout


def test_stdin_cwd_and_exit_code_of_a_pooled_run(pool, work):
    (work / "sub").mkdir()
    spec = resolve_spec("moderate", ["sh", "-c", "pwd; cat; exit 9"], workdir=work,
                        cwd=str(work / "sub"))
    r = pooled(pool, spec, stdin=b"fed")
    assert (r.exit_code, r.stdout) == (9, f"{work}/sub\nfed".encode())
    missing = with_command(spec, ["no-such-program"])
    assert pooled(pool, missing).exit_code == 127


def test_other_shapes_run_cold_and_named_layers_are_never_pooled(pool, work, tmp_path):
    spec = resolve_spec("moderate", ["echo", "cold"], workdir=work)
    assert pool.run(spec).stdout == b"cold\n"  # first of its shape: cold, then warmed
    assert pool.stats == {**pool.stats, "cold": 1, "pooled": 0}
    layer = tmp_path / "layer"
    layer.mkdir()
    persistent = resolve_spec("moderate", ["sh", "-c", "echo kept > ~/f"], workdir=work,
                              writable_layer=layer)
    assert pool.run(persistent).exit_code == 0
    assert (layer / "f").read_text() == "kept\n" and pool.stats["pooled"] == 0


def test_shape_ignores_command_and_cwd_only(work):
    a = resolve_spec("moderate", ["a"], workdir=work, cwd="/x")
    b = resolve_spec("moderate", ["b", "c"], workdir=work, cwd="/y")
    c = resolve_spec("moderate", ["a"], workdir=work, env=["K=V"])
    assert shape_of(a) == shape_of(b) and shape_of(a) != shape_of(c)


def test_close_leaves_no_waiters_or_scratch(isolated, work, tmp_path):
    scratch = tmp_path / "scratch"
    pool = WarmPool(size=2, scratch_root=scratch).start()
    spec = resolve_spec("moderate", ["true"], workdir=work)
    pool.warm(spec, wait=True, timeout=30)
    pids = [w.proc.pid for dq in pool._warm.values() for w in dq]
    pool.run(spec)
    pool.close()
    assert all(not Path(f"/proc/{pid}").exists() for pid in pids)
    assert list(scratch.iterdir()) == []


def test_a_workspace_too_big_to_copy_is_not_pooled_and_says_why(pool, work):
    pool.max_copy_bytes = 1000
    (work / "big").write_bytes(b"x" * 5000)
    spec = resolve_spec("moderate", ["echo", "ran"], workdir=work)
    with pytest.raises(Exception, match="did not fill"):
        pool.warm(spec, wait=True, timeout=3)
    assert "more than" in pool.last_error
    errors = pool.stats["spawn_errors"]
    for _ in range(3):
        assert pool.run(spec).stdout == b"ran\n"  # still runs, cold
    time.sleep(0.3)
    assert pool.stats["pooled"] == 0
    assert pool.stats["spawn_errors"] == errors  # no copy attempt per run: it backs off


def test_a_missing_command_exits_127_as_on_the_cold_path(pool, work):
    spec = resolve_spec("moderate", ["nosuchcmd-tether"], workdir=work)
    r = pooled(pool, spec)
    assert r.exit_code == 127
    assert r.stderr == b"tether-sandbox: command not found: nosuchcmd-tether\n"


def test_a_mount_linking_to_the_home_is_refused_never_copied(pool, work, host_home, tmp_path):
    from tether.errors import UsageError

    link = tmp_path / "lnk"
    link.symlink_to(host_home)
    spec = resolve_spec("moderate", ["cat", "/x/.ssh/id_ed25519"], workdir=work,
                        mounts=[f"{link}:/x"])
    with pytest.raises(UsageError, match="refusing to expose your home"):
        pool.run(spec)           # cold: nothing is warm for this shape yet
    deadline = time.monotonic() + 20
    while pool.stats["spawn_errors"] + pool.stats["spawned"] == 0:
        assert time.monotonic() < deadline, "the pool never tried to warm the shape"
        time.sleep(0.02)
    assert pool.stats["spawned"] == 0 and "refusing to expose" in pool.last_error
    assert not list((tmp_path / "scratch").rglob("id_ed25519"))


def test_a_pooled_run_in_a_repository_commits_to_its_copy_only(pool, work):
    import subprocess

    from tether.sandbox import runner

    subprocess.run(["git", "init", "-q", str(work)], check=True)
    before = sorted(p.name for p in (work / ".git").iterdir())
    spec = runner.build_spec(["sh", "-c", "mv .git .old; echo $?; git -c user.email=t@t "
                              "-c user.name=t commit -q --allow-empty -m in && git log "
                              "--format=%s"], workdir=work)
    r = pooled(pool, spec)
    assert r.stdout.split()[-1] == b"in" and r.stdout.split()[0] != b"0", r.stderr
    assert sorted(p.name for p in (work / ".git").iterdir()) == before
    assert not (work / ".old").exists()
