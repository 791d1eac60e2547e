"""Named sandboxes: lifecycle across separate `tether` processes, files, cp, attach, escapes."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from tests.conftest import find_tether_bin
from tether import errors
from tether.sandbox import asciicast, named

from .sandbox_service_fixtures import tether_proc

pytestmark = pytest.mark.timeout(90)


def test_lifecycle_survives_cli_restarts(isolated, tmp_path: Path):
    env = isolated.env
    t = lambda *a, **kw: tether_proc(env, *a, **kw)  # noqa: E731 - each call a new process

    r = t("sandbox", "create", "dev", "--profile", "moderate", "--json", "--",
          "sh", "-c", "echo main-started; exec sleep 60")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["status"] == "stopped"

    r = t("sandbox", "exec", "dev", "--", "sh", "-c", "echo kept > state.txt; echo ~ > ~/h; pwd")
    assert (r.returncode, r.stdout) == (0, b"/workspace\n"), r.stderr
    r = t("sandbox", "exec", "dev", "--", "sh", "-c", "cat state.txt ~/h; exit 5")
    assert (r.returncode, r.stdout) == (5, b"kept\n/home/sandbox\n")

    r = t("sandbox", "exec", "dev", "-i", "--", "tr", "a-z", "A-Z", input=b"piped in")
    assert r.stdout == b"PIPED IN"

    assert t("sandbox", "start", "dev").returncode == 0
    deadline = time.monotonic() + 10
    while b"main-started" not in t("sandbox", "logs", "dev").stdout:
        assert time.monotonic() < deadline, "the main command never logged"
        time.sleep(0.2)
    listing = json.loads(t("sandbox", "ls", "--json").stdout)
    assert [(s["name"], s["status"]) for s in listing] == [("dev", "running")]
    pid = listing[0]["pid"]

    r = t("sandbox", "rm", "dev")
    assert r.returncode == 2 and b"is running" in r.stderr  # InUseError: usage exit code
    assert t("sandbox", "stop", "dev").returncode == 0
    assert json.loads(t("sandbox", "ls", "--json").stdout)[0]["status"] == "stopped"
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid), "the supervisor outlived stop"

    out = tmp_path / "out.txt"
    assert t("sandbox", "cp", "dev:/workspace/state.txt", str(out)).returncode == 0
    assert out.read_text() == "kept\n"

    assert t("sandbox", "rm", "dev").returncode == 0
    r = t("sandbox", "exec", "dev", "--", "true")
    assert r.returncode == 10 and b"no sandbox named 'dev'" in r.stderr


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def test_main_command_exit_is_recorded(isolated):
    named.create("job", command=["sh", "-c", "echo done; exit 4"])
    named.start("job")
    deadline = time.monotonic() + 10
    while named.get("job").status()[0] == "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    info = named.get("job").to_schema()
    assert (info.status, info.exit_code) == ("exited", 4)
    assert named.logs("job") == b"done\n"


def test_each_sandbox_has_its_own_layer(isolated):
    named.create("a")
    named.create("b")
    named.exec_sync("a", ["sh", "-c", "echo A > /workspace/f; echo A > ~/g"])
    r = named.exec_sync("b", ["sh", "-c", "ls /workspace ~; cat /workspace/f"])
    assert r.exit_code != 0 and b"A" not in r.stdout
    assert named.read_file("a", "f") == b"A\n"


def test_restrictive_named_sandbox_keeps_its_profile(isolated):
    from tether.sandbox.schemas import RunOptions

    from .sandbox_service_fixtures import host_listener

    listener, port = host_listener()
    try:
        named.create("locked", RunOptions(profile="restrictive"))
        r = named.exec_sync("locked", ["bash", "-c",
                                       f"exec 3<>/dev/tcp/127.0.0.1/{port} && echo OPEN"])
        assert r.exit_code != 0 and b"OPEN" not in r.stdout
        # its own layer stays writable even though restrictive makes workspaces read-only
        assert named.exec_sync("locked", ["sh", "-c", "echo ok > mine"]).exit_code == 0
        r = named.exec_sync("locked", ["sh", "-c", "echo x > /usr/evil"])
        assert r.exit_code != 0
    finally:
        listener.close()


def test_exec_timeout_kills(isolated):
    named.create("slow")
    started = time.monotonic()
    r = named.exec_sync("slow", ["sleep", "30"], timeout=0.5)
    assert r.timed_out and time.monotonic() - started < 10


def test_cp_in_and_out_of_directories(isolated, tmp_path: Path):
    named.create("files")
    src = tmp_path / "proj"
    (src / "sub").mkdir(parents=True)
    (src / "a.txt").write_text("a")
    (src / "sub" / "b.txt").write_text("b")
    assert named.copy(str(src), "files:/workspace/") == 2
    r = named.exec_sync("files", ["cat", "proj/a.txt", "proj/sub/b.txt"])
    assert r.stdout == b"ab"
    dest = tmp_path / "back"
    dest.mkdir()
    assert named.copy("files:proj", str(dest)) == 2
    assert (dest / "proj" / "sub" / "b.txt").read_text() == "b"


@pytest.mark.parametrize(("src", "dst"), [
    ("a", "b"), ("dev:x", "other:y"),
], ids=["no-sandbox-side", "two-sandbox-sides"])
def test_cp_needs_exactly_one_sandbox_side(isolated, src, dst):
    with pytest.raises(errors.UsageError, match="exactly one side"):
        named.copy(src, dst)


@pytest.mark.parametrize(("text", "expected"), [
    ("dev:/workspace/x", ("dev", "/workspace/x")),
    ("dev:", ("dev", ".")),
    ("./dev:x", (None, "./dev:x")),
    ("/abs/path", (None, "/abs/path")),
    ("Not_A_Name:x", (None, "Not_A_Name:x")),
], ids=["sandbox", "sandbox-root", "relative-host", "absolute-host", "not-a-name"])
def test_parse_location(text, expected):
    assert named.parse_location(text) == expected


@pytest.mark.parametrize("path", ["/etc/passwd", "/workspace/../../etc/passwd", "/home/other"],
                         ids=["system", "dotdot", "other-home"])
def test_paths_outside_the_layer_are_refused(isolated, path):
    named.create("p")
    with pytest.raises(errors.UsageError):
        named.read_file("p", path)


def test_symlinks_planted_inside_cannot_reach_host_files(isolated, tmp_path: Path):
    secret = tmp_path / "host-secret"
    secret.write_text("TOP SECRET")
    victim_dir = tmp_path / "victim"
    victim_dir.mkdir()
    named.create("evil")
    # the sandbox plants links; inside they dangle, but a naive host-side cp would follow them
    named.exec_sync("evil", ["sh", "-c", f"ln -s {secret} leak; ln -s {victim_dir} dir"])
    with pytest.raises(errors.UsageError, match="symlink"):
        named.read_file("evil", "leak")
    with pytest.raises(errors.UsageError, match="symlink"):
        named.copy("evil:leak", str(tmp_path / "got"))
    with pytest.raises(errors.UsageError, match="symlink"):
        named.write_file("evil", "dir/planted", b"x")
    assert list(victim_dir.iterdir()) == []
    # a directory copy skips links instead of following them
    named.exec_sync("evil", ["sh", "-c", "mkdir d; echo real > d/real; ln -s /etc/shadow d/sh"])
    out = tmp_path / "copy"
    out.mkdir()
    assert named.copy("evil:d", str(out)) == 1
    assert sorted(p.name for p in (out / "d").iterdir()) == ["real"]


def test_a_fifo_in_the_layer_does_not_hang_the_host(isolated):
    named.create("fifo")
    named.exec_sync("fifo", ["mkfifo", "pipe"])
    with pytest.raises(errors.UsageError, match="not a regular file"):
        named.read_file("fifo", "pipe")


@pytest.mark.parametrize("name", ["", "UPPER", "a b", "../x", "-lead", "x" * 64, "dev\n"],
                         ids=["empty", "upper", "space", "dotdot", "dash-first", "too-long",
                              "trailing-newline"])
def test_bad_names_are_refused(isolated, name):
    with pytest.raises(errors.UsageError, match="invalid sandbox name"):
        named.create(name)


def test_create_twice_and_bad_options_leave_nothing_behind(isolated):
    from tether.sandbox.schemas import RunOptions

    named.create("one")
    with pytest.raises(errors.AlreadyExistsError):
        named.create("one")
    with pytest.raises(errors.UsageError):
        named.create("two", RunOptions(profile="nope"))
    assert [b.name for b in named.list_sandboxes()] == ["one"]


def test_attach_runs_a_shell_on_a_pty_and_records_asciicast(isolated, tmp_path: Path):
    named.create("tty")
    cast = tmp_path / "session.cast"
    r = tether_proc(isolated.env, "sandbox", "attach", "tty", "--record", str(cast),
                    input=b"tty -s && echo IS-A-TTY; echo out-$((6*7)) > f\nexit 3\n")
    assert r.returncode == 3, r.stderr
    assert b"IS-A-TTY" in r.stdout and b"out-42" not in r.stdout
    header, events = asciicast.parse(cast.read_text())
    assert header["version"] == 2 and header["width"] > 0 and header["height"] > 0
    screen = "".join(text for _, kind, text in events if kind == "o")
    assert "IS-A-TTY" in screen
    assert [t for t, _, _ in events] == sorted(t for t, _, _ in events)
    assert named.read_file("tty", "f") == b"out-42\n"


def test_ls_human_and_json(isolated, cli):
    assert "no sandboxes" in cli("sandbox", "ls").stderr
    named.create("listed", command=["sleep", "1"])
    human = cli("sandbox", "ls")
    assert "listed" in human.stdout and "stopped" in human.stdout and "sleep 1" in human.stdout
    assert cli("sandbox", "ls", "--json").json()[0]["name"] == "listed"


def test_state_is_private(isolated):
    box = named.create("priv")
    assert (box.dir.stat().st_mode & 0o777) == 0o700
    assert (os.stat(box.dir / "sandbox.json").st_mode & 0o777) == 0o600


def test_create_works_from_the_home_directory(isolated, cli, monkeypatch):
    # `tether sandbox run` refuses to expose $HOME as a workspace; a named sandbox never uses
    # the current directory as its workspace, so creating one from $HOME is fine
    monkeypatch.chdir(isolated.home)
    assert cli("sandbox", "create", "athome").exit_code == 0
    assert named.exec_sync("athome", ["pwd"]).stdout == b"/workspace\n"


def test_attach_from_a_real_terminal_passes_its_size_and_restores_it(isolated):
    import fcntl
    import pty
    import select
    import struct
    import subprocess
    import termios

    named.create("term")
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    before = termios.tcgetattr(slave)
    proc = subprocess.Popen([find_tether_bin() or "tether", "sandbox", "attach", "term", "--",
                             "sh", "-c", "stty size; read line; echo got:$line"],
                            stdin=slave, stdout=slave, stderr=slave, env=isolated.env,
                            start_new_session=True)
    seen = b""
    deadline = time.monotonic() + 30
    sent = False
    while proc.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            seen += os.read(master, 4096)
        if b"33 101" in seen and not sent:
            os.write(master, b"typed\r")  # raw mode: the sandbox's pty turns CR into a line
            sent = True
    assert proc.wait(10) == 0
    while select.select([master], [], [], 0.2)[0]:
        try:
            seen += os.read(master, 4096)
        except OSError:
            break
    assert b"33 101" in seen and b"got:typed" in seen
    assert termios.tcgetattr(slave) == before  # the user's terminal is back to how it was
    os.close(master)
    os.close(slave)


def test_logs_follow_streams_until_the_main_command_ends(isolated):
    named.create("chatty", command=["sh", "-c", "echo first; sleep 0.6; echo second; exit 0"])
    named.start("chatty")
    started = time.monotonic()
    r = tether_proc(isolated.env, "sandbox", "logs", "chatty", "--follow")
    assert r.returncode == 0 and r.stdout == b"first\nsecond\n"
    assert time.monotonic() - started >= 0.5  # it waited for the second line


def test_rm_force_stops_a_running_sandbox_first(isolated):
    named.create("busy", command=["sleep", "60"])
    pid = named.start("busy").status()[1]
    assert pid is not None
    named.remove("busy", force=True)
    assert not (named.root_dir() / "busy").exists()
    assert not Path(f"/proc/{pid}").exists() or _zombie(pid)


# -- exec into a running sandbox joins its namespaces (_join.py) --------------------------

@pytest.mark.parametrize(("argv", "share_net", "expected"), [
    (["bwrap", "--unshare-all", "--share-net", "--die-with-parent", "--", "sh", "--share-net"],
     True, ["bwrap", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--userns", "7",
            "--pidns", "8", "--die-with-parent", "--", "sh", "--share-net"]),
    (["bwrap", "--unshare-all", "--ro-bind", "/usr", "/usr", "--", "true"],
     False, ["bwrap", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try", "--unshare-net",
             "--userns", "7", "--pidns", "8", "--ro-bind", "/usr", "/usr", "--", "true"]),
    (["bwrap", "--unshare-pid", "--", "true"], False, None),
    (["bwrap", "--unshare-all", "--userns", "3", "--", "true"], False, None),
], ids=["host-network", "no-network-gets-its-own", "not-a-runner-argv", "already-joining"])
def test_join_argv(argv, share_net, expected):
    from tether.sandbox._join import join_argv

    assert join_argv(argv, share_net=share_net, userns_fd=7, pidns_fd=8) == expected


def _start_marked(name: str, marker: str, options=None) -> None:
    named.create(name, options, command=["bash", "-c", f"exec -a {marker} sleep 60"])
    named.start(name)
    deadline = time.monotonic() + 15
    while b"ok" not in named.exec_sync(name, ["sh", "-c", f"ps -e -o args | grep -q '^{marker}' "
                                                   "&& echo ok"]).stdout:
        assert time.monotonic() < deadline, "exec never saw the main command"
        time.sleep(0.1)


def test_exec_into_a_running_sandbox_sees_and_signals_its_main_command(isolated):
    marker = f"tether-main-{os.getpid()}"
    _start_marked("live", marker)
    r = named.exec_sync("live", ["pkill", "-f", marker])
    # RACE: the exec shares the sandbox's pid namespace, which ends (SIGKILL to everything in
    # it) as soon as the main command dies; pkill may not get to exit on its own first
    assert r.exit_code == 0 or r.signal == signal.SIGKILL, r
    deadline = time.monotonic() + 10
    while named.get("live").status()[0] == "running":
        assert time.monotonic() < deadline, "killing the main command from exec did nothing"
        time.sleep(0.05)
    assert named.get("live").to_schema().exit_code == 128 + signal.SIGTERM  # pkill's signal
    # stopped: a new exec is a separate sandbox again and sees no main command
    r = named.exec_sync("live", ["ps", "-e", "-o", "args"])
    assert marker.encode() not in r.stdout


def test_a_joined_exec_keeps_the_profile(isolated):
    from tether.sandbox.schemas import RunOptions

    from .sandbox_service_fixtures import host_listener

    marker = f"tether-locked-{os.getpid()}"
    _start_marked("lockedlive", marker, RunOptions(profile="restrictive"))
    listener, port = host_listener()
    try:
        r = named.exec_sync("lockedlive", ["bash", "-c", (
            f"grep -q '^Seccomp:.2' /proc/self/status && echo SECCOMP; "
            f"(exec 3<>/dev/tcp/127.0.0.1/{port}) 2>/dev/null && echo NET; "
            "echo x > /usr/evil 2>/dev/null && echo WROTE; ps -e -o args")])
        assert b"SECCOMP" in r.stdout and marker.encode() in r.stdout
        assert b"NET" not in r.stdout and b"WROTE" not in r.stdout
    finally:
        listener.close()
        named.stop("lockedlive")


def test_attach_into_a_running_sandbox_sees_its_main_command(isolated):
    marker = f"tether-attach-{os.getpid()}"
    _start_marked("shell", marker)
    r = tether_proc(isolated.env, "sandbox", "attach", "shell", "--", "sh", "-c",
                    f"ps -e -o args | grep '^{marker}' | wc -l")
    named.stop("shell")
    assert r.returncode == 0 and r.stdout.strip().endswith(b"1"), r.stdout


def test_the_workspace_git_dir_is_guarded_at_workspace(isolated):
    box = named.create("repo")
    git = "git -c user.email=t@t -c user.name=t"
    r = named.exec_sync("repo", ["sh", "-c", f"git init -q && {git} commit -q --allow-empty -m a"])
    assert r.exit_code == 0, r.stderr
    # the next exec binds the guards where the sandbox sees its workspace, not at the host path
    spec = named.spec_for(box, ["true"])
    guards = [m for m in spec.mounts if m.source.parent == box.workspace / ".git"]
    assert {str(m.target) for m in guards} == {"/workspace/.git/config", "/workspace/.git/hooks"}
    assert not [m for m in spec.mounts if box.workspace in m.target.parents]
    r = named.exec_sync("repo", ["sh", "-c", f"mv .git .old; echo x >> .git/config; "
                                             f"{git} commit -q --allow-empty -m b && git log "
                                             "--format=%s"])
    assert r.stdout == b"b\na\n", r.stderr
    assert not (box.workspace / ".old").exists()
    assert not (box.workspace / ".git/config").read_text().endswith("x\n")
