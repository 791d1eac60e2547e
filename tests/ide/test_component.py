"""The "ide" snapshot component: settings, keybindings and extensions come back, logs do not,
both through the snapshot API and end to end through `tether up --ide --autosave/--restore`."""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from tether.ide import component
from tether.ide.server import prepare
from tether.snapshot.components import restore_components, save_components

from .conftest import build_vsix, link_tools


def test_ide_settings_and_extensions_round_trip(isolated, tmp_path):
    host = tmp_path / "host-state"
    layout = prepare(host / "ide", "$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", {})
    user = layout.user_data / "User"
    user.mkdir(parents=True)
    (user / "settings.json").write_text('{"editor.fontSize": 17}')
    (user / "keybindings.json").write_text('[{"key": "ctrl+k", "command": "x"}]')
    ext = layout.extensions / "tethertest.marker-0.0.1"
    ext.mkdir()
    (ext / "package.json").write_text('{"name": "marker"}')
    (layout.user_data / "logs" / "20260101").mkdir(parents=True)
    (layout.user_data / "logs" / "20260101" / "main.log").write_text("noise")

    comp = component(host)
    assert comp.name == "ide" and comp.path == layout.profile
    store = f"file://{tmp_path / 'store'}"
    save_components(store, [comp])

    shutil.rmtree(host)  # a fresh machine
    report = restore_components(store, [component(host)])
    assert list(report.restored) == ["ide"]
    assert (user / "settings.json").read_text() == '{"editor.fontSize": 17}'
    assert (user / "keybindings.json").exists()
    assert (ext / "package.json").exists()
    assert not (layout.user_data / "logs").exists()  # excluded by the profile's .tetherignore
    assert not (host / "ide" / "config.yaml").exists()  # the password hash is not in it


def _fresh_home(root, monkeypatch) -> dict[str, str]:
    """Point HOME, TETHER_HOME and the XDG dirs at new empty folders: a wiped machine."""
    home = root / "home"
    home.mkdir(parents=True)
    values = {"HOME": str(home), "TETHER_HOME": str(root / "tether-home"),
              "XDG_CONFIG_HOME": str(home / ".config"),
              "XDG_STATE_HOME": str(home / ".local/state"),
              "XDG_CACHE_HOME": str(home / ".cache"),
              "XDG_DATA_HOME": str(home / ".local/share")}
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return values


def _installed_extensions(profile: Path) -> list[str]:
    """What code-server itself lists as installed in ``profile`` (not just files on disk)."""
    import subprocess

    from tether.ide.install import require

    out = subprocess.run([*require().argv, "--extensions-dir", str(profile / "extensions"),
                          "--user-data-dir", str(profile / "data"), "--list-extensions"],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.split()


@pytest.mark.ide
@pytest.mark.timeout(240, func_only=True)
def test_up_ide_autosave_then_restore_on_a_fresh_home(ide_env, code_server_tools, cli,
                                                       tmp_path, monkeypatch):
    """`up --ide --autosave` saves the IDE profile; `up --ide --restore` on a wiped machine
    brings back settings, keybindings and the extension, seen by code-server itself."""
    store = f"file://{tmp_path / 'store'}"
    vsix = build_vsix(tmp_path / "marker.vsix", tmp_path / "activated.txt")
    ws = tmp_path / "ws"
    ws.mkdir()
    r = cli("up", str(ws), "--ide", "--extension", str(vsix), "--autosave", store,
            "--detach", "--json")
    assert r.exit_code == 0, r.stderr
    try:
        # what a user's session leaves in the profile
        user = ide_env.tether_home / "state" / "host" / "ide" / "profile" / "data" / "User"
        user.mkdir(parents=True, exist_ok=True)
        (user / "settings.json").write_text('{"editor.fontSize": 17}\n')
        (user / "keybindings.json").write_text('[{"key": "ctrl+k", "command": "x"}]\n')
    finally:
        down = cli("down", "--json")  # the final save happens before down returns
    assert down.exit_code == 0 and down.json()["stopped"], down.stderr
    saved = cli("host", "status", "--json").json()["autosave"]
    assert saved["last_ok"] is True and "ide" in saved["last_saved"], saved

    _fresh_home(tmp_path / "fresh", monkeypatch)
    link_tools(code_server_tools)
    host = tmp_path / "fresh" / "tether-home" / "state" / "host"
    assert not host.exists()
    fresh_ws = tmp_path / "fresh" / "ws"
    r = cli("up", str(fresh_ws), "--ide", "--restore", store, "--detach", "--json")
    assert r.exit_code == 0, r.stderr
    try:
        info = r.json()
        assert "ide" in info["restore"]["restored"], info["restore"]
        profile = host / "ide" / "profile"
        assert (profile / "data/User/settings.json").read_text() == '{"editor.fontSize": 17}\n'
        assert "ctrl+k" in (profile / "data/User/keybindings.json").read_text()
        assert info["ide"]["extensions"] == []  # nothing installed at start this time ...
        assert "tethertest.marker" in _installed_extensions(profile)  # ... it was restored
        assert httpx.get(info["ide"]["url"] + "login").status_code == 200
    finally:
        down = cli("down", "--json")
    assert down.exit_code == 0 and down.json()["stopped"], down.stderr
