"""What the installed `tether` prints on stderr when nothing goes wrong: nothing but its own
lines (no third-party warnings), checked in real processes, as a user would see them."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.timeout(90)


def _run(tether_bin: str, *args: str) -> subprocess.CompletedProcess:
    # PYTHONWARNINGS=default shows every warning once per place: were asyncssh's DSA
    # deprecation warnings not silenced at the seam, they would print here.
    env = {**os.environ, "PYTHONWARNINGS": "default"}
    return subprocess.run([tether_bin, *args], capture_output=True, text=True, env=env,
                          timeout=60, stdin=subprocess.DEVNULL)


def _warning_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "Warning" in line or "warn(" in line]


def test_cp_and_status_print_no_warnings(paired, tether_bin, tmp_path) -> None:
    src = tmp_path / "f.txt"
    src.write_text("hello")
    (tmp_path / "remote").mkdir()
    r = _run(tether_bin, "cp", str(src), f"{paired}:{tmp_path}/remote/")
    assert r.returncode == 0, r.stderr
    assert _warning_lines(r.stderr) == [], r.stderr
    r = _run(tether_bin, "status", paired)
    assert r.returncode == 0, r.stderr
    assert _warning_lines(r.stderr) == [] and r.stderr == "", r.stderr


def test_the_filter_is_narrow() -> None:
    """Only asyncssh's CryptographyDeprecationWarning is ignored, not other modules' ones."""
    code = ("import warnings; from tether.link._asyncssh import asyncssh; "
            "from cryptography.utils import CryptographyDeprecationWarning as W; "
            "warnings.warn('mine', W)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={**os.environ, "PYTHONWARNINGS": "default"}, timeout=30)
    assert r.returncode == 0, r.stderr
    assert [line for line in r.stderr.splitlines() if "Warning" in line] == \
        ["<string>:1: CryptographyDeprecationWarning: mine"], r.stderr


def test_no_bare_asyncssh_import_outside_the_seam() -> None:
    """Every runtime import of asyncssh goes through tether.link._asyncssh (one filter)."""
    import tether

    root = os.path.dirname(tether.__file__)
    found = []
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if not name.endswith(".py") or name == "_asyncssh.py":
                continue
            path = os.path.join(dirpath, name)
            with open(path) as fh:
                lines = fh.read().splitlines()
            type_checking = False
            for n, line in enumerate(lines, 1):
                if line.startswith("if TYPE_CHECKING"):
                    type_checking = True
                elif line and not line[0].isspace():
                    type_checking = False
                stripped = line.strip()
                if (stripped == "import asyncssh" or stripped.startswith("from asyncssh")) \
                        and not type_checking:
                    found.append(f"{os.path.relpath(path, root)}:{n}")
    assert found == []
