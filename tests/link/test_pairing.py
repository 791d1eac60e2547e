"""`tether connect` against the real gateway: a connection string whose fingerprint is not the
host's is refused before the host commits anything (the code stays usable, no key is
authorized), and an older gateway that ignores the check is still caught by the client."""

from __future__ import annotations

import pytest

from tether import errors
from tether.link import profiles
from tether.link.connstring import ConnectionString
from tether.link.pairing import connect

pytestmark = pytest.mark.timeout(60)

FORGED = "SHA256:" + "B" * 43


def _forge(text: str) -> str:
    cs = ConnectionString.decode(text)
    return ConnectionString(cs.url, cs.workspace_id, cs.pairing_code, cs.expires_at,
                            FORGED).encode()


def test_forged_fingerprint_leaves_the_code_usable_and_keys_unchanged(isolated, host) -> None:
    real = host.connection_string()
    keys_before = host.sshd.authorized_keys.read_bytes()
    clients_before = host.state.clients()
    with pytest.raises(errors.HostKeyMismatchError) as info:
        connect(_forge(real), "forged")
    assert "pairing code was not used" in info.value.message and FORGED in info.value.message
    assert host.sshd.authorized_keys.read_bytes() == keys_before
    assert host.state.clients() == clients_before
    with pytest.raises(errors.NotFoundError):
        profiles.load_profile("forged")
    result = connect(real, "genuine")  # the same one-time code still pairs
    assert result.paired is True
    assert host.sshd.authorized_keys.read_bytes() != keys_before


def test_a_gateway_ignoring_the_check_is_still_refused(isolated, host, monkeypatch) -> None:
    """An older gateway ignores host_key_fingerprint and pairs anyway: the client checks the
    key in the answer, saves nothing and says so."""
    import tether.link.pairing as pairing

    original = pairing._post_pair

    def as_sent_to_an_old_gateway(url, body, timeout):
        body = {k: v for k, v in body.items() if k != "host_key_fingerprint"}
        return original(url, body, timeout)

    monkeypatch.setattr(pairing, "_post_pair", as_sent_to_an_old_gateway)
    with pytest.raises(errors.HostKeyMismatchError) as info:
        connect(_forge(host.connection_string()), "forged")
    assert "nothing was saved" in info.value.message
    with pytest.raises(errors.NotFoundError):
        profiles.load_profile("forged")


def test_a_reconnect_whose_key_was_deleted_pairs_again_with_a_new_key(isolated, host) -> None:
    """~/.ssh wiped (a new machine image, a cleanup) while the profile survived: connecting
    again with a fresh code must leave a working key, not a profile naming a missing file."""
    import subprocess

    first = connect(host.connection_string(), "again")
    key = first.profile.identity_file
    key.unlink()
    key.with_name(key.name + ".pub").unlink()
    second = connect(host.connection_string(), "again")
    assert second.paired is True and key.is_file()
    assert key.with_name(key.name + ".pub").read_text().split()[1] in \
        host.sshd.authorized_keys.read_text()
    ssh = subprocess.run(["ssh", "-F", str(isolated.home / ".ssh" / "config"),
                          "-o", "BatchMode=yes", second.ssh_host, "true"],
                         capture_output=True, text=True, timeout=30)
    assert ssh.returncode == 0, ssh.stderr
