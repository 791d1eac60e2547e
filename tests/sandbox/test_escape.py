"""The escape suite: every attempt must fail under every profile that forbids it.

Each test runs a real attack inside a real bubblewrap sandbox and checks the effect on the
host, not just the command's exit code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import textwrap
import threading
import time
import uuid
from pathlib import Path

import pytest

from tether.errors import UsageError
from tether.sandbox import runner

pytestmark = pytest.mark.timeout(60)
ALL = ["restrictive", "moderate", "permissive"]
NO_NET = ["restrictive", "allowlist"]   # allowlist: moderate narrowed to one domain


def py(make_spec, profile: str, code: str, **kw):
    if profile == "allowlist":
        profile, kw = "moderate", {**kw, "allow_domains": ["allowed.test"],
                                   "resolve": {"allowed.test": "127.0.0.1"}}
    spec = make_spec(profile, ["python3", "-c", textwrap.dedent(code)], **kw)
    return runner.run(spec)


@pytest.mark.parametrize("profile", ALL)
def test_cannot_read_host_ssh_keys_or_credentials(make_spec, host_home, profile):
    code = f"""
        import os, glob
        for p in [{str(host_home)!r} + '/.ssh/id_ed25519', os.path.expanduser('~/.ssh/id_ed25519'),
                  {str(host_home)!r} + '/.git-credentials', '/root/.ssh/authorized_keys']:
            try:
                print('READ', p, open(p).read())
            except OSError as e:
                print('denied', p, e.errno)
        for root, dirs, files in os.walk('/', onerror=None):
            if root.startswith(('/proc', '/sys', '/usr', '/dev')):
                dirs[:] = []
                continue
            for f in files:
                if f in ('id_ed25519', 'login.keyring', '.git-credentials'):
                    print('FOUND', os.path.join(root, f))
    """
    r = py(make_spec, profile, code, host_env=dict(os.environ))
    out = r.stdout.decode()
    assert r.exit_code == 0, r.stderr
    assert "READ" not in out and "FOUND" not in out and "SECRET" not in out
    assert out.count("denied") == 4


@pytest.mark.parametrize("profile", ALL)
def test_secret_env_vars_do_not_reach_the_sandbox(workspace, monkeypatch, isolated, profile):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "topsecret-aws")
    monkeypatch.setenv("GITHUB_TOKEN", "topsecret-gh")
    monkeypatch.chdir(workspace)
    spec = runner.build_spec(["sh", "-c", "env; cat /proc/*/environ 2>/dev/null"],
                             profile=profile)
    r = runner.run(spec)
    assert b"HOME=/home/sandbox" in r.stdout          # the environment was printed
    assert b"topsecret" not in r.stdout + r.stderr


@pytest.mark.parametrize("profile", ALL)
def test_cannot_write_outside_allowed_mounts(make_spec, tmp_path, profile):
    outside = tmp_path / "outside"
    outside.mkdir()
    code = f"""
        import os
        targets = ['/usr/evil', '/etc/evil', '/bin/evil', {str(outside)!r} + '/evil']
        for t in targets:
            try:
                with open(t, 'w') as f:
                    f.write('x')
                print('wrote', t)
            except OSError as e:
                print('denied', t, e.errno)
    """
    r = py(make_spec, profile, code)
    assert r.exit_code == 0, r.stderr
    for t in ("/usr/evil", "/etc/evil", "/bin/evil"):
        assert f"denied {t}".encode() in r.stdout
        assert not os.path.exists(t)
    # the unmounted host directory does not exist inside; writing there never reaches the host
    assert not (outside / "evil").exists()


@pytest.fixture
def loopback_server():
    """A real TCP server on the host's 127.0.0.1 that answers 'host-secret'."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = False

    def serve():
        while not stop:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.sendall(b"host-secret")
            conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop = True
    srv.close()


CONNECT = """
    import socket
    for addr in [('127.0.0.1', {port}), ('10.0.0.1', 80), ('1.1.1.1', 53)]:
        try:
            s = socket.create_connection(addr, timeout=2)
            print('CONNECTED', addr, s.recv(100))
        except OSError as e:
            print('refused', addr, e.errno)
"""


