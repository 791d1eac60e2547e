"""The runner against real bubblewrap: results, limits, mounts, env, config, CLI."""

from __future__ import annotations

import asyncio
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tether.errors import EnforcementError
from tether.sandbox import runner, runtimes
from tether.sandbox.profiles import CgroupFacts, resolve_spec

pytestmark = pytest.mark.timeout(60)


def test_exit_code_stdout_stderr_duration(make_spec):
    r = runner.run(make_spec("moderate", ["sh", "-c", "echo out; echo err >&2; exit 7"]))
    assert (r.exit_code, r.stdout, r.stderr) == (7, b"out\n", b"err\n")
    assert r.timed_out is False and r.signal is None
    assert 0 < r.duration_s < 10
    assert r.peak_memory_bytes and r.peak_memory_bytes > 0


def test_stdin_reaches_the_command(make_spec):
    r = runner.run(make_spec("restrictive", ["tr", "a-z", "A-Z"]), stdin=b"hello\n" * 20000)
    assert r.exit_code == 0 and r.stdout == b"HELLO\n" * 20000


def test_signalled_command_reports_signal(make_spec):
    r = runner.run(make_spec("moderate", ["sh", "-c", "kill -TERM $$"]))
    assert r.exit_code == 128 + 15 and r.signal == 15


def test_workspace_writable_in_moderate_read_only_in_restrictive(make_spec, workspace):
    ok = runner.run(make_spec("moderate", ["sh", "-c", "echo new > made.txt"]))
    assert ok.exit_code == 0 and (workspace / "made.txt").read_text() == "new\n"
    ro = runner.run(make_spec("restrictive", ["sh", "-c", "echo x > blocked.txt"]))
    assert ro.exit_code != 0 and b"Read-only file system" in ro.stderr
    assert not (workspace / "blocked.txt").exists()
    # reading the workspace is fine everywhere, and the command starts in it
    r = runner.run(make_spec("restrictive", ["cat", "README"]))
    assert r.stdout == b"project file\n"


def test_extra_mounts_ro_and_rw(make_spec, tmp_path):
    data, out = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out.mkdir()
    (data / "in.txt").write_text("input")
    spec = make_spec("restrictive", ["sh", "-c", "cat /data/in.txt > /out/copy.txt; "
                                                 "echo x > /data/nope"],
                     mounts=[f"{data}:/data:ro", f"{out}:/out"])
    r = runner.run(spec)
    assert (out / "copy.txt").read_text() == "input"
    assert r.exit_code != 0 and not (data / "nope").exists()


def test_environment_is_exactly_the_spec(make_spec, monkeypatch):
    monkeypatch.setenv("HOST_ONLY", "leak")
    spec = make_spec("moderate", ["env"], env=["GIVEN=1", "HOST_ONLY"], host_env={})
    env = dict(line.split("=", 1) for line in runner.run(spec).stdout.decode().splitlines())
    assert env["GIVEN"] == "1" and "HOST_ONLY" not in env
    assert env["HOME"] == "/home/sandbox" and env["USER"] == "sandbox"


def test_timeout_kills_everything(make_spec):
    spec = make_spec("moderate", ["sh", "-c", "sleep 30 & sleep 30; echo never"], timeout=0.5)
    r = runner.run(spec)
    assert r.timed_out is True and r.signal == 9 and r.exit_code == 137
    assert r.duration_s < 5 and b"never" not in r.stdout


def test_run_async_streams_output(make_spec):
    chunks: list[tuple[str, bytes]] = []

    async def main():
        spec = make_spec("moderate", ["sh", "-c", "echo one; sleep 0.2; echo two >&2"])
        return await runner.run_async(spec, on_output=lambda s, d: chunks.append((s, d)))

    r = asyncio.run(main())
    assert r.exit_code == 0
    assert ("stdout", b"one\n") in chunks and ("stderr", b"two\n") in chunks
    assert chunks.index(("stdout", b"one\n")) < chunks.index(("stderr", b"two\n"))


def test_peak_memory_is_measured(make_spec):
    code = "b = bytearray(80 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096])"
    r = runner.run(make_spec("restrictive", ["python3", "-c", code]))
    assert r.exit_code == 0, r.stderr
    assert r.peak_memory_bytes >= 80 * 1024 * 1024


def test_refuses_when_a_protection_is_missing(make_spec, monkeypatch):
    weak = replace(runner.probe(), landlock_abi=0, cgroup=CgroupFacts())
    monkeypatch.setattr(runner, "probe", lambda: weak)
    with pytest.raises(EnforcementError) as exc:
        runner.run(make_spec("restrictive", ["true"]))
    assert "landlock" in str(exc.value) and "pids" in str(exc.value)
    # a profile without those needs still runs, says how memory is enforced, and enforces it
    r = runner.run(make_spec("permissive", ["true"], memory="256M"))
    assert r.exit_code == 0 and any("RLIMIT_AS" in n for n in r.notes)
    r = runner.run(make_spec("permissive", ["python3", "-c", "bytearray(400 << 20)"],
                             memory="256M"))
    assert r.exit_code == 1 and b"MemoryError" in r.stderr


