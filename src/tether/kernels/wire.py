"""What the local side of a kernel link shares: the launcher's source and protocol marks, and
how a failed session or a launcher ``error`` event reads in the user's terms
(docs/kernel-launch.md)."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any

from tether.errors import (AlreadyExistsError, AuthError, ConnectError, HostKeyMismatchError,
                           NotFoundError, PeerError, ProtocolError, TetherError)
from tether.kernels.target import SshTarget

MARK = "TETHER-KERNEL/1 "
PROTOCOL = 1
PORT_NAMES = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
LINK_LOST = 255  # poll() code for "the SSH session is gone", as ssh itself reports it


def launcher_source() -> bytes:
    return resources.files("tether.kernels").joinpath("remote_launcher.py").read_bytes()


def parse_line(line: str) -> dict[str, Any] | None:
    """A protocol event from one stdout line, or None for anything else (shell noise)."""
    if not line.startswith(MARK):
        return None
    try:
        event = json.loads(line[len(MARK):])
    except ValueError as exc:
        raise ProtocolError(f"malformed launcher line: {line[:80]!r}") from exc
    return event if isinstance(event, dict) else None


def session_failure(target: SshTarget, python: str, returncode: int | None,
                    stderr: str) -> TetherError:
    """Why a session ended before the launcher answered, in the user's terms."""
    last = (stderr.strip().splitlines() or [""])[-1]
    host = target.alias
    if "Host key verification failed" in stderr or "HOST IDENTIFICATION HAS CHANGED" in stderr:
        return HostKeyMismatchError(
            f"the host key of {host} is not the one pinned for it, or is unknown",
            f"verify it once with `ssh {host}` (or `tether connect` for tether hosts)")
    if "Permission denied" in stderr:
        return AuthError(f"{host} refused the SSH key: {last}",
                         f"check that `ssh {host} true` works without a password prompt")
    if returncode == 255:
        return ConnectError(f"cannot reach {host}: {last or 'ssh exited with 255'}",
                            f"check `ssh {host} true`")
    if returncode == 127 or "No such file or directory" in stderr or "not found" in last:
        return NotFoundError(f"remote python {python} does not run on {host}: {last}",
                             "pass --python with the absolute path of a Python on that host")
    return PeerError(f"the kernel launcher failed on {host} (exit {returncode}): {last}",
                     f"run `ssh {host} {python} -V` to check the remote python")


def launcher_error(target: SshTarget, event: dict[str, Any]) -> TetherError:
    """A launcher ``error`` event as a tether error."""
    code, message = event.get("code"), event.get("message", "launcher error")
    where = f"{message} (on {target.alias})"
    if code == "no_kernelspec":
        return NotFoundError(where, "list remote kernelspecs: `jupyter kernelspec list` there")
    if code in ("not_found", "not_attachable"):
        return NotFoundError(where, "the kernel exited or its grace period ran out")
    if code == "exists":
        return AlreadyExistsError(where)
    if code == "version":
        return ProtocolError(where, "use the same tether version on both sides")
    return PeerError(where)
