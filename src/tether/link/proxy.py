"""`tether proxy NAME`: the ssh ProxyCommand, stdin/stdout <-> the gateway's SSH WebSocket.

On the hot path of every `ssh tether-NAME`, scp, rsync and git: blocking I/O in two threads
(one per direction) over the websockets sync client, large reads, no compression. Errors go
to stderr as one line, where ssh shows them.
"""

from __future__ import annotations

import os
import sys
import threading

from tether.errors import AuthError, ConnectError, ProtocolError
from tether.link.connstring import ws_url
from tether.link.profiles import HostProfile, access_token, load_profile

READ_SIZE = 256 * 1024
MAX_FRAME = 16 * 1024 * 1024
SSH_PATH = "/.tether/ssh"


def ws_headers(profile: HostProfile) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token(profile.name)}"}


def open_ws(profile: HostProfile, timeout: float = 20.0):
    """A connected websockets sync client to the host's SSH bridge (errors translated)."""
    from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI
    from websockets.sync.client import connect

    url = ws_url(profile.url, SSH_PATH)
    try:
        return connect(url, additional_headers=ws_headers(profile), compression=None,
                       max_size=MAX_FRAME, open_timeout=timeout, close_timeout=2,
                       ping_interval=20, ping_timeout=60, user_agent_header="tether")
    except InvalidStatus as exc:
        status = exc.response.status_code
        if status == 401:
            raise AuthError(f"the workspace {profile.name!r} refused our access token",
                            f"pair again: `tether host pair-code` on the host, then "
                            f"`tether connect <string> --name {profile.name}`") from exc
        if status == 502:
            raise ConnectError(f"the gateway of {profile.name!r} is up but its sshd is not",
                               "restart the workspace (`tether down; tether up`)") from exc
        raise ProtocolError(f"the gateway at {profile.url} answered HTTP {status}",
                            "is that URL really a tether gateway?") from exc
    except (InvalidURI, InvalidHandshake) as exc:
        raise ProtocolError(f"the gateway at {profile.url} did not speak WebSocket: {exc}",
                            ) from exc
    except (OSError, TimeoutError) as exc:
        raise ConnectError(f"cannot reach the gateway of {profile.name!r} at {profile.url}: "
                           f"{getattr(exc, 'strerror', None) or exc}",
                           "is `tether up` still running there? If its URL changed, run "
                           f"`tether connect <new string> --name {profile.name}`") from exc


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def run_proxy(name: str, stdin_fd: int = 0, stdout_fd: int = 1) -> int:
    """Relay until either side ends; returns an exit code for the process."""
    from websockets.exceptions import ConnectionClosed

    ws = open_ws(load_profile(name))
    failure: list[BaseException] = []

    def upstream() -> None:
        try:
            while True:
                data = os.read(stdin_fd, READ_SIZE)
                if not data:
                    break
                ws.send(data)
        except (OSError, ConnectionClosed) as exc:
            failure.append(exc)
        finally:
            ws.close()

    threading.Thread(target=upstream, name="tether-proxy-up", daemon=True).start()
    code = 0
    try:
        while True:
            message = ws.recv()
            if isinstance(message, str):
                raise ProtocolError("the gateway sent a text frame on the SSH stream")
            _write_all(stdout_fd, message)
    except ConnectionClosed as exc:
        if exc.rcvd is None or exc.rcvd.code not in (1000, 1001):
            if not failure:  # the gateway vanished mid-stream
                sys.stderr.write(f"tether proxy: connection to {name!r} lost\n")
                code = 1
    except BrokenPipeError:
        pass
    finally:
        ws.close()
    return code
