"""The wire schemas of the sandbox HTTP API, shared by the server (api.py) and the SDK.

pydantic models, because these cross a process boundary. Unknown fields are refused (a typo in
a security option must not be silently ignored). Specified in docs/sandbox-api.md.
"""

from __future__ import annotations

import base64
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

API_VERSION = 1
NAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{0,62}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunOptions(_Strict):
    """How to sandbox: the same knobs as ``tether sandbox run`` flags (None = profile default)."""

    profile: str | None = Field(None, description="permissive, moderate or restrictive")
    network: Literal["none", "allowlist", "full"] | None = None
    allow_domains: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    memory: str | None = Field(None, description="e.g. 512M, 1G")
    cpus: float | None = Field(None, gt=0)
    pids: int | None = Field(None, gt=0)
    timeout: float | None = Field(None, gt=0, description="seconds; kills the process tree")


class Stdin(_Strict):
    stdin: str | None = Field(None, description="text fed to the command's stdin")
    stdin_b64: str | None = Field(None, description="bytes fed to stdin, base64")

    def stdin_bytes(self) -> bytes | None:
        if self.stdin_b64 is not None:
            try:
                return base64.b64decode(self.stdin_b64, validate=True)
            except ValueError as exc:
                from tether.errors import UsageError

                raise UsageError(f"stdin_b64 is not valid base64: {exc}") from exc
        return None if self.stdin is None else self.stdin.encode()


class RunRequest(RunOptions, Stdin):
    command: list[str] = Field(min_length=1)


class ExecRequest(Stdin):
    command: list[str] = Field(min_length=1)
    timeout: float | None = Field(None, gt=0)


class RunResponse(_Strict):
    v: int = API_VERSION
    exit_code: int
    stdout: str
    stderr: str
    encoding: Literal["utf-8", "base64"] = Field(
        description="how stdout and stderr are encoded: utf-8 text when both are valid UTF-8")
    duration_s: float
    peak_memory_bytes: int | None = None
    timed_out: bool = False
    signal: int | None = None

    @classmethod
    def from_result(cls, result) -> RunResponse:
        try:
            out, err, enc = result.stdout.decode(), result.stderr.decode(), "utf-8"
        except UnicodeDecodeError:
            out = base64.b64encode(result.stdout).decode()
            err = base64.b64encode(result.stderr).decode()
            enc = "base64"
        return cls(exit_code=result.exit_code, stdout=out, stderr=err, encoding=enc,
                   duration_s=result.duration_s, peak_memory_bytes=result.peak_memory_bytes,
                   timed_out=result.timed_out, signal=result.signal)

    def stdout_bytes(self) -> bytes:
        return base64.b64decode(self.stdout) if self.encoding == "base64" else self.stdout.encode()

    def stderr_bytes(self) -> bytes:
        return base64.b64decode(self.stderr) if self.encoding == "base64" else self.stderr.encode()


class ExitEvent(_Strict):
    """The last event of a stream: the run's result without its output."""

    exit_code: int
    duration_s: float
    peak_memory_bytes: int | None = None
    timed_out: bool = False
    signal: int | None = None


class CreateRequest(RunOptions):
    name: str = Field(pattern=NAME_PATTERN)
    command: list[str] | None = Field(
        None, description="the main process `start` runs (default: none, exec only)")


class SandboxInfo(_Strict):
    name: str
    status: Literal["running", "stopped", "exited"]
    created_at: float
    command: list[str] | None
    options: RunOptions
    pid: int | None = None
    exit_code: int | None = None


class ErrorBody(_Strict):
    error: str
    hint: str | None = None
    kind: str


class Health(_Strict):
    ok: bool = True
    v: int = API_VERSION