def test_cpu_limit_caps_cpu_time(make_spec):
    code = ("import os, time\nt = time.time()\nwhile time.time() - t < 1.0: pass\n"
            "c = os.times(); print(c.user + c.system)")
    r = runner.run(make_spec("moderate", ["python3", "-c", code], cpus=0.2))
    assert r.exit_code == 0, r.stderr
    assert float(r.stdout) < 0.45      # ~0.2 s of CPU in 1 s of wall time


def test_keep_leaves_the_home(make_spec, isolated):
    r = runner.run(make_spec("moderate", ["sh", "-c", "echo kept > ~/note"]), keep=True)
    assert r.kept is not None and (r.kept / "note").read_text() == "kept\n"


def test_rootfs_replaces_the_system(make_spec, tmp_path):
    root = tmp_path / "rootfs"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=tetherfs\n")
    for d in ("usr", "bin", "lib", "lib64"):
        if os.path.lexists("/" + d):
            os.symlink(os.path.realpath("/" + d), root / d)
    r = runner.run(make_spec("moderate", ["cat", "/etc/os-release"], rootfs=root))
    assert r.stdout == b"ID=tetherfs\n"


@pytest.mark.parametrize("command,files,expected", [
    (["python3", "-m", "pytest"], [], ["python"]),
    (["pytest"], [], ["python"]),
    (["npm", "test"], [], ["node"]),
    (["sh", "-c", "cargo build"], [], ["rust"]),
    (["make"], ["go.mod"], ["go"]),
    (["make"], ["pom.xml", "package.json"], ["node", "java"]),
    (["true"], ["README"], []),
], ids=["python-m", "pytest", "npm", "shell-c", "go-mod", "two-files", "none"])
def test_detect_runtimes(command, files, expected):
    assert runtimes.detect(command, files) == expected


def test_toolchain_outside_usr_is_bound(workspace, monkeypatch, isolated):
    monkeypatch.chdir(workspace)
    spec = runner.build_spec(["python3", "-c", "import sys; print(sys.prefix)"])
    prefix = os.path.realpath(sys.prefix)
    if prefix.startswith("/usr"):
        pytest.skip("this interpreter lives in /usr, nothing to bind")
    assert runner.run(spec).stdout.decode().strip() == prefix