@pytest.mark.parametrize("profile", NO_NET)
def test_no_network_means_no_loopback_and_no_internet(make_spec, loopback_server, profile):
    r = py(make_spec, profile, CONNECT.format(port=loopback_server))
    assert r.exit_code == 0, r.stderr
    assert b"CONNECTED" not in r.stdout and b"host-secret" not in r.stdout
    assert r.stdout.count(b"refused") == 3


def test_full_network_profile_does_reach_loopback(make_spec, loopback_server):
    # the control: the same probe succeeds where the profile allows the network
    r = py(make_spec, "moderate", CONNECT.format(port=loopback_server))
    assert b"host-secret" in r.stdout


@pytest.mark.parametrize("profile", NO_NET)
def test_no_unix_sockets_where_the_network_is_filtered(make_spec, profile):
    code = """
        import socket
        try:
            socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); print('CREATED')
        except OSError as e:
            print('denied', e.errno)
        a, b = socket.socketpair(); a.send(b'ok'); print(b.recv(2).decode())
    """
    r = py(make_spec, profile, code)
    assert r.stdout.splitlines() == [b"denied 1", b"ok"], r.stderr


@pytest.mark.parametrize("profile", ALL)
def test_no_host_sockets_or_other_users_files(make_spec, profile):
    code = """
        import os
        print(sorted(os.listdir('/home')))
        print(sorted(n for n in os.listdir('/run') if n != 'tether'))
        for p in ['/var/run/docker.sock', '/run/dbus/system_bus_socket', '/run/user', '/root',
                  '/sys/fs/cgroup', '/etc/shadow', '/etc/ssh', '/etc/ssl/private',
                  '/etc/environment', '/etc/pip.conf', '/etc/npmrc', '/etc/machine-id']:
            print(p, os.path.exists(p))
    """
    r = py(make_spec, profile, code)
    lines = r.stdout.decode().splitlines()
    assert lines[0] == "['sandbox']" and lines[1] == "[]", r.stderr
    assert all(line.endswith("False") for line in lines[2:]), lines


@pytest.fixture
def host_process():
    marker = f"{1000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 997}"
    proc = subprocess.Popen(["sleep", marker])
    yield proc.pid, marker
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("profile", ALL)
def test_cannot_see_or_signal_host_processes(make_spec, host_process, profile):
    pid, marker = host_process
    head, tail = marker.split(".")      # never spelled out in our own argv
    code = f"""
        import os
        m = ({head!r} + '.' + {tail!r}).encode()
        cmds = [open(f'/proc/{{p}}/cmdline','rb').read() for p in os.listdir('/proc') if p.isdigit()]
        print('SEEN' if any(m in c for c in cmds) else 'hidden', len(cmds))
        try:
            os.kill({pid}, 9); print('KILLED')
        except OSError as e:
            print('kill', e.errno)
    """
    r = py(make_spec, profile, code)
    assert r.stdout.split()[0] == b"hidden", r.stderr
    assert b"KILLED" not in r.stdout
    assert os.path.exists(f"/proc/{pid}")      # still alive on the host


PTRACE = """
    import ctypes, os, time
    libc = ctypes.CDLL(None, use_errno=True)
    child = os.fork()
    if child == 0:
        time.sleep(5); os._exit(0)
    results = []
    for target in ({host_pid}, child, os.getppid()):
        rc = libc.ptrace(16, target, 0, 0)          # PTRACE_ATTACH
        results.append((rc, ctypes.get_errno()))
    iov = (ctypes.c_char * 8)()
    rc = libc.process_vm_readv(child, ctypes.byref(iov), 1, ctypes.byref(iov), 1, 0)
    results.append((rc, ctypes.get_errno()))
    print(results)
    os.kill(child, 9)
"""


@pytest.mark.parametrize("profile", ALL)
def test_ptrace_and_process_vm_are_denied(make_spec, host_process, profile):
    pid, _ = host_process
    r = py(make_spec, profile, PTRACE.format(host_pid=pid))
    results = eval(r.stdout.decode())       # noqa: S307 - our own script's repr output
    assert all(rc == -1 for rc, _ in results), results
    assert all(err in (1, 3) for _, err in results)   # EPERM (seccomp) or ESRCH (invisible)


FORK_BOMB = """
    import os, time
    n = 0
    try:
        while n < 2000:
            if os.fork() == 0:
                time.sleep(20); os._exit(0)
            n += 1
        print('forked', n)
    except OSError as e:
        print('stopped', n, e.errno)
"""


