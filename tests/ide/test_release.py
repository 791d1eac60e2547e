"""The release-archive install, against a local HTTP server laid out like GitHub's release
downloads (`/v<V>/code-server-<V>-<os>-<arch>.tar.gz`), with archives built by the test."""

from __future__ import annotations

import http.server
import io
import subprocess
import tarfile
import threading

import pytest

from tether.errors import IntegrityError, NotFoundError, UsageError
from tether.ide import install, release

SCRIPT = b"#!/bin/sh\necho code-server-from-the-archive \"$@\"\n"


def make_archive(top: str, extra: list[tarfile.TarInfo] | None = None) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data, mode in ((f"{top}/bin/code-server", SCRIPT, 0o755),
                                 (f"{top}/lib/node", b"not really node", 0o755),
                                 (f"{top}/README.md", b"hi", 0o644)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), mode
            tar.addfile(info, io.BytesIO(data))
        for info in extra or []:
            tar.addfile(info)
    return buf.getvalue()


@pytest.fixture
def release_server(monkeypatch):
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("content-length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv(release.URL_ENV,
                       base + "/v{version}/code-server-{version}-{os}-{arch}.tar.gz")
    yield files
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("system,machine,suffix", [
    ("Linux", "x86_64", "linux-amd64"), ("Linux", "aarch64", "linux-arm64"),
    ("Darwin", "arm64", "macos-arm64")], ids=["linux-x64", "linux-arm64", "macos-arm"])
def test_release_url(system, machine, suffix, monkeypatch):
    monkeypatch.delenv(release.URL_ENV, raising=False)
    assert release.release_url("4.139.1", system, machine) == (
        "https://github.com/coder/code-server/releases/download/v4.139.1/"
        f"code-server-4.139.1-{suffix}.tar.gz")


def test_no_archive_for_unknown_platforms():
    with pytest.raises(UsageError):
        release.release_url("4.139.1", "Windows", "x86_64")


@pytest.mark.parametrize("name", ["/etc/passwd", "top/../../evil", "../x"],
                         ids=["absolute", "climbs", "parent"])
def test_unsafe_member_names_are_refused(name):
    with pytest.raises(IntegrityError):
        release.member_target(name)


def test_release_install_then_runs_and_is_found(tmp_path, release_server):
    import platform

    arch = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
    top = f"code-server-9.1.0-linux-{arch}"
    release_server[f"/v9.1.0/{top}.tar.gz"] = make_archive(top)
    got: list[int] = []
    r = install.install("9.1.0", tools=tmp_path, method="release", on_bytes=got.append)
    binary = tmp_path / "code-server-9.1.0" / "bin" / "code-server"
    assert r.installed and r.code_server.argv == (str(binary),)
    assert sum(got) == len(release_server[f"/v9.1.0/{top}.tar.gz"])
    out = subprocess.run([*r.code_server.argv, "--version"], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "code-server-from-the-archive --version"
    assert install.locate("9.1.0", tmp_path) == r.code_server
    assert sorted(p.name for p in tmp_path.iterdir()) == ["code-server-9.1.0"]
    # a second run finds it without downloading
    release_server.clear()
    assert not install.install("9.1.0", tools=tmp_path, method="release").installed


def test_missing_release_is_not_found_and_leaves_nothing(tmp_path, release_server):
    with pytest.raises(NotFoundError):
        install.install("9.9.9", tools=tmp_path, method="release")
    assert list(tmp_path.iterdir()) == []


def test_archive_with_an_escaping_link_is_refused(tmp_path, release_server):
    import platform

    arch = {"x86_64": "amd64", "aarch64": "arm64"}[platform.machine()]
    top = f"code-server-9.2.0-linux-{arch}"
    link = tarfile.TarInfo(f"{top}/lib/evil")
    link.type, link.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
    release_server[f"/v9.2.0/{top}.tar.gz"] = make_archive(top, [link])
    with pytest.raises(IntegrityError):
        install.install("9.2.0", tools=tmp_path, method="release")
    assert list(tmp_path.iterdir()) == []


def test_unreachable_release_host_is_a_connect_error(tmp_path, monkeypatch):
    from tether.errors import ConnectError

    monkeypatch.setenv(release.URL_ENV, "http://127.0.0.1:9/{version}-{os}-{arch}.tar.gz")
    with pytest.raises(ConnectError) as e:
        install.install("9.3.0", tools=tmp_path, method="release")
    assert "npm method" in e.value.hint
