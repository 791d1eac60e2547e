"""Pure profile logic: profile + flags + tether.toml -> SandboxSpec -> bwrap argv; seccomp BPF."""

from __future__ import annotations

import struct
from dataclasses import replace
from pathlib import Path

import pytest

from tether.errors import ConfigError, UsageError
from tether.sandbox import seccomp
from tether.sandbox.profiles import (
    SANDBOX_HOME,
    CgroupFacts,
    HostFacts,
    Mount,
    NetworkMode,
    bwrap_argv,
    check_domain,
    domain_allowed,
    missing_features,
    parse_env,
    parse_mount,
    parse_size,
    resolve_spec,
)

W = Path("/work/proj")
FULL_HOST = HostFacts(bwrap="/usr/bin/bwrap", userns=True, seccomp=True, landlock_abi=7,
                      cgroup=CgroupFacts("v1", memory=True, pids=True, cpu=True),
                      system_dirs=(("/usr", None), ("/bin", "usr/bin")),
                      etc_entries=("ld.so.cache", "resolv.conf", "hosts"),
                      helper_python="/usr/bin/python3")


def spec(profile="moderate", **kw):
    kw.setdefault("workdir", W)
    return resolve_spec(profile, ["true"], **kw)


@pytest.mark.parametrize("text,expected", [
    ("512", 512), ("1K", 1024), ("1G", 1 << 30), ("1.5GiB", 3 << 29), ("64m", 64 << 20),
    (2048, 2048), (None, None),
], ids=["bytes", "kilo", "giga", "fraction-gib", "lower-m", "int", "none"])
def test_parse_size(text, expected):
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "-1G", "1X", "0"], ids=["empty", "unit-only",
                                                                 "negative", "bad-unit", "zero"])
def test_parse_size_rejects(text):
    with pytest.raises(UsageError):
        parse_size(text)


@pytest.mark.parametrize("text,expected", [
    ("data", Mount(W / "data", W / "data", False)),
    ("/srv/x:/data", Mount(Path("/srv/x"), Path("/data"), False)),
    ("/srv/x:/data:ro", Mount(Path("/srv/x"), Path("/data"), True)),
    ("/srv/x:ro", Mount(Path("/srv/x"), Path("/srv/x"), True)),
    ("../up/./x:rw", Mount(Path("/work/up/x"), Path("/work/up/x"), False)),
], ids=["relative", "src-dst", "src-dst-ro", "src-ro", "normalized"])
def test_parse_mount(text, expected):
    assert parse_mount(text, W) == expected


@pytest.mark.parametrize("text", ["", ":/x", "/a:rel", "/a:/b:/c"],
                         ids=["empty", "no-source", "relative-target", "too-many-parts"])
def test_parse_mount_rejects(text):
    with pytest.raises(UsageError):
        parse_mount(text, W)


@pytest.mark.parametrize("items,host,expected", [
    (["A=1"], {}, (("A", "1"),)),
    (["A"], {"A": "host"}, (("A", "host"),)),
    (["A"], {}, ()),
    (["A=x=y"], {}, (("A", "x=y"),)),
], ids=["value", "pass-host", "pass-unset-skipped", "equals-in-value"])
def test_parse_env(items, host, expected):
    assert parse_env(items, host) == expected


@pytest.mark.parametrize("host,allow,ok", [
    ("pypi.org", ("pypi.org",), True),
    ("PyPI.org.", ("pypi.org",), True),
    ("files.pypi.org", ("pypi.org",), False),
    ("files.pythonhosted.org", ("*.pythonhosted.org",), True),
    ("pythonhosted.org", ("*.pythonhosted.org",), False),
    ("evilpythonhosted.org", ("*.pythonhosted.org",), False),
    ("pypi.org.evil.com", ("pypi.org",), False),
], ids=["exact", "case-and-dot", "subdomain-not-implied", "wildcard", "wildcard-not-apex",
        "wildcard-suffix-trick", "prefix-trick"])
def test_domain_allowed(host, allow, ok):
    assert domain_allowed(host, allow) is ok


@pytest.mark.parametrize("bad", ["", "a b", "http://x.org", "x..org", "-x.org"],
                         ids=["empty", "space", "url", "double-dot", "leading-dash"])
def test_check_domain_rejects(bad):
    with pytest.raises(UsageError):
        check_domain(bad)


