"""Cgroup limit writers against a directory tree laid out like cgroupfs (v2 and v1).

The real v1 hierarchy is exercised by the runner and escape tests on this host; v2 is not
delegated here, so its writer is checked on a stand-in tree with the same file names.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tether.errors import EnforcementError
from tether.sandbox import limits
from tether.sandbox.profiles import CgroupFacts, Limits


def test_v2_writes_every_limit(tmp_path: Path):
    cg = limits.create(Limits(memory_bytes=1 << 30, cpus=1.5, pids=64),
                       CgroupFacts("v2", memory=True, pids=True, cpu=True),
                       {"unified": tmp_path})
    (d,) = cg.dirs.values()
    assert d.parent == tmp_path and d.name.startswith("tether-")
    assert (d / "memory.max").read_text() == str(1 << 30)
    assert (d / "pids.max").read_text() == "64"
    assert (d / "cpu.max").read_text() == "150000 100000"
    assert cg.procs_files == [str(d / "cgroup.procs")]
    argv = cg.wrap(["bwrap", "true"])
    assert argv[:2] == [limits.SHELL, "-c"] and argv[-3:] == ["--", "bwrap", "true"]
    assert str(d / "cgroup.procs") in argv


def test_v1_uses_one_hierarchy_per_controller(tmp_path: Path):
    base = {c: tmp_path / c for c in ("memory", "pids", "cpu")}
    for p in base.values():
        p.mkdir()
    cg = limits.create(Limits(memory_bytes=256 << 20, pids=10),
                       CgroupFacts("v1", memory=True, pids=True, cpu=True), base)
    assert set(cg.dirs) == {"memory", "pids"}          # no cpu limit asked, no cpu cgroup
    assert (cg.dirs["memory"] / "memory.limit_in_bytes").read_text() == str(256 << 20)
    assert (cg.dirs["pids"] / "pids.max").read_text() == "10"
    (cg.dirs["memory"] / "memory.max_usage_in_bytes").write_text("12345\n")
    (cg.dirs["memory"] / "memory.oom_control").write_text("oom_kill_disable 0\noom_kill 1\n")
    assert cg.peak_memory() == 12345 and cg.oom_killed() is True


@pytest.mark.parametrize("facts,lim,match", [
    (CgroupFacts(), Limits(pids=10), "pids"),
    (CgroupFacts("v1", memory=True), Limits(cpus=1), "cpu"),
], ids=["no-pids-cgroup", "no-cpu-cgroup"])
def test_refuses_limits_it_cannot_enforce(tmp_path, facts, lim, match):
    with pytest.raises(EnforcementError, match=match):
        limits.create(lim, facts, {})


def test_memory_without_cgroup_falls_back_to_rlimit_and_says_so():
    cg = limits.create(Limits(memory_bytes=64 << 20), CgroupFacts(), {})
    assert cg.rlimit_as == 64 << 20 and "RLIMIT_AS" in cg.notes[0]
    assert cg.wrap(["x"])[2].startswith(f"ulimit -v {64 << 10}")


def test_no_limits_no_wrapper():
    cg = limits.create(Limits(), CgroupFacts("v1", memory=True, pids=True), {})
    assert cg.wrap(["bwrap"]) == ["bwrap"] and not cg.dirs


def test_sweep_removes_only_old_empty_run_cgroups(tmp_path: Path):
    import os

    old, fresh, other = tmp_path / "tether-old", tmp_path / "tether-fresh", tmp_path / "user"
    for d in (old, fresh, other):
        d.mkdir()
    os.utime(old, (1, 1))
    os.utime(other, (1, 1))
    assert limits.sweep_stale({"pids": tmp_path}) == 1
    assert not old.exists() and fresh.exists() and other.exists()


@pytest.mark.timeout(30)
def test_launcher_pool_close_leaves_nothing():
    import time

    from tether.sandbox import launchers, probe, runner

    host = probe.probe()
    if host.cgroup.version == "none":
        pytest.skip("no writable cgroup on this host: the pool is never used")
    pool = launchers.LauncherPool(host, runner._cgroup_dirs(host), size=2)
    deadline = time.monotonic() + 10
    while len(pool._ready) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    ready = list(pool._ready)
    assert len(ready) == 2 and all(x.alive() for x in ready)
    pool.close()
    assert all(x.proc.poll() is not None for x in ready)
    assert not [d for x in ready for d in x.cgroup.dirs.values() if d.exists()]


@pytest.mark.parametrize("argv,options,command", [
    (["bwrap", "--a", "--chdir", "/w", "--", "echo", "--", "x"], ["--a", "--chdir", "/w"],
     ["echo", "--", "x"]),
    (["bwrap", "--chdir", "/", "--", "true"], ["--chdir", "/"], ["true"]),
], ids=["dashes-in-command", "minimal"])
def test_split_argv(argv, options, command):
    from tether.sandbox.launchers import split_argv

    assert split_argv(argv) == (options, command)


@pytest.mark.parametrize("word", ["plain", "it's", "a b", "$HOME", "`x`", '"q"', ""],
                         ids=["plain", "quote", "space", "dollar", "backtick", "dquote", "empty"])
def test_sh_quote_round_trips(word):
    import subprocess

    from tether.sandbox.launchers import sh_quote

    out = subprocess.run(["/bin/sh", "-c", "printf %s " + sh_quote(word)], capture_output=True)
    assert out.stdout.decode() == word


def test_forked_child_does_not_inherit_the_launcher_pool():
    import os

    from tether.sandbox import launchers, probe, runner

    host = probe.probe()
    if host.cgroup.version == "none":
        pytest.skip("no writable cgroup on this host: the pool is never used")
    parent_pool = launchers.pool(host, runner._cgroup_dirs(host))
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(w, b"1" if launchers._pool is None else b"0")
        os._exit(0)
    os.waitpid(pid, 0)
    assert os.read(r, 1) == b"1"
    assert launchers._pool is parent_pool
