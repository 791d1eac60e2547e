"""Pure parts of the link: command lines, exit codes, locations, forward specs, the status
report, the daemon's frame codec, gateway addresses, the exec fast-path parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tether import errors
from tether.cli.exec_fast import parse_fast
from tether.link import wire
from tether.link.copy import (Location, leftover_target, parse_location, split_direction,
                              stale_leftovers, temp_name)
from tether.link.exec import build_command, exit_code_of, parse_env
from tether.link.forward import ForwardSpec, parse_spec
from tether.link.status import MARK, parse_report
from tether.link.transport import tcp_address, ws_url


@pytest.mark.parametrize("command,cwd,env,expected", [
    ("ls | wc -l", None, (), "ls | wc -l"),
    (["echo", "a b"], None, (), "echo 'a b'"),
    (["true"], "/tmp/x y", (), "cd -- '/tmp/x y' && true"),
    ("env", None, (("A", "1 2"), ("B", "")), "export A='1 2' B='' && env"),
    (["pwd"], "w", {"K": "$HOME"}, "cd -- w && export K='$HOME' && pwd"),
], ids=["shell-text", "argv-quoted", "cwd", "env", "cwd-and-env-no-expansion"])
def test_build_command(command, cwd, env, expected) -> None:
    assert build_command(command, cwd=cwd, env=env) == expected


@pytest.mark.parametrize("command,env", [
    ("", ()), ([], ()), ("  ", ()), ("true", (("1BAD", "x"),)), ("true", (("A-B", "x"),)),
], ids=["empty-text", "empty-argv", "blank", "digit-name", "dash-name"])
def test_build_command_rejects(command, env) -> None:
    with pytest.raises(errors.UsageError):
        build_command(command, env=env)


@pytest.mark.parametrize("items,expected", [
    (["A=1"], (("A", "1"),)),
    (["A=x=y", "B="], (("A", "x=y"), ("B", ""))),
], ids=["simple", "equals-in-value-and-empty"])
def test_parse_env(items, expected) -> None:
    assert parse_env(items) == expected


@pytest.mark.parametrize("bad", ["A", "=x", "9A=1", "A B=1"], ids=str)
def test_parse_env_rejects(bad) -> None:
    with pytest.raises(errors.UsageError):
        parse_env([bad])


@pytest.mark.parametrize("status,sig,expected", [
    (0, None, 0), (3, None, 3), (None, "TERM", 143), (None, "INT", 130), (None, "KILL", 137),
    (None, "SIGHUP", 129), (None, "NOPE", 255), (None, None, None), (-1, None, None),
], ids=["ok", "fail", "term", "int", "kill", "sig-prefixed", "unknown-signal", "none",
        "negative"])
def test_exit_code_of(status, sig, expected) -> None:
    assert exit_code_of(status, sig) == expected


@pytest.mark.parametrize("text,expected", [
    ("gpu:data/x", Location("gpu", "data/x")),
    ("gpu:", Location("gpu", ".")),
    ("gpu:/abs", Location("gpu", "/abs")),
    ("./a:b", Location(None, "./a:b")),
    ("/tmp/a:b", Location(None, "/tmp/a:b")),
    ("file.txt", Location(None, "file.txt")),
    ("~/x", Location(None, "~/x")),
], ids=["remote", "remote-home", "remote-abs", "local-colon", "abs-colon", "plain", "tilde"])
def test_parse_location(text, expected) -> None:
    assert parse_location(text) == expected


@pytest.mark.parametrize("sources,dest,expected", [
    (["a", "b"], "gpu:d/", ("gpu", True, ["a", "b"], "d/")),
    (["gpu:x"], ".", ("gpu", False, ["x"], ".")),
], ids=["upload", "download"])
def test_split_direction(sources, dest, expected) -> None:
    assert split_direction(sources, dest) == expected


@pytest.mark.parametrize("sources,dest", [
    (["a"], "b"), (["g:a"], "h:b"), (["a", "g:b"], "."), (["g:a", "h:b"], "."), ([], "g:x"),
], ids=["both-local", "both-remote", "mixed-sources", "two-hosts", "nothing"])
def test_split_direction_rejects(sources, dest) -> None:
    with pytest.raises(errors.UsageError):
        split_direction(sources, dest)


def test_temp_name_is_hidden_sibling() -> None:
    name = temp_name("dir/file.bin")
    assert name.startswith("dir/.file.bin.tether-part-") and name != temp_name("dir/file.bin")


@pytest.mark.parametrize("name,target", [
    (".a.txt.tether-part-0f1e2d3c", "a.txt"),
    ("..hidden.tether-part-00000000", ".hidden"),
    (".a.b.tether-part-0f1e2d3c.tether-part-12345678", "a.b.tether-part-0f1e2d3c"),
    ("a.txt.tether-part-0f1e2d3c", None),
    (".a.txt.tether-part-0F1E2D3C", None),
    (".a.txt.tether-part-0f1e2d3", None),
    (".a.txt.tether-part-0f1e2d3c.bak", None),
    (".a.txt.tether-partial", None),
], ids=["plain", "hidden-target", "nested", "not-hidden", "upper-hex", "short", "suffix",
        "other-word"])
def test_leftover_target(name, target) -> None:
    assert leftover_target(name) == target


def test_leftover_target_round_trips_temp_name() -> None:
    assert leftover_target(temp_name("/d/x y.bin").rsplit("/", 1)[1]) == "x y.bin"


def test_stale_leftovers_only_idle_temporaries_of_the_target() -> None:
    now = 10_000
    entries = [(".t.bin.tether-part-00000001", now - 61),   # idle: swept
               (".t.bin.tether-part-00000002", now - 5),    # another cp may be writing it
               (".t.bin.tether-part-00000003", None),       # no mtime: cannot tell
               (".u.bin.tether-part-00000004", now - 999),  # another target's
               ("t.bin", now - 999), (".t.bin.tether-part-zzzzzzzz", now - 999)]
    assert stale_leftovers(entries, "t.bin", now) == [".t.bin.tether-part-00000001"]
    assert stale_leftovers(entries, "t.bin", now, max_idle_s=1) == [
        ".t.bin.tether-part-00000001", ".t.bin.tether-part-00000002"]


@pytest.mark.parametrize("text,reverse,expected", [
    ("8080", False, ForwardSpec(8080, 8080)),
    ("9000:80", False, ForwardSpec(9000, 80)),
    ("0:5432", True, ForwardSpec(0, 5432, True)),
], ids=["same-port", "listen-target", "reverse-any-port"])
def test_parse_spec(text, reverse, expected) -> None:
    assert parse_spec(text, reverse=reverse) == expected


@pytest.mark.parametrize("bad", ["", "x", "80:", "1:2:3", "70000", "80:0", "0"], ids=repr)
def test_parse_spec_rejects(bad) -> None:
    with pytest.raises(errors.UsageError):
        parse_spec(bad)


def test_parse_report_full() -> None:
    text = "\n".join([
        f"{MARK}uptime", "12345.67 9999.0", f"{MARK}workspace", "/work/ws",
        f"{MARK}disk", "/dev/sda1 1000 400 600 40% /", f"{MARK}gpus",
        "Tesla T4, 100, 15360, 7", "NVIDIA A100, 0, 40960, 0", f"{MARK}system",
        "Linux 6.1 x86_64", "box", f"{MARK}end"])
    r = parse_report(text)
    assert r["uptime_s"] == pytest.approx(12345.67)
    assert r["workspace"] == "/work/ws"
    assert (r["disk_total_bytes"], r["disk_used_bytes"], r["disk_free_bytes"]) == \
        (1000 * 1024, 400 * 1024, 600 * 1024)
    assert [g.name for g in r["gpus"]] == ["Tesla T4", "NVIDIA A100"]
    assert r["gpus"][0].memory_total_mb == 15360 and r["gpus"][0].utilization_pct == 7
    assert (r["system"], r["hostname"]) == ("Linux 6.1 x86_64", "box")


def test_parse_report_missing_sections() -> None:
    r = parse_report(f"{MARK}uptime\n{MARK}gpus\n{MARK}end\n")
    assert r["gpus"] == () and r.get("disk_total_bytes") is None and r["workspace"] is None


@given(st.lists(st.tuples(st.sampled_from(sorted(wire.KINDS)), st.binary(max_size=300)),
                max_size=20), st.integers(min_value=1, max_value=64))
def test_wire_round_trip_any_chunking(frames, chunk) -> None:
    data = b"".join(wire.encode(k, p) for k, p in frames)
    decoder = wire.Decoder()
    got = []
    for i in range(0, len(data), chunk):
        got += decoder.feed(data[i:i + chunk])
    assert got == frames and decoder.pending == 0


def test_wire_rejects_unknown_kind_and_huge_frames() -> None:
    with pytest.raises(wire.WireError):
        wire.Decoder().feed(b"Z\x00\x00\x00\x00")
    with pytest.raises(wire.WireError):
        wire.Decoder().feed(wire.HEADER.pack(wire.STDOUT, wire.MAX_PAYLOAD + 1))


@pytest.mark.parametrize("url,expected", [
    ("http://127.0.0.1:8765", "ws://127.0.0.1:8765/.tether/ssh"),
    ("https://x.trycloudflare.com/", "wss://x.trycloudflare.com/.tether/ssh"),
    ("https://h/prefix", "wss://h/prefix/.tether/ssh"),
], ids=["http", "https", "path-prefix"])
def test_ws_url(url, expected) -> None:
    assert ws_url(url) == expected


@pytest.mark.parametrize("bad", ["ftp://x", "127.0.0.1:80", "http://"], ids=str)
def test_ws_url_rejects(bad) -> None:
    with pytest.raises(errors.ConfigError):
        ws_url(bad)


def test_tcp_address() -> None:
    assert tcp_address("tcp://127.0.0.1:2222") == ("127.0.0.1", 2222)
    assert tcp_address("http://x") is None
    with pytest.raises(errors.ConfigError):
        tcp_address("tcp://host")


@pytest.mark.parametrize("argv,expected", [
    (["h", "--", "ls", "-l"], {"name": "h", "command": ["ls", "-l"], "cwd": None, "env": [],
                               "tty": None}),
    (["h", "--cwd", "/d", "-e", "A=1", "--env=B=2", "-T", "--", "x"],
     {"name": "h", "command": ["x"], "cwd": "/d", "env": ["A=1", "B=2"], "tty": False}),
    (["--cwd=/d", "h", "-t", "--", "x"],
     {"name": "h", "command": ["x"], "cwd": "/d", "env": [], "tty": True}),
    (["h", "--help"], None), (["h", "ls"], None), (["--", "x"], None), (["h", "--"], None),
], ids=["plain", "all-flags", "flags-first", "help-falls-back", "no-dashdash-falls-back",
        "no-name", "no-command"])
def test_parse_fast(argv, expected) -> None:
    assert parse_fast(argv) == expected


def _copy_errors():
    import errno

    from tether._compat import ExceptionGroup
    from tether.link._asyncssh import asyncssh

    return [
        (OSError(errno.ENOTCONN, "Transport endpoint is not connected"), errors.ConnectError),
        (ConnectionResetError(), errors.ConnectError),
        (asyncssh.SFTPConnectionLost("gone"), errors.ConnectError),
        (asyncssh.ConnectionLost("gone"), errors.ConnectError),
        (PermissionError(13, "Permission denied", "/x/y"), errors.LocalIOError),
        (asyncssh.SFTPNoSuchFile("no such file"), errors.NotFoundError),
        (asyncssh.SFTPPermissionDenied("denied"), errors.PermissionDeniedError),
        (asyncssh.SFTPFailure("failure"), errors.PeerError),
        (ExceptionGroup("g", [ValueError("x"), asyncssh.SFTPConnectionLost("gone")]),
         errors.ConnectError),
    ]


@pytest.mark.parametrize("index", range(9), ids=[
    "enotconn", "reset", "sftp-lost", "ssh-lost", "local-perm", "no-such-file",
    "sftp-perm", "sftp-failure", "group"])
def test_copy_errors_are_translated(index) -> None:
    from tether.link.copy import translate

    exc, expected = _copy_errors()[index]
    assert type(translate(exc, "gpu")) is expected


def test_unknown_copy_errors_stay_bugs() -> None:
    from tether.link.copy import translate

    assert translate(ValueError("a bug of ours"), "gpu") is None
