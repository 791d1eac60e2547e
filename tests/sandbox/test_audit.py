"""The audit log: one JSON line per run, appended safely, read back by `tether sandbox audit`."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tether.sandbox import audit

pytestmark = pytest.mark.timeout(60)


def _record(**kw) -> audit.AuditRecord:
    base = dict(via="cli", command=["echo", "hi"], profile="moderate", network="full",
                exit_code=0, duration_s=0.01)
    base.update(kw)
    return audit.record_run(**base)


def test_round_trip_and_private_file(isolated):
    written = _record(sandbox="dev", client="127.0.0.1:5000")
    [read] = audit.read()
    assert read == written
    assert read.who.endswith("via 127.0.0.1:5000") and "@" in read.who
    mode = stat.S_IMODE(audit.log_path().stat().st_mode)
    assert mode == 0o600
    line = json.loads(audit.log_path().read_text())
    assert line["v"] == 1 and line["command"] == ["echo", "hi"]


@pytest.mark.parametrize("junk", [
    b"not json\n", b'{"v": 99, "time": 1}\n', b'{"v": 1}\n', b'{"v": 1, "time": 1, "who"',
], ids=["text", "future-version", "missing-fields", "torn-line"])
def test_unreadable_lines_are_skipped_not_fatal(isolated, junk):
    _record(command=["first"])
    with audit.log_path().open("ab") as fh:
        fh.write(junk)
    if not junk.endswith(b"\n"):
        with audit.log_path().open("ab") as fh:
            fh.write(b"\n")
    _record(command=["second"])
    assert [r.command for r in audit.read()] == [("first",), ("second",)]


def test_limit_and_sandbox_filter(isolated):
    for i in range(5):
        _record(command=[str(i)], sandbox="a" if i % 2 else None)
    assert [r.command[0] for r in audit.read(limit=2)] == ["3", "4"]
    assert [r.command[0] for r in audit.read(sandbox="a")] == ["1", "3"]
    assert len(audit.read(limit=0)) == 5


def test_long_commands_are_clipped(isolated):
    rec = _record(command=["x" * 5000] + ["a"] * 100)
    assert len(rec.command[0]) < 600 and rec.command[-1] == "...(37 more)"


def test_concurrent_writers_never_interleave(isolated):
    code = ("import sys; from tether.sandbox import audit\n"
            "for i in range(100):\n"
            "    audit.record_run(via='cli', command=['w', sys.argv[1], 'y' * 3000],"
            " profile='p', network='none', exit_code=i, duration_s=0)\n")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(n)]) for n in range(4)]
    assert all(p.wait(60) == 0 for p in procs)
    lines = audit.log_path().read_bytes().splitlines()
    assert len(lines) == 400
    assert all(json.loads(line)["v"] == 1 for line in lines)


def test_cli_audit_shows_runs_of_every_door(isolated, cli, tmp_path: Path):
    from tether.sandbox import named

    named.create("dev")
    named.exec_sync("dev", ["sh", "-c", "exit 4"])
    records = cli("sandbox", "audit", "--json").json()
    assert [(r["via"], r["sandbox"], r["exit_code"], r["command"]) for r in records] == \
        [("cli", "dev", 4, ["sh", "-c", "exit 4"])]
    assert records[0]["profile"] == "moderate" and records[0]["time"] > 0
    human = cli("sandbox", "audit")
    assert "dev" in human.stdout and "sh -c 'exit 4'" in human.stdout
    assert cli("sandbox", "audit", "--sandbox", "other", "--json").json() == []


def test_a_run_that_cannot_start_is_audited_with_its_error(isolated, tmp_path: Path):
    from tether import errors
    from tether.sandbox import named

    data = tmp_path / "data"
    data.mkdir()
    named.create("broken", mounts=[f"{data}:/data:ro"])
    os.rmdir(data)  # the mount source disappears: the runner refuses to start
    with pytest.raises(errors.UsageError, match="does not exist"):
        named.exec_sync("broken", ["true"])
    last = audit.read()[-1]
    assert last.exit_code is None and last.error and last.sandbox == "broken"


def test_tether_sandbox_run_is_audited(isolated, cli, tmp_path: Path, monkeypatch):
    work = tmp_path / "proj"
    work.mkdir()
    monkeypatch.chdir(work)
    r = cli("sandbox", "run", "--profile", "restrictive", "--", "sh", "-c", "exit 3")
    assert r.exit_code == 3
    [record] = audit.read()
    assert (record.via, record.command, record.profile, record.network, record.exit_code) == \
        ("cli", ("sh", "-c", "exit 3"), "restrictive", "none", 3)
    refused = cli("sandbox", "run", "--mount", f"{tmp_path}/missing:/m", "--", "true")
    assert refused.exit_code == 2
    assert audit.read()[-1].error and audit.read()[-1].exit_code is None