# profile, overrides, expected (network, workspace read-only, landlock, limits subset)
CASES = [
    ("restrictive", {}, (NetworkMode.NONE, True, True, {"pids": 256, "memory_bytes": 2 << 30})),
    ("moderate", {}, (NetworkMode.FULL, False, False, {"pids": None, "memory_bytes": None})),
    ("permissive", {}, (NetworkMode.FULL, False, False, {})),
    ("moderate", {"network": "none"}, (NetworkMode.NONE, False, False, {})),
    ("moderate", {"allow_domains": ["pypi.org"]}, (NetworkMode.ALLOWLIST, False, False, {})),
    ("restrictive", {"allow_domains": ["pypi.org"]}, (NetworkMode.ALLOWLIST, True, True, {})),
    ("moderate", {"memory": "1G", "pids": 64, "cpus": 0.5, "timeout": 3},
     (NetworkMode.FULL, False, False,
      {"memory_bytes": 1 << 30, "pids": 64, "cpus": 0.5, "timeout_s": 3})),
    ("restrictive", {"landlock": False}, (NetworkMode.NONE, True, False, {})),
    ("moderate", {"config": {"network": "none", "pids": 10}}, (NetworkMode.NONE, False, False,
                                                               {"pids": 10})),
    ("moderate", {"config": {"pids": 10}, "pids": 20}, (NetworkMode.FULL, False, False,
                                                         {"pids": 20})),
    (None, {"config": {"profile": "restrictive"}}, (NetworkMode.NONE, True, True, {})),
    (None, {}, (NetworkMode.FULL, False, False, {})),
]


@pytest.mark.parametrize("profile,kw,expected", CASES, ids=[
    "restrictive", "moderate", "permissive", "flag-no-network", "domains-narrow-full",
    "domains-open-none", "flag-limits", "landlock-off", "toml-overrides-profile",
    "flag-overrides-toml", "toml-picks-profile", "default-is-moderate"])
def test_resolve_spec(profile, kw, expected):
    net, ro, landlock, limits = expected
    s = resolve_spec(profile, ["true"], workdir=W, **kw)
    assert s.network is net
    work = next(m for m in s.mounts if m.target == W)
    assert work.read_only is ro
    assert s.landlock is landlock
    for key, value in limits.items():
        assert getattr(s.limits, key) == value


@pytest.mark.parametrize("kw,error", [
    ({"network": "allowlist"}, UsageError),
    ({"network": "none", "allow_domains": ["x.org"]}, UsageError),
    ({"network": "bogus"}, UsageError),
    ({"config": {"nope": 1}}, ConfigError),
    ({"config": {"pids": "many"}}, ConfigError),
    ({"mounts": ["/srv:/proc/x"]}, UsageError),
    ({"pids": 0}, UsageError),
    ({"workdir": Path("/home/u"), "host_env": {"HOME": "/home/u"}}, UsageError),
    ({"mounts": ["/home:/h:ro"], "host_env": {"HOME": "/home/u"}}, UsageError),
], ids=["allowlist-without-domains", "no-network-and-domain", "bad-network", "unknown-key",
        "wrong-type", "mount-over-proc", "zero-pids", "workspace-is-home", "mount-above-home"])
def test_resolve_spec_rejects(kw, error):
    kw.setdefault("workdir", W)
    with pytest.raises(error):
        resolve_spec("moderate", ["true"], **kw)


def test_unknown_profile_and_empty_command():
    with pytest.raises(UsageError, match="unknown sandbox profile"):
        resolve_spec("yolo", ["true"], workdir=W)
    with pytest.raises(UsageError, match="no command"):
        resolve_spec("moderate", [], workdir=W)


@pytest.mark.parametrize("profile,host_env,present,absent", [
    ("permissive", {"LANG": "C.UTF-8", "AWS_SECRET_ACCESS_KEY": "s"}, {"LANG"},
     {"AWS_SECRET_ACCESS_KEY"}),
    ("restrictive", {"LANG": "C.UTF-8", "GITHUB_TOKEN": "t"}, set(), {"LANG", "GITHUB_TOKEN"}),
    ("moderate", {"SSH_AUTH_SOCK": "/run/x", "HOME": "/root"}, {"HOME"}, {"SSH_AUTH_SOCK"}),
], ids=["permissive-passes-chosen", "restrictive-passes-nothing", "moderate-no-agent"])
def test_environment_is_explicit(profile, host_env, present, absent):
    env = dict(spec(profile, host_env=host_env).env)
    assert present <= set(env) and not (absent & set(env))
    assert env["HOME"] == SANDBOX_HOME