@pytest.mark.parametrize("profile,kw,limit", [
    ("restrictive", {}, 256),
    ("moderate", {"pids": 40}, 40),
    ("permissive", {"pids": 40}, 40),
])
def test_fork_bomb_stops_at_the_pids_limit(make_spec, profile, kw, limit):
    r = py(make_spec, profile, FORK_BOMB, **kw)
    words = r.stdout.split()
    assert words[0] == b"stopped", r.stdout + r.stderr
    assert int(words[1]) < limit and words[2] == b"11"      # EAGAIN


ALLOC = """
    blocks = []
    for i in range(64):
        b = bytearray(16 * 1024 * 1024)
        b[::4096] = b'x' * len(b[::4096])
        blocks.append(b)
    print('allocated', len(blocks) * 16, 'MiB')
"""


@pytest.mark.parametrize("profile,kw", [
    ("restrictive", {"memory": "128M"}),
    ("moderate", {"memory": "128M"}),
    ("permissive", {"memory": "128M"}),
])
def test_memory_limit_stops_allocation(make_spec, profile, kw):
    r = py(make_spec, profile, ALLOC, **kw)
    assert b"allocated" not in r.stdout
    assert r.exit_code != 0
    assert r.oom_killed or b"MemoryError" in r.stderr


def _host_has(marker: str) -> bool:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return any(marker in line for line in out.splitlines())


@pytest.mark.parametrize("profile", ALL)
def test_timeout_and_no_process_left_behind(make_spec, profile):
    marker = f"{2000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 991}"
    # a double-forked, setsid'd daemon plus a busy foreground: neither may survive the run
    script = (f"(setsid sh -c 'sleep {marker}' &) ; nohup sleep {marker} >/dev/null 2>&1 & "
              "while :; do :; done")
    spec = make_spec(profile, ["sh", "-c", script], timeout=1)
    started = time.monotonic()
    r = runner.run(spec)
    assert r.timed_out and time.monotonic() - started < 6
    assert not _host_has(f"sleep {marker}")


@pytest.mark.parametrize("profile", ALL)
def test_daemon_dies_when_the_command_exits(make_spec, profile):
    marker = f"{3000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 983}"
    spec = make_spec(profile, ["sh", "-c", f"(setsid sleep {marker} &); echo started"])
    r = runner.run(spec)
    assert r.stdout == b"started\n" and not r.timed_out
    assert not _host_has(f"sleep {marker}")


def test_run_cgroups_are_removed(make_spec, monkeypatch):
    used = []
    real_prepare = runner._prepare

    def recording_prepare(*args, **kw):
        p = real_prepare(*args, **kw)
        used.extend(p.cgroup.dirs.values())
        return p

    monkeypatch.setattr(runner, "_prepare", recording_prepare)
    runner.run(make_spec("restrictive", ["true"], memory="64M", cpus=0.5))
    assert used and not [d for d in used if d.exists()]


