"""A tunnel that is a child process announcing its public URL on its output."""

from __future__ import annotations

import os
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from tether.errors import ConnectError, DeadlineError


class ProcessTunnel:
    """Runs ``argv()``; ``parse_url(line)`` (pure) picks the URL out of its output lines."""

    kind = "process"
    start_timeout_s = 30.0

    def __init__(self, local_port: int) -> None:
        self.local_port = local_port
        self.proc: subprocess.Popen | None = None
        self.url: str | None = None
        self.tail: deque[str] = deque(maxlen=20)
        self._found = threading.Event()

    # -- for subclasses ---------------------------------------------------------------
    def argv(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    parse_url: Callable[[str], str | None]

    # -- the interface ----------------------------------------------------------------
    def start(self) -> str:
        self.stop()
        self._found.clear()
        self.url = None
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     env=self.env(), start_new_session=True)
        threading.Thread(target=self._read, args=(self.proc,), daemon=True,
                         name=f"tether-{self.kind}-output").start()
        deadline = time.monotonic() + self.start_timeout_s
        while not self._found.wait(0.05):
            if self.proc.poll() is not None:
                self._found.wait(0.2)  # the reader may still be draining the last lines
                if self.url:
                    break
                raise ConnectError(f"the {self.kind} tunnel exited at start "
                                   f"(code {self.proc.returncode}): {self._last_line()}")
            if time.monotonic() > deadline:
                self.stop()
                raise DeadlineError(f"the {self.kind} tunnel printed no URL within "
                                    f"{self.start_timeout_s:.0f}s: {self._last_line()}")
        assert self.url is not None
        return self.url

    def _read(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            line = raw.decode(errors="replace").rstrip()
            self.tail.append(line)
            if self.url is None:
                url = type(self).parse_url(line)
                if url:
                    self.url = url
                    self._found.set()

    def _last_line(self) -> str:
        return self.tail[-1] if self.tail else "(no output)"

    def is_alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            from tether.ssh.sshd import stop_group

            stop_group(proc.pid, timeout=3)
            try:
                proc.wait(3)
            except subprocess.TimeoutExpired:
                pass


def which(name: str) -> str | None:
    from tether.host.platform import find_program

    found = find_program(name)
    if found:
        return found
    local = Path.home() / ".local/bin" / name
    return str(local) if os.access(local, os.X_OK) else None
