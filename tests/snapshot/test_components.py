"""Components for `tether up --restore/--autosave`: save, restore, autosave, intervals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from snapfix import describe, make_tree  # noqa: E402

from tether.errors import UsageError  # noqa: E402
from tether.snapshot import components as comp  # noqa: E402

pytestmark = pytest.mark.timeout(60)


def test_save_then_restore_on_a_fresh_machine(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    ws = make_tree(tmp_path / "ws", big=False)
    ident = tmp_path / "identity"
    ident.mkdir()
    (ident / "ssh_host_ed25519_key").write_text("KEY")
    (ident / "ssh_host_ed25519_key").chmod(0o600)
    parts = [comp.Component("workspace", ws), comp.Component("identity", ident),
             comp.Component("ide", tmp_path / "never-created")]
    saved = comp.save_components(url, parts)
    assert set(saved) == {"workspace", "identity"}
    want_ws, want_id = describe(ws), describe(ident)
    # a "new machine": the folders are gone or different
    import shutil
    shutil.rmtree(ws)
    (ident / "ssh_host_ed25519_key").write_text("NEW KEY")
    report = comp.restore_components(url, parts)
    assert set(report.restored) == {"workspace", "identity"} and report.skipped == ["ide"]
    assert describe(ws) == want_ws and describe(ident) == want_id
    assert (ident / "ssh_host_ed25519_key").stat().st_mode & 0o777 == 0o600


def test_restore_from_an_empty_store_skips_everything(tmp_path, isolated):
    report = comp.restore_components(f"file://{tmp_path}/empty",
                                     [comp.Component("workspace", tmp_path / "ws")])
    assert report.skipped == ["workspace"] and not report.restored


def test_autosave_saves_on_stop(tmp_path, isolated):
    url = f"file://{tmp_path}/repo"
    ws = make_tree(tmp_path / "ws", big=False)
    saver = comp.autosave(url, [comp.Component("workspace", ws)], every_s=3600)
    (ws / "late.txt").write_text("written before shutdown")
    saver.stop()
    assert saver.saves == 1
    import shutil
    shutil.rmtree(ws)
    comp.restore_components(url, [comp.Component("workspace", ws)])
    assert (ws / "late.txt").read_text() == "written before shutdown"


@pytest.mark.parametrize("text,seconds", [("10m", 600), ("90s", 90), ("1h", 3600),
                                          ("600", 600)], ids=["min", "sec", "hour", "bare"])
def test_parse_interval(text, seconds):
    assert comp.parse_interval(text) == seconds


@pytest.mark.parametrize("bad", ["", "ten", "5x"], ids=["empty", "word", "unit"])
def test_parse_interval_rejects(bad):
    with pytest.raises(UsageError):
        comp.parse_interval(bad)


def test_duplicate_component_names_are_refused(tmp_path):
    with pytest.raises(UsageError, match="unique"):
        comp.save_components("file:///x", [comp.Component("a", tmp_path),
                                           comp.Component("a", tmp_path)])
