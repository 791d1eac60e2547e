"""The "ide" snapshot component: settings, keybindings and extensions come back, logs do not."""

from __future__ import annotations

import shutil

from tether.ide import component
from tether.ide.server import prepare
from tether.snapshot.components import restore_components, save_components


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
