"""Fixtures for the IDE tests: code-server installed once per machine, a tiny .vsix, Chromium.

code-server is installed with the same `tether.ide.install.install` users run, into a cache
that outlives test runs (``TETHER_TOOLS_CACHE``, default ``~/.cache/tether-test-tools``): the
first run on a machine takes about five minutes, later runs find it at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tether.ide import install

BROWSER_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CHROMIUM = "/usr/bin/chromium"


def tools_cache() -> Path:
    return Path(os.environ.get("TETHER_TOOLS_CACHE")
                or Path("~/.cache/tether-test-tools").expanduser())


@pytest.fixture(scope="session")
def code_server_tools() -> Path:
    """A tools dir holding code-server (installed into the machine-wide test cache once)."""
    cache = tools_cache()
    install.install(install.DEFAULT_VERSION, tools=cache)
    return cache


def link_tools(code_server_tools: Path) -> None:
    """Link the cached Node and code-server into the tools dir of the current TETHER_HOME."""
    from tether import paths

    tools = paths.ensure_dir(paths.tools_dir(), 0o755)
    for d in code_server_tools.iterdir():
        if d.name.startswith(("node-", "code-server-")):
            (tools / d.name).symlink_to(d)


@pytest.fixture
def ide_env(isolated, code_server_tools, monkeypatch):
    """An isolated home whose tether tools dir links to the cached code-server install."""
    link_tools(code_server_tools)
    monkeypatch.delenv("TETHER_CODE_SERVER", raising=False)
    monkeypatch.delenv("TETHER_IDE_PASSWORD", raising=False)
    return isolated


MANIFEST = """<?xml version="1.0" encoding="utf-8"?>
<PackageManifest Version="2.0.0" xmlns="http://schemas.microsoft.com/developer/vsx-schema/2011"
  xmlns:d="http://schemas.microsoft.com/developer/vsx-schema-design/2011">
  <Metadata>
    <Identity Language="en-US" Id="{name}" Version="0.0.1" Publisher="{publisher}"/>
    <DisplayName>{name}</DisplayName>
    <Description xml:space="preserve">tether test extension</Description>
    <Properties>
      <Property Id="Microsoft.VisualStudio.Code.Engine" Value="^1.60.0"/>
    </Properties>
  </Metadata>
  <Installation><InstallationTarget Id="Microsoft.VisualStudio.Code"/></Installation>
  <Dependencies/>
  <Assets>
    <Asset Type="Microsoft.VisualStudio.Code.Manifest" Path="extension/package.json"
      Addressable="true"/>
  </Assets>
</PackageManifest>
"""
CONTENT_TYPES = """<?xml version="1.0" encoding="utf-8"?>
<Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types">
  <Default Extension=".json" ContentType="application/json"/>
  <Default Extension=".js" ContentType="application/javascript"/>
  <Default Extension=".vsixmanifest" ContentType="text/xml"/>
</Types>
"""
EXTENSION_JS = """const fs = require('fs');
exports.activate = function () {
  fs.writeFileSync(%s, 'activated in pid ' + process.pid + '\\n');
};
exports.deactivate = function () {};
"""


def build_vsix(path: Path, marker: Path, publisher: str = "tethertest",
               name: str = "marker") -> Path:
    """A minimal VS Code extension that writes ``marker`` when it activates (at startup)."""
    package = {"name": name, "publisher": publisher, "version": "0.0.1",
               "engines": {"vscode": "^1.60.0"}, "main": "./extension.js",
               "activationEvents": ["onStartupFinished"]}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("[Content_Types].xml", CONTENT_TYPES)
        z.writestr("extension.vsixmanifest", MANIFEST.format(name=name, publisher=publisher))
        z.writestr("extension/package.json", json.dumps(package))
        z.writestr("extension/extension.js", EXTENSION_JS % json.dumps(str(marker)))
    return path


@pytest.fixture
def chromium():
    """A headless Debian Chromium driven by Playwright (no browser download)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        # launch() gives every browser a new temporary profile (its --user-data-dir)
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=BROWSER_FLAGS)
        try:
            yield browser
        finally:
            browser.close()


@contextlib.contextmanager
def screenshot_kept_if_passing(artifact: Path, failure_dir: Path) -> Iterator[dict]:
    """Hold a screenshot taken mid-test; write it to ``artifact`` only if the block passes.

    The block puts PNG bytes in ``shots["png"]``. A committed artifact must mean a passing
    session, so on any failure the bytes go to ``failure_dir/<name>-failed.png`` instead and
    ``artifact`` keeps what the last passing run saved.
    """
    shots: dict = {"png": None}
    try:
        yield shots
    except BaseException:
        if shots["png"] is not None:
            failed = failure_dir / f"{artifact.stem}-failed{artifact.suffix}"
            failed.write_bytes(shots["png"])
            print(f"screenshot of a failed session: {failed}")
        raise
    if shots["png"] is None:
        raise AssertionError(f"the test passed without taking the screenshot for {artifact}")
    artifact.parent.mkdir(parents=True, exist_ok=True)
    artifact.write_bytes(shots["png"])
