"""`tether up --ide --ide-password-file F`: the IDE password from a file or stdin, never argv."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tether.ide import password

PASSWORD = "from-a-file-password-42"


@pytest.fixture
def password_file(tmp_path) -> Path:
    f = tmp_path / "ide-password"
    f.write_text(PASSWORD + "\n")
    f.chmod(0o600)
    return f


@pytest.mark.parametrize(("extra", "env", "fragment"), [
    ((), None, "need --ide"),
    (("--ide",), PASSWORD, "both give the IDE password"),
], ids=["without-ide", "with-env-too"])
def test_password_file_misuse_is_refused_before_anything(cli, isolated, monkeypatch, tmp_path,
                                                         password_file, extra, env, fragment):
    monkeypatch.delenv(password.ENV, raising=False)
    if env:
        monkeypatch.setenv(password.ENV, env)
    r = cli("up", str(tmp_path), *extra, "--ide-password-file", str(password_file))
    assert r.exit_code == 2, r.stderr
    assert r.stderr.startswith("error: ") and fragment in r.stderr.splitlines()[0]
    assert r.stderr.splitlines()[1].startswith("hint: ")
    assert "Traceback" not in r.stderr and PASSWORD not in r.stdout + r.stderr
    assert password.stored() is None
    assert not (isolated.tether_home / "state" / "host" / "sshd_config").exists()


@pytest.mark.parametrize(("content", "fragment"), [
    (None, "could not read the IDE password from"),
    ("short", "at least 12 characters"),
], ids=["missing-file", "weak"])
def test_bad_password_file_is_a_usage_error(cli, isolated, monkeypatch, tmp_path, content,
                                            fragment):
    monkeypatch.delenv(password.ENV, raising=False)
    f = tmp_path / "pw"
    if content is not None:
        f.write_text(content)
    r = cli("up", str(tmp_path), "--ide", "--ide-password-file", str(f))
    assert r.exit_code == 2, r.stderr
    first, hint = r.stderr.splitlines()[:2]
    assert first.startswith("error: ") and fragment in first
    assert hint.startswith("hint: ")
    assert password.stored() is None


@pytest.mark.ide
@pytest.mark.timeout(120, func_only=True)
def test_up_ide_takes_the_password_from_a_file(ide_env, cli, tmp_path, password_file):
    ws = tmp_path / "ws"
    ws.mkdir()
    password.set_password("an-older-stored-password")  # the file replaces it
    r = cli("up", str(ws), "--ide", "--ide-password-file", str(password_file), "--detach",
            "--json")
    assert r.exit_code == 0, r.stderr
    try:
        info = r.json()
        assert PASSWORD not in r.stdout + r.stderr  # not shown without --show-password
        assert info["ide"]["password_generated"] is False
        base = info["ide"]["url"]
        old = httpx.post(base + "login", data={"password": "an-older-stored-password"})
        assert old.status_code == 200 and "set-cookie" not in old.headers
        right = httpx.post(base + "login", data={"password": PASSWORD})
        assert right.status_code == 302 and "code-server-session" in right.headers.get(
            "set-cookie", "")
        assert cli("ide", "password", "--json").json()["password"] == PASSWORD
        for proc in Path("/proc").iterdir():  # the IDE, the detached `up`: none carries it
            if proc.name.isdigit():
                try:
                    assert PASSWORD.encode() not in (proc / "cmdline").read_bytes()
                except OSError:
                    continue
    finally:
        down = cli("down", "--json")
    assert down.exit_code == 0 and down.json()["stopped"], down.stderr