def test_a_venv_python_on_path_runs_with_its_venv(workspace, tmp_path, monkeypatch, isolated):
    import subprocess

    venv = tmp_path / "tools" / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    monkeypatch.setenv("PATH", f"{venv / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.chdir(workspace)
    spec = runner.build_spec(["python3", "-c", "import sys; print(sys.prefix)"])
    assert runner.run(spec).stdout.decode().strip() == str(venv)


def test_tether_toml_section_applies_once_trusted(workspace, monkeypatch, isolated):
    from tether.errors import ConfigError
    from tether.sandbox import trust

    (workspace / "tether.toml").write_text('[sandbox]\nprofile = "restrictive"\npids = 33\n')
    monkeypatch.chdir(workspace)
    with pytest.raises(ConfigError, match="you have not trusted") as exc:
        runner.build_spec(["true"])
    assert f"tether sandbox trust {workspace / 'tether.toml'}" in exc.value.hint
    trust.trust()                                  # the nearest one, as the CLI does
    spec = runner.build_spec(["true"])
    assert spec.profile == "restrictive" and spec.limits.pids == 33
    # a changed file is refused until trusted again; ignoring project configs always works
    (workspace / "tether.toml").write_text('[sandbox]\nprofile = "restrictive"\npids = 34\n')
    with pytest.raises(ConfigError, match="changed since you trusted it"):
        runner.build_spec(["true"])
    ignored = runner.build_spec(["true"], project_config=trust.ProjectConfig.IGNORED)
    assert ignored.profile == "moderate" and ignored.limits.pids is None
    # a file tether would refuse anyway is not recorded
    (workspace / "tether.toml").write_text('[sandbox]\nbogus = 1\n')
    with pytest.raises(ConfigError, match="unknown key"):
        trust.trust(workspace)
    assert trust.revoke(workspace) is True and trust.list_trusted() == []
    # no [sandbox] section: nothing applies, nothing to trust
    (workspace / "tether.toml").write_text('[other]\nx = 1\n')
    assert runner.build_spec(["true"]).profile == "moderate"


def test_cli_run_propagates_exit_code_and_json(cli, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    r = cli("sandbox", "run", "--", "sh", "-c", "echo hi; exit 3")
    assert r.exit_code == 3 and r.stdout == "hi\n"
    r = cli("sandbox", "run", "--json", "--profile", "restrictive", "--", "sh", "-c",
            "echo out; echo err >&2")
    data = r.json()
    assert r.exit_code == 0
    assert data["stdout"] == "out\n" and data["stderr"] == "err\n"
    assert data["timed_out"] is False and data["peak_memory_bytes"] > 0


def test_cli_run_bad_input(cli, workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    r = cli("sandbox", "run", "--memory", "lots", "--", "true")
    assert r.exit_code == 2 and "invalid size" in r.stderr and "hint:" in r.stderr
    r = cli("sandbox", "run", "--profile", "yolo", "--", "true")
    assert r.exit_code == 2 and "unknown sandbox profile" in r.stderr
    r = cli("sandbox", "run", "--mount", "/does/not/exist:/x", "--", "true")
    assert r.exit_code == 2 and "does not exist" in r.stderr


@pytest.mark.parametrize("args,message", [
    (["--cpus", "0"], "--cpus must be positive, got 0.0"),
    (["--pids", "-3"], "--pids must be positive, got -3"),
    (["--timeout", "0"], "--timeout must be positive, got 0.0"),
    (["--workdir", "/nonexistent"], "workspace /nonexistent is not a directory"),
    (["--mount"], "--mount needs a value: it took the '--' that starts the command"),
    (["--mount", "--profile"], "--mount got '--profile', which looks like an option"),
], ids=["cpus-zero", "pids-negative", "timeout-zero", "missing-workdir", "mount-takes-dashdash",
        "mount-takes-option"])
def test_cli_bad_values_get_one_error_line_and_a_hint(cli, workspace, monkeypatch, args,
                                                      message):
    monkeypatch.chdir(workspace)
    r = cli("sandbox", "run", *args, "--", "true")
    assert r.exit_code == 2, r.stderr
    assert r.stderr.splitlines()[0] == f"error: {message}"
    assert r.stderr.splitlines()[1].startswith("hint: ") and len(r.stderr.splitlines()) == 2


@pytest.mark.parametrize("profile,landlock", [
    ("restrictive", True), ("moderate", True), ("moderate", False),
], ids=["restrictive", "moderate", "moderate-bwrap-execs"])
def test_cli_missing_command_exits_127(cli, workspace, monkeypatch, profile, landlock):
    if not landlock:
        # without Landlock no helper runs: bwrap execs the command itself
        weak = replace(runner.probe(), landlock_abi=0)
        monkeypatch.setattr(runner, "probe", lambda: weak)
    monkeypatch.chdir(workspace)
    r = cli("sandbox", "run", "--profile", profile, "--", "nosuchcmd-tether")
    assert r.exit_code == 127, r.stderr
    assert r.stderr in ("tether-sandbox: command not found: nosuchcmd-tether\n",
                        "bwrap: execvp nosuchcmd-tether: No such file or directory\n")


def test_cli_probe_json(cli):
    r = cli("sandbox", "probe", "--json")
    data = r.json()
    assert r.exit_code == 0
    assert set(data["profiles"]) == {"restrictive", "moderate", "permissive"}
    assert data["profiles"]["restrictive"]["network"] == "none"
    assert data["mechanisms"]["seccomp"].startswith("raw BPF")
    facts = data["facts"]
    assert facts["userns"] is True and facts["cgroup"]["version"] in ("v1", "v2", "none")
    assert isinstance(facts["landlock_abi"], int)


def test_spec_is_reusable_and_runs_are_fresh(make_spec):
    spec = make_spec("moderate", ["sh", "-c", "ls -A /tmp ~; touch /tmp/marker ~/marker2"])
    first, second = runner.run(spec), runner.run(spec)
    assert first.stdout == second.stdout and b"marker" not in second.stdout


def test_resolve_spec_direct_api(workspace):
    spec = resolve_spec("restrictive", ["echo", "api"], workdir=workspace)
    assert runner.run(spec).stdout == b"api\n"


@pytest.fixture
def used_cgroups(monkeypatch):
    """The cgroup directories each run actually used (pre-joined launcher or its own)."""
    used: list[Path] = []
    real_prepare = runner._prepare

    def recording_prepare(*args, **kw):
        p = real_prepare(*args, **kw)
        if p.cgroup is not None:
            used.extend(p.cgroup.dirs.values())
        return p

    monkeypatch.setattr(runner, "_prepare", recording_prepare)
    return used


def test_parallel_runs_are_isolated_and_clean_up(make_spec, used_cgroups):
    from concurrent.futures import ThreadPoolExecutor

    def one(i: int):
        spec = make_spec("restrictive", ["sh", "-c", f"echo {i} > /tmp/id; sleep 0.1; "
                                                    "cat /tmp/id"], pids=32)
        return runner.run(spec).stdout

    with ThreadPoolExecutor(8) as pool:
        outs = list(pool.map(one, range(16)))
    assert outs == [f"{i}\n".encode() for i in range(16)]
    assert len(used_cgroups) >= 32 and not [d for d in used_cgroups if d.exists()]


@pytest.mark.parametrize("launchers", ["1", "0"], ids=["pre-joined", "joins-itself"])
def test_limited_runs_in_both_start_paths(make_spec, used_cgroups, monkeypatch, launchers):
    import time

    monkeypatch.setenv("TETHER_SANDBOX_LAUNCHERS", launchers)
    spec = make_spec("moderate", ["sh", "-c", "echo \"$1\"; echo $SECRET; cat",
                                  "tether", "it's \"quoted\""],
                     pids=20, memory="256M", env=["SECRET=s3"])
    results = []
    for _ in range(3):
        results.append(runner.run(spec, stdin=b"in"))
        time.sleep(0.2)       # let the pool refill
    for r in results:
        assert (r.exit_code, r.stdout) == (0, b"it's \"quoted\"\ns3\nin"), r.stderr
        assert r.peak_memory_bytes and r.peak_memory_bytes < 256 << 20
    assert not [d for d in used_cgroups if d.exists()]
    fork = make_spec("moderate", ["python3", "-c", "import os\nfor i in range(40): os.fork() "
                                  "or os.sched_yield() or __import__('time').sleep(5)"],
                     pids=20, timeout=10)
    r = runner.run(fork)
    assert b"BlockingIOError" in r.stderr and not r.timed_out


def test_output_capture_is_bounded(make_spec, monkeypatch):
    monkeypatch.setattr(runner, "MAX_CAPTURE", 1 << 20)
    streamed = []
    r = runner.run(make_spec("moderate", ["head", "-c", str(5 << 20), "/dev/zero"]),
                   on_output=lambda s, d: streamed.append(len(d)))
    assert r.exit_code == 0 and sum(streamed) == 5 << 20
    assert len(r.stdout) == (1 << 20) + len(runner.TRUNCATED)
    assert r.stdout.endswith(runner.TRUNCATED)


def test_cli_binary_streams_and_pipes_stdin(tether_bin, workspace, isolated):
    import subprocess

    r = subprocess.run([tether_bin, "sandbox", "run", "--stdin", "--profile", "restrictive",
                        "--", "sh", "-c", "tr a-z A-Z; echo done >&2; exit 4"],
                       input=b"piped\n", capture_output=True, cwd=workspace, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (4, b"PIPED\n", b"done\n")
    # without --stdin the command reads nothing, even from an open pipe
    r = subprocess.run([tether_bin, "sandbox", "run", "--", "cat"], input=b"ignored",
                       capture_output=True, cwd=workspace, timeout=60)
    assert (r.returncode, r.stdout) == (0, b"")


def test_cancelling_run_async_kills_the_sandbox(make_spec):
    import subprocess
    import time
    import uuid

    marker = f"{4000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 977}"

    async def main():
        task = asyncio.create_task(runner.run_async(make_spec("moderate", ["sleep", marker])))
        await asyncio.sleep(0.5)
        task.cancel()
        started = time.monotonic()
        with pytest.raises(asyncio.CancelledError):
            await task
        return time.monotonic() - started

    assert asyncio.run(main()) < 3
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"sleep {marker}" not in ps


@pytest.mark.parametrize("layout,bound", [
    ("opt/node/bin/node", True),          # a toolchain prefix outside home: bound read-only
    ("home/bin/node", False),             # prefix would be the home itself: never
    ("home/.nvm/v20/bin/node", True),     # a prefix inside home without .ssh: fine
], ids=["outside-home", "home-itself", "inside-home"])
def test_toolchain_roots_never_expose_home(tmp_path, monkeypatch, layout, bound):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    binary = tmp_path / layout
    binary.parent.mkdir(parents=True, exist_ok=True)
    binary.write_text("#!/bin/sh\n")
    binary.chmod(0o755)
    monkeypatch.setattr(runtimes.shutil, "which", lambda name: str(binary))
    mounts, path = runtimes.toolchain_mounts(["node"], home=home)
    assert bool(mounts) is bound
    for m in mounts:
        assert m.read_only and not (m.source / ".ssh").exists()
        assert m.source != home and m.source not in home.parents
    if bound:
        assert path == [str(binary.parent)]


def test_a_failing_output_callback_still_ends_the_sandbox(make_spec):
    import subprocess
    import uuid

    marker = f"{5000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 971}"

    def explode(stream, data):
        raise RuntimeError("consumer gone")

    spec = make_spec("moderate", ["sh", "-c", f"echo hi; sleep {marker}"])
    with pytest.raises(RuntimeError):
        runner.run(spec, on_output=explode)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"sleep {marker}" not in ps