def test_allowlist_sets_proxy_env():
    env = dict(spec(allow_domains=["pypi.org"]).env)
    assert env["HTTPS_PROXY"] == "http://127.0.0.1:3128"
    assert env["ALL_PROXY"].startswith("socks5h://")


def _pairs(argv, flag):
    return [tuple(argv[i + 1:i + 3]) for i, a in enumerate(argv) if a == flag]


@pytest.mark.parametrize("profile,kw,must,must_not", [
    ("moderate", {}, ["--share-net", "--unshare-all", "--die-with-parent", "--new-session"],
     []),
    ("restrictive", {}, ["--unshare-all"], ["--share-net"]),
    ("moderate", {"allow_domains": ["pypi.org"]}, ["--unshare-all"], ["--share-net"]),
], ids=["full-shares-net", "none-unshares", "allowlist-unshares"])
def test_bwrap_argv_network(profile, kw, must, must_not):
    argv = bwrap_argv(spec(profile, **kw), FULL_HOST)
    assert all(f in argv for f in must) and not any(f in argv for f in must_not)
    assert argv[argv.index("--cap-drop") + 1] == "ALL"


def test_bwrap_argv_filesystem():
    s = spec("restrictive", mounts=["/srv/data:/data"])
    argv = bwrap_argv(s, FULL_HOST, seccomp_fd=7)
    assert ("/usr", "/usr") in _pairs(argv, "--ro-bind")
    assert ("usr/bin", "/bin") in _pairs(argv, "--symlink")
    assert (str(W), str(W)) in _pairs(argv, "--ro-bind")          # workspace read-only
    assert ("/srv/data", "/data") in _pairs(argv, "--bind")
    assert ["--tmpfs", SANDBOX_HOME] == argv[argv.index(SANDBOX_HOME) - 1:][:2]
    assert argv[argv.index("--seccomp") + 1] == "7"
    assert argv[-2:] == ["--", "true"]
    # /etc entry by entry without a prepared dir; resolver files only with the host network
    assert ("/etc/ld.so.cache", "/etc/ld.so.cache") in _pairs(argv, "--ro-bind")
    assert all("/etc/resolv.conf" != a for a in argv)
    assert not any(a in ("/etc", "/home", "/root", "/run/user") and b == a
                   for a, b in _pairs(argv, "--bind") + _pairs(argv, "--ro-bind"))


def test_bwrap_argv_prepared_etc_and_helper():
    s = spec("moderate", allow_domains=["pypi.org"])
    argv = bwrap_argv(s, FULL_HOST, etc_dir="/c/etc", helper=["/usr/bin/python3", "h", "--"],
                      helper_file="/pkg/_helper.py", proxy_socket="/tmp/p/proxy.sock")
    assert ("/c/etc", "/etc") in _pairs(argv, "--ro-bind")
    assert ("/pkg/_helper.py", "/run/tether/helper.py") in _pairs(argv, "--ro-bind")
    assert ("/tmp/p/proxy.sock", "/run/tether/proxy.sock") in _pairs(argv, "--bind")
    assert argv[-5:] == ["--", "/usr/bin/python3", "h", "--", "true"]


def test_bwrap_argv_rootfs():
    argv = bwrap_argv(spec(rootfs=Path("/r")), FULL_HOST, etc_dir="/c/etc")
    assert ("/r/usr", "/usr") in _pairs(argv, "--ro-bind-try")
    assert ("/r/etc", "/etc") in _pairs(argv, "--ro-bind")
    assert ("/c/etc", "/etc") not in _pairs(argv, "--ro-bind")


def test_secrets_never_on_argv():
    s = spec("permissive", env=["API_KEY=hunter2"])
    assert "hunter2" not in " ".join(bwrap_argv(s, FULL_HOST))
    assert dict(s.env)["API_KEY"] == "hunter2"


@pytest.mark.parametrize("host,kw,missing", [
    (FULL_HOST, {}, []),
    (HostFacts(), {}, ["bwrap", "userns", "seccomp"]),
    (HostFacts(bwrap="b", userns=True, seccomp=True), {"profile": "restrictive"},
     ["landlock", "helper", "pids"]),
    (HostFacts(bwrap="b", userns=True, seccomp=True, helper_python="p",
               cgroup=CgroupFacts("v1", pids=True)), {"cpus": 1}, ["cpu"]),
    (HostFacts(bwrap="b", userns=True, seccomp=True, cgroup=CgroupFacts("v1", pids=True)),
     {"memory": "1G"}, []),
], ids=["all-there", "nothing", "restrictive-needs-landlock-and-pids", "cpu-needs-cgroup",
        "memory-falls-back-to-rlimit"])
