"""`tether snapshot ...` through the real entry point: output, --json, exit codes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from snapfix import describe, make_tree  # noqa: E402

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def repo_url(tmp_path):
    return f"file://{tmp_path}/repo"


def test_push_ls_pull_diff_verify_json(cli, tmp_path, repo_url):
    src = make_tree(tmp_path / "src", big=False)
    r = cli("snapshot", "push", str(src), repo_url, "--tag", "v1", "--json")
    assert r.exit_code == 0, r.stderr
    first = r.json()
    assert first["files"] == 9 and first["bytes_uploaded"] > 0
    (src / "new.txt").write_text("new")
    second = cli("snapshot", "push", str(src), repo_url, "--json").json()
    assert second["files_read"] == 1

    ls = cli("snapshot", "ls", repo_url, "--json").json()
    assert [s["id"] for s in ls] == [first["snapshot_id"], second["snapshot_id"]]
    assert ls[0]["tags"] == ["v1"]

    d = cli("snapshot", "diff", repo_url, "v1", second["snapshot_id"][:8], "--json").json()
    assert d == [{"status": "+", "path": "new.txt"}]

    out = tmp_path / "out"
    p = cli("snapshot", "pull", f"{repo_url}@v1", str(out), "--json")
    assert p.exit_code == 0, p.stderr
    assert p.json()["files"] == 9 and not (out / "new.txt").exists()
    v = cli("snapshot", "verify", repo_url, "--data", "--json").json()
    assert v["ok"] is True and v["blobs_checked"] > 0


def test_human_output(cli, tmp_path, repo_url):
    src = make_tree(tmp_path / "src", big=False)
    r = cli("snapshot", "push", str(src), repo_url)
    assert r.exit_code == 0 and r.stdout.startswith("snapshot ")
    assert "9 files" in r.stdout
    ls = cli("snapshot", "ls", repo_url)
    assert str(src) in ls.stdout
    assert "ok" in cli("snapshot", "verify", repo_url).stdout
    pulled = cli("snapshot", "pull", repo_url, str(tmp_path / "out"))
    assert "restored" in pulled.stdout
    assert describe(tmp_path / "out") == describe(src)


def _flip_a_byte_of_the_largest_pack(repo: Path) -> Path:
    pack = max((p for p in (repo / "packs").rglob("*") if p.is_file()),
               key=lambda p: p.stat().st_size)
    data = bytearray(pack.read_bytes())
    data[100] ^= 0xFF
    pack.write_bytes(bytes(data))
    return pack


def test_verify_failure_exits_non_zero_with_problems(cli, tmp_path, repo_url):
    cli("snapshot", "push", str(make_tree(tmp_path / "src")), repo_url)
    _flip_a_byte_of_the_largest_pack(tmp_path / "repo")
    r = cli("snapshot", "verify", repo_url, "--data")
    assert r.exit_code == 1
    assert "problem: pack" in r.stdout and "error: verify found" in r.stderr
    assert f"hint: run `tether snapshot repair {repo_url}`" in r.stderr


def test_verify_failure_with_json_prints_one_document(cli, tmp_path, repo_url):
    """docs/cli.md: with --json stdout holds exactly one JSON document, failures included."""
    import json

    cli("snapshot", "push", str(make_tree(tmp_path / "src")), repo_url)
    pack = _flip_a_byte_of_the_largest_pack(tmp_path / "repo")
    r = cli("snapshot", "verify", repo_url, "--data", "--json")
    assert r.exit_code == 1
    doc = json.loads(r.stdout)
    assert doc["ok"] is False and doc["problems"] and doc["corrupt_packs"] == [pack.name]
    assert "error: verify found" in r.stderr and "Traceback" not in r.stderr


def test_repair_then_push_makes_verify_pass(cli, tmp_path, repo_url):
    src = make_tree(tmp_path / "src")
    cli("snapshot", "push", str(src), repo_url)
    _flip_a_byte_of_the_largest_pack(tmp_path / "repo")
    r = cli("snapshot", "repair", repo_url)
    assert r.exit_code == 0, r.stderr
    assert "removed 1 corrupt" in r.stdout and "push the affected folders again" in r.stdout
    assert cli("snapshot", "push", str(src), repo_url).exit_code == 0
    v = cli("snapshot", "verify", repo_url, "--data", "--json")
    assert v.exit_code == 0 and v.json()["ok"] is True


@pytest.mark.parametrize("args,code,message", [
    (["snapshot", "ls", "ftp://x/y"], 2, "unknown store scheme"),
    (["snapshot", "ls", "not-a-url"], 2, "not a store URL"),
    (["snapshot", "pull", "file:///nonexistent-tether-repo", "/tmp/x"], 10,
     "no snapshot repository"),
    (["snapshot", "prune", "file:///nonexistent-tether-repo", "--keep-last", "0"], 2, ""),
], ids=["bad-scheme", "not-url", "missing-repo", "keep-last-zero"])
def test_bad_input_is_one_line_error(cli, args, code, message):
    r = cli(*args)
    assert r.exit_code == code
    assert message in r.stderr
    assert "Traceback" not in r.stderr


def test_pull_into_non_empty_needs_replace(cli, tmp_path, repo_url):
    src = make_tree(tmp_path / "src", big=False)
    cli("snapshot", "push", str(src), repo_url)
    dest = tmp_path / "dest"
    dest.mkdir()
    (dest / "mine").write_text("keep")
    r = cli("snapshot", "pull", repo_url, str(dest))
    assert r.exit_code == 2 and "--replace" in r.stderr
    assert (dest / "mine").read_text() == "keep"
    assert cli("snapshot", "pull", repo_url, str(dest), "--replace").exit_code == 0
    assert not (dest / "mine").exists() and (dest / "a.txt").exists()


def test_prune_and_forget(cli, tmp_path, repo_url):
    src = make_tree(tmp_path / "src", big=False)
    a = cli("snapshot", "push", str(src), repo_url, "--json").json()["snapshot_id"]
    (src / "n").write_text("n")
    cli("snapshot", "push", str(src), repo_url)
    f = cli("snapshot", "forget", repo_url, a[:10], "--json")
    assert f.json() == {"forgotten": a}
    p = cli("snapshot", "prune", repo_url, "--keep-last", "1", "--json").json()
    assert p["forgotten"] == [] and p["packs_kept"] >= 1


def test_public_api_names():
    import tether

    assert tether.snapshot_push.__module__ == "tether.snapshot.api"
    for name in ("snapshot_pull", "snapshot_list", "snapshot_diff", "snapshot_verify",
                 "snapshot_prune", "snapshot_forget"):
        assert callable(getattr(tether, name)) and name in tether.__all__


def test_pull_max_entries_raises_the_cap_for_a_trusted_repository(cli, tmp_path, repo_url,
                                                                  monkeypatch):
    """The 3-million-entry cap guards against hostile trees; a real workspace past it can
    still be restored by saying so."""
    from tether.snapshot import restore

    src = make_tree(tmp_path / "src", big=False)
    assert cli("snapshot", "push", str(src), repo_url, "--json").exit_code == 0
    monkeypatch.setattr(restore, "MAX_ENTRIES", 5)  # stands in for 3 million
    refused = cli("snapshot", "pull", repo_url, str(tmp_path / "a"))
    assert refused.exit_code != 0
    assert "more than 5 files" in refused.stderr and "--max-entries" in refused.stderr
    assert not (tmp_path / "a").exists()
    ok = cli("snapshot", "pull", repo_url, str(tmp_path / "b"), "--max-entries", "1000",
             "--json")
    assert ok.exit_code == 0, ok.stderr
    assert describe(tmp_path / "b") == describe(src)
    bad = cli("snapshot", "pull", repo_url, str(tmp_path / "c"), "--max-entries", "0")
    assert bad.exit_code == 2 and "at least 1" in bad.stderr and "hint:" in bad.stderr
    assert not (tmp_path / "c").exists()
