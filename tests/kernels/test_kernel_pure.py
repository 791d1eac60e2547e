"""Pure parts of the kernel link: argv builders, the launcher wire format, error mapping,
kernelspec <-> JSON and probe -> health checks. Table-driven, no network."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tether import errors
from tether.kernels import link, remote_launcher, specs, target
from tether.kernels.target import SshTarget

T = SshTarget("gpu", Path("/cfg"))


def test_launcher_and_link_agree_on_the_wire_constants():
    assert remote_launcher.MARK == link.MARK
    assert remote_launcher.PROTOCOL == link.PROTOCOL
    assert remote_launcher.PORT_NAMES == link.PORT_NAMES


@pytest.mark.parametrize("python", ["/usr/bin/python3", "/opt/my env/bin/python",
                                    "/x/$(rm -rf ~)/python"], ids=["plain", "space", "subst"])
def test_remote_command_is_one_safely_quoted_shell_line(python):
    words = shlex.split(target.remote_command(python))
    assert words == [python, "-c", target.BOOTSTRAP]


def test_bootstrap_needs_no_nested_quoting():
    assert "'" not in target.BOOTSTRAP
    assert target.remote_command("/usr/bin/python3") == (
        "/usr/bin/python3 -c '" + target.BOOTSTRAP + "'")


def test_master_argv_is_a_control_master_with_the_session_options_and_alias_last():
    argv = target.master_argv(T, Path("/tmp/tk-x/c"), "/usr/bin/python3")
    assert argv[:3] == ["ssh", "-F", "/cfg"]
    assert argv[argv.index("-S") + 1] == "/tmp/tk-x/c" and "-M" in argv
    opts = {argv[i + 1] for i, a in enumerate(argv) if a == "-o"}
    assert {"BatchMode=yes", "ClearAllForwardings=yes", "RemoteCommand=none",
            "ControlPersist=no", "ServerAliveInterval=5"} <= opts
    assert argv[-3:-1] == ["--", "gpu"]


def test_forward_argv_binds_locally_and_targets_remote_loopback():
    argv = target.forward_argv(SshTarget("gpu"), Path("/c"), "127.0.0.1", [(5000, 6000),
                                                                          (5001, 6001)])
    assert argv == ["ssh", "-S", "/c", "-O", "forward",
                    "-L", "127.0.0.1:5000:127.0.0.1:6000", "-L", "127.0.0.1:5001:127.0.0.1:6001",
                    "--", "gpu"]


def test_control_argv_cancels_the_same_specs_and_forwards_a_local_socket():
    cancel = target.forward_argv(SshTarget("gpu"), Path("/c"), "127.0.0.1", [(5000, 6000)],
                                 op="cancel")
    assert cancel == ["ssh", "-S", "/c", "-O", "cancel", "-L", "127.0.0.1:5000:127.0.0.1:6000",
                      "--", "gpu"]
    agent = target.control_argv(T, Path("/tmp/tk-x/c"), "forward", ["/tmp/tk-x/a:127.0.0.1:7"])
    assert agent[:3] == ["ssh", "-F", "/cfg"] and agent[-4:] == [
        "-L", "/tmp/tk-x/a:127.0.0.1:7", "--", "gpu"]
    with pytest.raises(ValueError):
        target.control_argv(T, Path("/c"), "exit", [])


def test_bootstrap_runs_the_source_and_leaves_the_rest_of_stdin_to_it():
    source = b"import sys\nprint('got', sys.stdin.buffer.readline().decode().strip())\n"
    payload = target.launcher_payload(source, b'{"op": "probe"}')
    out = subprocess.run([sys.executable, "-c", target.BOOTSTRAP], input=payload,
                         capture_output=True, timeout=20)
    assert out.stdout.decode().strip() == 'got {"op": "probe"}'


def test_parse_ssh_g_keeps_every_value_of_repeated_keywords():
    text = "user root\nhostname 10.0.0.5\nidentityfile ~/.ssh/a\nidentityfile ~/.ssh/b\n"
    assert target.parse_ssh_g(text) == {"user": ["root"], "hostname": ["10.0.0.5"],
                                        "identityfile": ["~/.ssh/a", "~/.ssh/b"]}


@pytest.mark.parametrize("line,expected", [
    ('TETHER-KERNEL/1 {"event": "started"}', {"event": "started"}),
    ("Welcome to the GPU box!", None),
    ("TETHER-KERNEL/1 [1, 2]", None),
], ids=["event", "banner", "not-an-object"])
def test_parse_line(line, expected):
    assert link.parse_line(line) == expected


def test_parse_line_rejects_a_garbled_event():
    with pytest.raises(errors.ProtocolError):
        link.parse_line("TETHER-KERNEL/1 {nope")


@pytest.mark.parametrize("rc,stderr,cls,words", [
    (255, "Host key verification failed.", errors.HostKeyMismatchError, "host key"),
    (255, "root@x: Permission denied (publickey).", errors.AuthError, "refused"),
    (255, "ssh: connect to host x port 22: Connection refused", errors.ConnectError,
     "cannot reach gpu"),
    (127, "bash: line 1: /opt/py: No such file or directory", errors.NotFoundError,
     "does not run"),
    (1, "Traceback ...\nSyntaxError: invalid syntax", errors.PeerError, "launcher failed"),
], ids=["host-key", "auth", "unreachable", "no-python", "python-too-old"])
def test_session_failure_names_what_went_wrong(rc, stderr, cls, words):
    err = link.session_failure(T, "/opt/py", rc, stderr)
    assert type(err) is cls and words in err.message and err.hint


@pytest.mark.parametrize("code,cls", [
    ("no_kernelspec", errors.NotFoundError), ("not_found", errors.NotFoundError),
    ("not_attachable", errors.NotFoundError), ("exists", errors.AlreadyExistsError),
    ("version", errors.ProtocolError), ("spawn_failed", errors.PeerError),
], ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_launcher_errors_map_to_the_error_tree(code, cls):
    err = link.launcher_error(T, {"event": "error", "code": code, "message": "m"})
    assert type(err) is cls and "on gpu" in err.message


SPEC = specs.RemoteKernelSpec(name="gpu", host="box", python="/usr/bin/python3")


@pytest.mark.parametrize("spec", [
    SPEC,
    specs.RemoteKernelSpec(name="a.b-c_d", host="user@10.0.0.1", python="/p/python",
                           remote_kernel="ir", display_name="R on box", ssh_config="/c",
                           interrupt_mode=specs.InterruptMode.MESSAGE, lifetime="session",
                           grace_s=0, remote_argv=("/p/python", "-m", "x"), language="R",
                           remote_state_dir="/tmp/k"),
], ids=["defaults", "everything"])
def test_spec_json_round_trip(spec):
    data = json.loads(json.dumps(specs.spec_to_json(spec)))
    assert specs.spec_from_json(data) == spec
    assert data["metadata"]["kernel_provisioner"]["provisioner_name"] == "tether-ssh-provisioner"
    assert "{connection_file}" in data["argv"]  # the argv shim for provisioner-less frontends


def test_spec_from_json_refuses_foreign_specs():
    with pytest.raises(errors.ConfigError):
        specs.spec_from_json({"argv": ["python"], "display_name": "Python 3",
                              "language": "python"})


@pytest.mark.parametrize("changes,words", [
    ({"name": "Bad Name"}, "invalid kernel name"),
    ({"python": "python3"}, "absolute path"),
    ({"host": "-oProxyCommand=evil"}, "invalid host"),
    ({"lifetime": "forever"}, "invalid lifetime"),
    ({"grace_s": -1.0}, "negative"),
], ids=["name", "python", "host", "lifetime", "grace"])
def test_validate_rejects(changes, words):
    from dataclasses import replace

    with pytest.raises(errors.UsageError, match=words):
        specs.validate(replace(SPEC, **changes))


@pytest.mark.parametrize("info,results", [
    ({"python": "3.11", "ipykernel": "7.0", "kernelspec": {"argv": ["p"]}},
     [True, True, True, True]),
    ({"python": "3.11", "ipykernel": None, "ipykernel_error": "ModuleNotFoundError"},
     [True, True, False, None]),
    ({"python": "3.11", "ipykernel": "7.0", "kernelspec": None, "kernelspecs": ["ir"]},
     [True, True, True, False]),
], ids=["healthy", "no-ipykernel", "no-kernelspec"])
def test_checks_from_probe(info, results):
    checks = specs.checks_from_probe(SPEC, info)
    assert [c.ok for c in checks] == results
    assert [c.name for c in checks] == list(specs.CHECKS)


@pytest.mark.parametrize("exc,results", [
    (errors.ConnectError("cannot reach box"), [False, None, None, None]),
    (errors.NotFoundError("remote python ... does not run"), [True, False, None, None]),
], ids=["unreachable", "no-python"])
def test_checks_from_failure(exc, results):
    checks = specs.checks_from_failure(exc)
    assert [c.ok for c in checks] == results
    assert next(c for c in checks if c.ok is False).error is exc


def test_with_probe_caches_argv_and_keeps_an_explicit_interrupt_mode():
    info = {"kernelspec": {"argv": ["/p", "-m", "ipykernel_launcher"],
                           "interrupt_mode": "signal", "language": "python"}}
    learned = specs.with_probe(SPEC, info, specs.InterruptMode.MESSAGE)
    assert learned.remote_argv == ("/p", "-m", "ipykernel_launcher")
    assert learned.interrupt_mode is specs.InterruptMode.MESSAGE
    assert specs.with_probe(SPEC, info, None).interrupt_mode is specs.InterruptMode.SIGNAL


@pytest.mark.parametrize("argv,expected", [
    (["python", "-m", "ipykernel_launcher"], [sys.executable, "-m", "ipykernel_launcher"]),
    (["/opt/conda/bin/python", "-m", "k"], ["/opt/conda/bin/python", "-m", "k"]),
], ids=["bare-python-is-this-interpreter", "absolute-kept"])
def test_launcher_resolves_a_bare_python(argv, expected):
    assert remote_launcher.resolve_argv("ignored", argv) == expected


def test_resolve_target_maps_a_tether_host_name_to_its_block(isolated):
    from tether.ssh.config import ManagedBlock, upsert_block

    cfg = isolated.home / ".ssh" / "config"
    upsert_block(ManagedBlock("tether-laptop", "tether-laptop",
                              (("HostName", "127.0.0.1"),)), cfg)
    assert target.resolve_target("laptop", cfg) == SshTarget("tether-laptop", cfg)
    assert target.resolve_target("other", cfg) == SshTarget("other", cfg)
    # $HOME/.ssh/config is not what OpenSSH reads here (passwd home): it is named explicitly
    assert target.resolve_target("laptop").config_file == cfg


@pytest.mark.parametrize("host,ssh_config,cls", [
    ("", None, errors.UsageError),
    ("-oProxyCommand=x", None, errors.UsageError),
    ("gpu box", None, errors.UsageError),
    ("gpu", "/nonexistent/ssh_config", errors.ConfigError),
], ids=["empty", "option", "space", "missing-config"])
def test_resolve_target_rejects(isolated, host, ssh_config, cls):
    with pytest.raises(cls):
        target.resolve_target(host, ssh_config)


def test_kernel_records_round_trip_prefix_lookup_and_pruning(isolated):
    import stat

    from tether.kernels import registry

    def rec(kid, started):
        return registry.KernelRecord(kid, "gpu", "box", "/p", "", "", "grace", started)

    registry.save_record(rec("aaaa-1111", 1000.0))
    registry.save_record(rec("aaaa-2222", 2000.0))
    path = registry.records_dir() / "aaaa-1111.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert registry.find_record("aaaa-2").kernel_id == "aaaa-2222"
    with pytest.raises(errors.UsageError, match="ambiguous"):
        registry.find_record("aaaa")
    with pytest.raises(errors.NotFoundError):
        registry.find_record("zzzz")
    registry.save_record(rec("bbbb-3333", 2000.0 + registry.PRUNE_AFTER_S + 1))
    assert [r.kernel_id for r in registry.list_records()] == ["bbbb-3333"]


def test_launcher_is_stdlib_only_python_3_8():
    """It runs on whatever python the remote has: no tether, no third-party imports."""
    import ast

    tree = ast.parse(link.launcher_source().decode(), feature_version=(3, 8))
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    # jupyter_client is only imported when no argv was cached, and reported if missing
    assert imported - set(sys.stdlib_module_names) == {"jupyter_client"}