@pytest.mark.parametrize("profile", ALL)
def test_kernel_attack_surface_is_closed(make_spec, profile):
    from tether.sandbox.seccomp import SYSCALLS

    nr = SYSCALLS[runner.probe().arch]
    r = py(make_spec, profile, f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        def call(name, *args):
            rc = libc.syscall(*args)
            print(name, rc, ctypes.get_errno())
        call('unshare', {nr['unshare']}, 0x10000000)                  # CLONE_NEWUSER
        call('mount', {nr['mount']}, b'none', b'/tmp', b'tmpfs', 0, None)
        call('keyctl', {nr['keyctl']}, 0, 0, 0)
        call('bpf', {nr['bpf']}, 0, None, 0)
        call('perf_event_open', {nr['perf_event_open']}, None, 0, -1, -1, 0)
        call('io_uring_setup', {nr['io_uring_setup']}, 8, None)
        call('clone3', {nr['clone3']}, None, 0)
    """)
    rows = [line.split() for line in r.stdout.decode().splitlines()]
    assert len(rows) == 7, r.stderr
    for name, rc, errno in rows:
        assert rc == "-1" and errno == ("38" if name == "clone3" else "1"), (name, errno)


@pytest.mark.parametrize("helper", ["native", "python"])
def test_landlock_confines_writes_even_to_existing_mount_points(make_spec, tmp_path,
                                                               monkeypatch, helper):
    # restrictive: Landlock denies writes beneath anything that is not a writable mount
    from dataclasses import replace

    host = runner._probe.probe()
    if helper == "native" and host.helper_native is None:
        pytest.skip("no C compiler here: only the Python helper exists")
    if helper == "python":
        monkeypatch.setattr(runner, "probe", lambda: replace(host, helper_native=None))
    out = tmp_path / "out"
    out.mkdir()
    r = py(make_spec, "restrictive", """
        import os
        for p in ['/out/ok', '/tmp/ok', os.path.expanduser('~/ok'), '/var/x', '/run/x']:
            try:
                open(p, 'w').write('x'); print('wrote', p)
            except OSError as e:
                print('denied', p, e.errno)
    """, mounts=[f"{out}:/out"])
    assert b"wrote /out/ok" in r.stdout and b"wrote /tmp/ok" in r.stdout, r.stderr
    assert (out / "ok").read_text() == "x"
    # /var and /run are the sandbox's own scratch tmpfs: only Landlock refuses them (EACCES)
    assert b"denied /var/x 13" in r.stdout and b"denied /run/x 13" in r.stdout


def test_enforcement_is_not_silently_weakened(make_spec, monkeypatch):
    from dataclasses import replace

    from tether.errors import EnforcementError

    monkeypatch.setattr(runner, "probe", lambda: replace(runner._probe.probe(), seccomp=False))
    with pytest.raises(EnforcementError, match="seccomp"):
        runner.run(make_spec("permissive", ["true"]))
    assert Path("/proc/self").exists()


@pytest.mark.parametrize("profile", ALL)
def test_cannot_write_host_sysctls(make_spec, profile):
    # as root the sandbox's uid owns /proc/sys files: it must still not change the host's
    # kernel (core_pattern is the classic container escape). The probe writes the current
    # value back, so even a failure of this test changes nothing.
    r = py(make_spec, profile, """
        for p in ['/proc/sys/vm/swappiness', '/proc/sys/kernel/core_pattern',
                  '/proc/sys/kernel/hostname']:
            value = open(p).read()
            try:
                with open(p, 'w') as f:
                    f.write(value)
                print('WROTE', p)
            except OSError as e:
                print('denied', p, e.errno)
    """)
    assert b"WROTE" not in r.stdout, r.stdout
    assert r.stdout.count(b"denied") == 3, r.stderr


@pytest.mark.parametrize("profile", ["moderate", "permissive"])
def test_cannot_plant_setuid_files_in_the_workspace(make_spec, workspace, profile):
    import stat

    r = py(make_spec, profile, """
        import os
        open('tool', 'w').write('#!/bin/sh\\n')
        for name, call in [
            ('chmod', lambda: os.chmod('tool', 0o4755)),
            ('chmod-setgid', lambda: os.chmod('tool', 0o2755)),
            ('create', lambda: os.close(os.open('made', os.O_CREAT | os.O_WRONLY, 0o4755))),
            ('mknod', lambda: os.mknod('fifo', 0o6644 | 0o010000)),
        ]:
            try:
                call(); print('DONE', name)
            except OSError as e:
                print('denied', name, e.errno)
        os.chmod('tool', 0o755); print('plain chmod ok')
    """)
    assert b"DONE" not in r.stdout, r.stdout + r.stderr
    assert r.stdout.count(b"denied") == 4 and b"plain chmod ok" in r.stdout
    mode = (workspace / "tool").stat().st_mode
    assert not mode & (stat.S_ISUID | stat.S_ISGID) and mode & 0o111


@pytest.mark.parametrize("profile", ["moderate", "permissive"])
def test_git_hooks_and_config_stay_read_only(workspace, monkeypatch, isolated, profile):
    import subprocess as sp

    sp.run(["git", "init", "-q", str(workspace)], check=True)
    monkeypatch.chdir(workspace)
    spec = runner.build_spec(["sh", "-c", "echo evil > .git/hooks/pre-commit; echo $?; "
                              "echo '[core]\n\thooksPath = /tmp' >> .git/config; echo $?; "
                              "echo fine > tracked.txt && echo ok"], profile=profile)
    r = runner.run(spec)
    assert r.stdout.split()[-1] == b"ok" and (workspace / "tracked.txt").exists()
    assert not (workspace / ".git/hooks/pre-commit").exists()
    assert b"hooksPath" not in (workspace / ".git/config").read_bytes()


@pytest.mark.parametrize("target", ["home", "root"])
def test_a_mount_source_linking_to_home_is_refused(cli, workspace, host_home, tmp_path,
                                                   monkeypatch, target):
    link = tmp_path / "lnk"
    link.symlink_to(host_home if target == "home" else "/")
    key = "/x/.ssh/id_ed25519" if target == "home" else f"/x{host_home}/.ssh/id_ed25519"
    monkeypatch.chdir(workspace)
    r = cli("sandbox", "run", "--mount", f"{link}:/x:ro", "--", "cat", key)
    assert r.exit_code == 2 and "SECRETKEY" not in r.stdout + r.stderr
    assert r.stderr.startswith("error: refusing to expose your home directory through ")
    # the Python API takes the same path
    spec = runner.build_spec(["cat", key], profile="restrictive", mounts=(f"{link}:/x",))
    with pytest.raises(UsageError, match="refusing to expose your home"):
        runner.run(spec)


def test_a_uid_without_a_passwd_entry_still_runs_and_still_guards_home(make_spec, host_home,
                                                                       monkeypatch):
    """`docker run --user 1234`: getpwuid raises KeyError; $HOME alone is then the home."""
    import pwd

    def no_entry(uid):
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    assert runner.run(make_spec("moderate", ["true"])).exit_code == 0
    spec = make_spec("restrictive", ["true"], mounts=[f"{host_home}:/x:ro"])
    with pytest.raises(UsageError, match="refusing to expose your home"):
        runner.run(spec)


def test_a_mount_through_a_symlink_binds_the_resolved_directory(make_spec, tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "f").write_text("through the link\n")
    (tmp_path / "lnk").symlink_to(real)
    spec = make_spec("restrictive", ["cat", "/x/f"], mounts=[f"{tmp_path / 'lnk'}:/x:ro"])
    p = runner._prepare(spec, runner.probe(), False)
    try:
        assert [str(real), "/x"] in [p.argv[i + 1:i + 3] for i, a in enumerate(p.argv)
                                     if a == "--ro-bind"]
    finally:
        p.close()
    assert runner.run(spec).stdout == b"through the link\n"


@pytest.mark.parametrize("profile", [*ALL, "allowlist", "moderate-python-helper"])
def test_cannot_reach_a_host_abstract_unix_socket(make_spec, monkeypatch, profile):
    if profile == "moderate-python-helper":     # a host without a C compiler
        from dataclasses import replace

        host = replace(runner.probe(), helper_native=None)
        monkeypatch.setattr(runner, "probe", lambda: host)
        profile = "moderate"
    name = f"tether-test-{uuid.uuid4().hex}"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind("\0" + name)
    listener.listen(8)
    listener.setblocking(False)
    try:
        r = py(make_spec, profile, f"""
            import socket
            try:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect("\\0{name}")
                print("CONNECTED")
            except OSError as e:
                print("denied", e.errno)
        """)
        assert r.exit_code == 0, r.stderr
        assert r.stdout.startswith(b"denied"), r.stdout
        with pytest.raises(BlockingIOError):
            listener.accept()        # nothing ever got through
    finally:
        listener.close()


def _git(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["git", "-c", "user.email=t@t", "-c", "user.name=t", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("profile", ["moderate", "permissive"])
def test_the_git_dir_cannot_be_renamed_and_replaced(workspace, tmp_path, monkeypatch, isolated,
                                                    profile):
    _git("init", "-q", cwd=workspace)
    marker = tmp_path / "pwned"
    monkeypatch.chdir(workspace)
    attack = (f"mv .git .gitold; rm -rf .git/hooks .git/config; mkdir -p .git; "
              f"printf '[core]\\n\\tfsmonitor = touch {marker}\\n' > .git/config; "
              "git -c user.email=t@t -c user.name=t commit -q --allow-empty -m inside && "
              "echo committed")
    r = runner.run(runner.build_spec(["sh", "-c", attack], profile=profile))
    assert b"committed" in r.stdout, r.stderr       # git itself still works in the sandbox
    assert not (workspace / ".gitold").exists()
    assert b"fsmonitor" not in (workspace / ".git/config").read_bytes()
    assert _git("status", cwd=workspace).returncode == 0 and not marker.exists()
    assert _git("log", "--format=%s", cwd=workspace).stdout == "inside\n"


def test_git_metadata_a_run_creates_is_reported(cli, workspace, monkeypatch, isolated):
    monkeypatch.chdir(workspace)
    r = runner.run(runner.build_spec(["sh", "-c", "mkdir .git && echo '[core]' > .git/config"]))
    assert r.exit_code == 0 and len(r.notes) == 1, r.notes
    assert r.notes[0].startswith(f"the run created {workspace.resolve()}/.git: git on this host")
    # inside a repository a mount cannot guard what does not exist yet, such as a commondir
    # (git reads the config from where it points): that is reported too
    r = cli("sandbox", "run", "--", "sh", "-c", "mkdir -p .git/x/refs .git/x/objects && "
                                                "echo x > .git/commondir")
    assert r.exit_code == 0, r.stderr
    assert f"warning: the run created {workspace.resolve()}/.git/commondir:" in r.stderr
    r = runner.run(runner.build_spec(["true"]))
    assert r.notes == ()


def test_a_planted_commondir_is_moved_out_of_git(workspace, tmp_path, monkeypatch, isolated):
    # commondir names the directory git reads the config (core.fsmonitor) from
    _git("init", "-q", cwd=workspace)
    marker = tmp_path / "pwned"
    monkeypatch.chdir(workspace)
    attack = ("mkdir -p evil/refs evil/objects && "
              f"printf '[core]\\n\\tfsmonitor = touch {marker}\\n' > evil/config && "
              "echo ../evil > .git/commondir && echo planted")
    r = runner.run(runner.build_spec(["sh", "-c", attack], profile="moderate"))
    assert r.stdout == b"planted\n", r.stderr
    assert not os.path.lexists(workspace / ".git/commondir")
    [moved] = (workspace / ".tether-quarantine").glob("*/commondir")
    assert moved.read_text() == "../evil\n"
    assert (workspace / ".tether-quarantine").stat().st_mode & 0o777 == 0o700
    assert moved.parent.stat().st_mode & 0o777 == 0o700
    assert r.notes == (f"the run created {workspace.resolve()}/.git/commondir: git on this "
                       "host would have trusted it (config and hooks there can run programs); "
                       f"moved it to {moved.resolve()}",)
    assert _git("status", cwd=workspace).returncode == 0 and not marker.exists()


def test_a_hooks_dir_created_in_a_repository_without_one_is_moved(workspace, tmp_path,
                                                                  monkeypatch, isolated):
    import shutil

    _git("init", "-q", cwd=workspace)
    _git("commit", "-q", "--allow-empty", "-m", "first", cwd=workspace)
    shutil.rmtree(workspace / ".git/hooks")
    marker = tmp_path / "pwned"
    monkeypatch.chdir(workspace)
    attack = (f"mkdir .git/hooks && printf '#!/bin/sh\\ntouch {marker}\\n' > "
              ".git/hooks/post-checkout && chmod +x .git/hooks/post-checkout && echo planted")
    r = runner.run(runner.build_spec(["sh", "-c", attack], profile="moderate"))
    assert r.stdout == b"planted\n", r.stderr
    assert not os.path.lexists(workspace / ".git/hooks")
    [moved] = (workspace / ".tether-quarantine").glob("*/hooks")
    assert (moved / "post-checkout").is_file()
    assert len(r.notes) == 1 and r.notes[0].endswith(f"moved it to {moved.resolve()}")
    assert r.notes[0].startswith(f"the run created {workspace.resolve()}/.git/hooks: ")
    assert _git("status", cwd=workspace).returncode == 0
    assert _git("checkout", "-q", "-b", "other", cwd=workspace).returncode == 0
    assert not marker.exists()


def test_a_run_that_commits_quarantines_nothing(workspace, monkeypatch, isolated):
    import shutil

    _git("init", "-q", cwd=workspace)
    shutil.rmtree(workspace / ".git/hooks")       # nothing there to create either
    monkeypatch.chdir(workspace)
    r = runner.run(runner.build_spec(
        ["sh", "-c", "git add README && git -c user.email=t@t -c user.name=t commit -q -m in "
                     "&& echo committed"], profile="moderate"))
    assert r.stdout == b"committed\n", r.stderr
    assert r.notes == () and not (workspace / ".tether-quarantine").exists()
    assert _git("log", "--format=%s", cwd=workspace).stdout == "in\n"
    # modules/ and worktrees/ (submodule update --init, worktree add) stay notes
    r = runner.run(runner.build_spec(["mkdir", ".git/worktrees"], profile="moderate"))
    assert r.notes[0].startswith(f"the run created {workspace.resolve()}/.git/worktrees: git "
                                 "on this host would trust it")
    assert (workspace / ".git/worktrees").is_dir()
    assert not (workspace / ".tether-quarantine").exists()


def test_quarantine_moves_a_symlink_itself_and_reports_a_failure(tmp_path):
    d = tmp_path / "ws"
    (d / ".git").mkdir(parents=True)
    (d / "target").mkdir()
    (d / "target" / "post-checkout").write_text("x")
    before = [(d, frozenset({".git"}))]
    (d / ".git/hooks").symlink_to("../target")
    notes = runner._git_created(before)
    [stamp] = (d / ".tether-quarantine").iterdir()
    moved = stamp / "hooks"
    assert not os.path.lexists(d / ".git/hooks")
    assert moved.is_symlink() and os.readlink(moved) == "../target"
    assert (d / "target/post-checkout").read_text() == "x"       # the target stays put
    assert notes[0].endswith(f"moved it to {moved}")
    # a quarantine folder that is a symlink is not followed: the entry stays, and the note
    # says it could not be moved
    (d / ".tether-quarantine").rename(d / "old-quarantine")
    (d / ".tether-quarantine").symlink_to(d / "target")
    (d / ".git/commondir").write_text("../elsewhere\n")
    [note] = runner._git_created(before)
    assert (d / ".git/commondir").exists() and list((d / "target").iterdir()) == [
        d / "target/post-checkout"]
    assert note.startswith(f"the run created {d}/.git/commondir: git on this host would trust")
    assert f"(it could not be moved to {d}/.tether-quarantine: " in note
    # a .git the run created from nothing is reported, not moved
    (d / ".tether-quarantine").unlink()
    assert runner._git_created([(d, frozenset())]) == [
        f"the run created {d}/.git: git on this host would trust it (config and hooks there "
        f"can run programs); inspect it before running git in {d}, or delete it"]
    assert (d / ".git/commondir").exists()


def test_a_git_file_stays_read_only(workspace, monkeypatch, isolated):
    (workspace / ".git").write_text("gitdir: /elsewhere/.git/worktrees/w\n")
    monkeypatch.chdir(workspace)
    r = runner.run(runner.build_spec(["sh", "-c", "echo 'gitdir: evil' > .git; rm -f .git; "
                                                  "echo fine > other && echo ok"]))
    assert r.stdout.endswith(b"ok\n")
    assert (workspace / ".git").read_text() == "gitdir: /elsewhere/.git/worktrees/w\n"


def test_a_symlinked_hooks_dir_makes_the_whole_git_dir_read_only(workspace, monkeypatch,
                                                                  isolated):
    _git("init", "-q", cwd=workspace)
    (workspace / "shared-hooks").mkdir()
    import shutil

    shutil.rmtree(workspace / ".git/hooks")
    (workspace / ".git/hooks").symlink_to("../shared-hooks")
    monkeypatch.chdir(workspace)
    r = runner.run(runner.build_spec(["sh", "-c", "rm .git/hooks; mkdir .git/hooks; "
                                                  "touch .git/new; echo fine > other; echo ok"]))
    assert r.stdout.endswith(b"ok\n") and (workspace / "other").exists()
    assert (workspace / ".git/hooks").is_symlink() and not (workspace / ".git/new").exists()


def test_a_symlinked_git_dir_is_refused_in_a_writable_workspace(workspace, tmp_path,
                                                                monkeypatch, isolated):
    real = tmp_path / "real-git"
    real.mkdir()
    (workspace / ".git").symlink_to(real)
    monkeypatch.chdir(workspace)
    with pytest.raises(UsageError, match="is a symlink"):
        runner.build_spec(["true"], profile="moderate")
    assert runner.run(runner.build_spec(["true"], profile="restrictive")).exit_code == 0
