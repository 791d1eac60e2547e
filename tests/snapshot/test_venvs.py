"""Virtualenvs in snapshots: recorded interpreter and packages, checks, --rebuild-venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tether.snapshot import api, venvs

pytestmark = pytest.mark.timeout(120)


@pytest.mark.parametrize("names,expected", [
    (["numpy-1.26.4.dist-info", "pip-24.0.dist-info", "setuptools-69.dist-info"],
     ("numpy==1.26.4",)),
    (["typing_extensions-4.9.0.dist-info", "Rich-13.7.1.dist-info", "README.txt"],
     ("Rich==13.7.1", "typing_extensions==4.9.0")),
    (["pkg-1.0.egg-info", "__pycache__"], ()),
], ids=["skips-pip-tools", "sorted-case-insensitive", "ignores-non-dist-info"])
def test_freeze_from_dist_info_names(names, expected):
    assert venvs.freeze_from_names(names) == expected


@pytest.mark.parametrize("line", ["--index-url=http://evil.example/simple", "-r /etc/passwd",
                                  "-e git+https://evil.example/x.git", "pkg @ http://x/p.whl",
                                  "pkg>=1", "pkg==1.0; os_name=='posix'"],
                         ids=["index-url", "requirement-file", "editable", "url", "range",
                              "marker"])
def test_tampered_package_lists_are_refused(line):
    from tether.errors import IntegrityError

    with pytest.raises(IntegrityError, match="unexpected line"):
        venvs.check_freeze(("numpy==1.26.4", line))


def test_plain_package_lists_pass():
    venvs.check_freeze(("numpy==1.26.4", "typing_extensions==4.9.0", "torch==2.1.0+cu121"))


@pytest.fixture
def project(tmp_path):
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "main.py").write_text("print('hi')\n")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(proj / ".venv")],
                   check=True)
    site = next((proj / ".venv" / "lib").glob("python*/site-packages"))
    (site / "tinypkg-1.0.dist-info").mkdir()
    return proj


def _set_home(venv: Path, home: str) -> None:
    cfg = venv / "pyvenv.cfg"
    lines = [f"home = {home}" if line.startswith("home") else line
             for line in cfg.read_text().splitlines()]
    cfg.write_text("\n".join(lines) + "\n")


def test_venv_is_recorded_and_restores_cleanly_in_place(tmp_path, isolated, project):
    url = f"file://{tmp_path}/repo"
    api.push(url, project)
    snap = api.list_snapshots(url)[0]
    assert snap.venvs == [".venv"]
    r = api.pull(url, replace=True)
    assert r.path == str(project) and r.warnings == []
    assert (project / ".venv" / "bin" / "python").is_symlink()  # absolute link kept
    out = subprocess.run([str(project / ".venv" / "bin" / "python"), "-c",
                          "import sys; print(sys.prefix)"], capture_output=True, text=True)
    assert out.stdout.strip() == str(project / ".venv")


def test_venv_restored_elsewhere_warns(tmp_path, isolated, project):
    url = f"file://{tmp_path}/repo"
    api.push(url, project)
    r = api.pull(url, tmp_path / "elsewhere")
    assert len(r.warnings) == 1 and "restored to" in r.warnings[0]
    assert "--rebuild-venv" in r.warnings[0]


def test_missing_interpreter_warns_and_rebuild_recreates(tmp_path, isolated, project):
    url = f"file://{tmp_path}/repo"
    _set_home(project / ".venv", "/nonexistent/python/bin")
    api.push(url, project)
    r = api.pull(url, replace=True)
    assert any("not on this machine" in w for w in r.warnings)
    # the recorded list has tinypkg, which does not exist: drop it to keep the test offline
    (next((project / ".venv" / "lib").glob("python*/site-packages")) /
     "tinypkg-1.0.dist-info").rmdir()
    _set_home(project / ".venv", "/nonexistent/python/bin")
    api.push(url, project)
    r = api.pull(url, replace=True, rebuild_venv=True)
    assert any("rebuilt virtualenv" in w for w in r.warnings)
    cfg = venvs.parse_cfg((project / ".venv" / "pyvenv.cfg").read_text())
    assert Path(cfg["home"]).exists()
    assert (project / "main.py").read_text() == "print('hi')\n"


def _set_version(venv: Path, version: str) -> None:
    cfg = venv / "pyvenv.cfg"
    lines = [line for line in cfg.read_text().splitlines()
             if not line.startswith(("version", "version_info"))]
    cfg.write_text("\n".join(lines + [f"version = {version}"]) + "\n")


def test_failed_rebuild_says_the_files_are_restored(tmp_path, cli, project):
    """The rebuild runs after the swap: its failure must not read like a failed pull."""
    url = f"file://{tmp_path}/repo"
    _set_version(project / ".venv", "9.9.1")          # no Python 9.9 here: rebuild fails
    assert cli("snapshot", "push", str(project), url).exit_code == 0
    dest = tmp_path / "elsewhere"
    r = cli("snapshot", "pull", url, str(dest), "--rebuild-venv")
    assert r.exit_code == 3, r.stderr                 # partial: restored, venv not rebuilt
    error, hint = r.stderr.strip().splitlines()[-2:]
    assert error.startswith("error: restored ") and f"to {dest} (" in error
    assert f"rebuilding the virtualenv at {dest / '.venv'} failed: no Python 9.9" in error
    assert hint == "hint: the files are restored; install python9.9, then pull again with " \
        "--rebuild-venv"
    assert (dest / "main.py").read_text() == "print('hi')\n"
    j = cli("snapshot", "pull", url, str(tmp_path / "again"), "--rebuild-venv", "--json")
    assert j.exit_code == 3 and j.json()["kind"] == "PartialFailureError"