def test_missing_features(host, kw, missing):
    profile = kw.pop("profile", "moderate")
    assert missing_features(spec(profile, **kw), host) == missing


def _decode(prog: bytes):
    return [struct.unpack("<HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]


@pytest.mark.parametrize("arch", ["x86_64", "aarch64"])
def test_syscall_table_matches_libseccomp(arch):
    pyseccomp = pytest.importorskip("pyseccomp")
    a = {"x86_64": pyseccomp.Arch.X86_64, "aarch64": pyseccomp.Arch.AARCH64}[arch]
    for name, nr in seccomp.SYSCALLS[arch].items():
        assert pyseccomp.resolve_syscall(a, name) == nr, name


def test_seccomp_filter_shape():
    prog = _decode(seccomp.build_filter("x86_64", deny_sockets=True))
    assert prog[0] == (0x20, 0, 0, 4)                     # load arch first
    assert prog[2] == (0x06, 0, 0, seccomp.RET_KILL_PROCESS)
    assert prog[-1] == (0x06, 0, 0, seccomp.RET_ALLOW)
    denied = {k for code, jt, jf, k in prog if code == 0x15}
    for name in ("ptrace", "mount", "bpf", "keyctl", "process_vm_writev", "socket"):
        assert seccomp.SYSCALLS["x86_64"][name] in denied
    no_sock = _decode(seccomp.build_filter("x86_64", deny_sockets=False))
    assert seccomp.SYSCALLS["x86_64"]["socket"] not in {k for c, _, _, k in no_sock if c == 0x15}
    assert all(jt < 255 and jf < 255 for _, jt, jf, _ in prog)


@pytest.mark.parametrize("kw,expect_in,expect_out", [
    ({"profile": "restrictive"}, ["--landlock", "7", "--rw", "/tmp", "--dev"], ["--forward"]),
    ({"profile": "moderate", "allow_domains": ["a.org"]}, ["--forward", "3128", "1080",
                                                          "--filter"], ["--landlock"]),
    ({"profile": "restrictive", "mounts": ["/srv/o:/out"]}, ["/out"], ["/srv/o", str(W)]),
    ({"profile": "restrictive"}, ["--scope", "3"], []),
    ({"profile": "moderate"}, ["--scope", "1"], ["--landlock", "--rw", "--forward"]),
], ids=["landlock-only", "forwarder-only", "rw-mounts-only", "restrictive-scopes-sockets-signals",
        "moderate-scopes-sockets-only"])
def test_helper_options(kw, expect_in, expect_out):
    from tether.sandbox.landlock import helper_options

    profile = kw.pop("profile")
    opts = helper_options(spec(profile, **kw), FULL_HOST)
    assert all(x in opts for x in expect_in) and not any(x in opts for x in expect_out)


def test_helper_parses_what_the_host_writes():
    from tether.sandbox import _helper
    from tether.sandbox.landlock import helper_options

    s = spec("restrictive", allow_domains=["a.org"], mounts=["/srv/o:/out"])
    config, command = _helper.parse([*helper_options(s, FULL_HOST), "--", "echo", "--rw"])
    assert command == ["echo", "--rw"]
    assert config["ports"] == [3128, 1080] and config["landlock"] == 7 and config["scope"] == 3
    assert "/out" in config["writable"] and config["dev_writable"] == ["/dev"]
    assert bytes.fromhex(config["socket_filter"]) == seccomp.build_socket_filter("x86_64")


@pytest.mark.parametrize("native,kw,program,bound", [
    ("/c/helper", {}, "/run/tether/helper", "/c/helper"),
    (None, {}, "/usr/bin/python3", "_helper.py"),
    ("/c/helper", {"allow_domains": ["a.org"]}, "/run/tether/helper", "/c/helper"),
    (None, {"allow_domains": ["a.org"]}, "/usr/bin/python3", "_helper.py"),
], ids=["native-for-landlock", "python-without-compiler", "native-forwarder",
        "python-forwarder"])
def test_helper_choice(native, kw, program, bound):
    from dataclasses import replace

    from tether.sandbox.landlock import helper_argv, helper_file

    host = replace(FULL_HOST, helper_native=native)
    s = spec("restrictive", **kw)
    assert helper_argv(s, host)[0] == program
    assert helper_file(s, host).endswith(bound)
    argv = bwrap_argv(s, host, helper=helper_argv(s, host), helper_file=helper_file(s, host))
    target = "/run/tether/helper.py" if bound.endswith(".py") else "/run/tether/helper"
    assert (helper_file(s, host), target) in _pairs(argv, "--ro-bind")


@pytest.mark.parametrize("profile,host,scopes,helper", [
    ("moderate", FULL_HOST, 1, True),
    ("permissive", FULL_HOST, 1, True),
    ("restrictive", FULL_HOST, 3, True),
    ("moderate", replace(FULL_HOST, landlock_abi=5), 0, False),
    ("restrictive", replace(FULL_HOST, landlock_abi=5), 0, True),
    ("moderate", replace(FULL_HOST, helper_python=None), 0, False),
    ("moderate", replace(FULL_HOST, helper_native="/c/helper", helper_python=None), 1, True),
], ids=["moderate", "permissive", "restrictive", "moderate-abi5", "restrictive-abi5",
        "moderate-no-helper", "moderate-native-helper"])
def test_abstract_sockets_are_scoped_wherever_the_kernel_can(profile, host, scopes, helper):
    from tether.sandbox.profiles import landlock_scopes, needs_helper

    s = spec(profile)
    assert landlock_scopes(s, host) == scopes and needs_helper(s, host) is helper
    # a root filesystem may not hold the host's python3: only the static helper scopes there
    rooted = spec(profile, rootfs=Path("/srv/root"))
    assert landlock_scopes(rooted, replace(host, helper_native=None)) == (
        scopes if profile == "restrictive" else 0)


@pytest.mark.parametrize("abi,scoped,says", [
    (7, {"restrictive": ["abstract_unix_socket", "signal"],
         "moderate": ["abstract_unix_socket"], "permissive": ["abstract_unix_socket"]},
     "scoped to the sandbox in every profile"),
    (5, {"restrictive": [], "moderate": [], "permissive": []}, "NOT scoped: needs Landlock ABI 6"),
], ids=["abi7", "abi5"])
def test_probe_reports_abstract_socket_scoping(abi, scoped, says):
    from tether.sandbox.probe import report

    data = report(replace(FULL_HOST, landlock_abi=abi))
    assert {n: p["scoped"] for n, p in data["profiles"].items()} == scoped
    assert data["mechanisms"]["abstract_unix_sockets"].startswith(says)


def _rw(rel):
    return Mount(W / rel, W / rel, False)


def _ro(rel):
    return Mount(W / rel, W / rel, True)


@pytest.mark.parametrize("kinds,expected", [
    ({}, ()),
    ({".git": "dir", ".git/config": "file", ".git/hooks": "dir"},
     (_rw(".git"), _ro(".git/config"), _ro(".git/hooks"))),
    ({".git": "dir", ".git/config": "file", ".git/commondir": "file", ".git/modules": "dir"},
     (_rw(".git"), _ro(".git/config"), _ro(".git/commondir"), _ro(".git/modules"))),
    ({".git": "dir", ".git/config": "file", ".git/hooks": "link"}, (_ro(".git"),)),
    ({".git": "file"}, (_ro(".git"),)),
    ({"tether.toml": "file"}, (_ro("tether.toml"),)),
    ({"tether.toml": "link"}, ()),
], ids=["nothing", "repo", "repo-with-redirects", "symlinked-hooks", "gitfile", "tether-toml",
        "tether-toml-link"])
def test_workspace_guards(kinds, expected):
    from tether.sandbox.profiles import workspace_guards

    assert workspace_guards(W, kinds) == expected
    # in a writable workspace they follow its bind; a read-only one needs none
    assert spec("moderate", protect=kinds).mounts[1:] == expected
    assert spec("restrictive", protect=kinds).mounts[1:] == ()


def test_a_symlinked_git_dir_is_refused_in_a_writable_workspace():
    with pytest.raises(UsageError, match="is a symlink") as exc:
        spec("moderate", protect={".git": "link"})
    assert "restrictive" in exc.value.hint
    assert spec("restrictive", protect={".git": "link"}).mounts[1:] == ()
