"""Python SDK for the sandbox HTTP API (``tether serve``).

``AsyncClient`` is the implementation (httpx); ``Client`` is a thin blocking runner over it: it
drives the same coroutines on an event loop in a helper thread (anyio's blocking portal), so
there is one copy of every request and of the SSE parser.

    from tether.sandbox import Client
    with Client("http://127.0.0.1:8700", token) as c:
        print(c.run(["echo", "hi"]).stdout)
        for event in c.stream(["sh", "-c", "echo out; echo err >&2"]):
            print(event.kind, event.data)
"""

from __future__ import annotations

import base64
import contextlib
import functools
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from tether import errors
from tether.sandbox import schemas

DEFAULT_TIMEOUT_S = 120.0


@dataclass(frozen=True)
class Result:
    """A finished run: the same fields as ``tether.sandbox.runner.RunResult``."""

    exit_code: int
    stdout: bytes
    stderr: bytes
    duration_s: float
    peak_memory_bytes: int | None
    timed_out: bool
    signal: int | None

    @property
    def text(self) -> str:
        """stdout decoded as UTF-8 (undecodable bytes replaced)."""
        return self.stdout.decode(errors="replace")

    @classmethod
    def from_response(cls, r: schemas.RunResponse) -> Result:
        return cls(exit_code=r.exit_code, stdout=r.stdout_bytes(), stderr=r.stderr_bytes(),
                   duration_s=r.duration_s, peak_memory_bytes=r.peak_memory_bytes,
                   timed_out=r.timed_out, signal=r.signal)


@dataclass(frozen=True)
class Event:
    """One streamed event: ``stdout``/``stderr`` carry ``data``; ``exit`` carries ``exit``."""

    kind: str
    data: bytes = b""
    exit: schemas.ExitEvent | None = None


def parse_sse_lines(lines: Sequence[str]) -> Iterator[tuple[str, str]]:
    """(event, data) pairs from SSE lines (pure; comments and ids ignored)."""
    event, data = "message", []
    for line in lines:
        if line == "":
            if data:
                yield event, "\n".join(data)
            event, data = "message", []
        elif line.startswith(":"):
            continue
        else:
            field, _, value = line.partition(":")
            value = value[1:] if value.startswith(" ") else value
            if field == "event":
                event = value
            elif field == "data":
                data.append(value)
    if data:
        yield event, "\n".join(data)


def error_from(status: int, body: Any) -> errors.TetherError:
    """The TetherError an API error answer stands for (by its ``kind``, else its status)."""
    if isinstance(body, dict) and "error" in body:
        cls = getattr(errors, str(body.get("kind")), None)
        if not (isinstance(cls, type) and issubclass(cls, errors.TetherError)):
            cls = _BY_STATUS.get(status, errors.PeerError)
        return cls(str(body["error"]), body.get("hint"))
    detail = body.get("detail") if isinstance(body, dict) else None
    cls = _BY_STATUS.get(status, errors.PeerError)
    return cls(f"the sandbox API answered {status}: {detail or body}")


_BY_STATUS: dict[int, type[errors.TetherError]] = {
    400: errors.UsageError, 401: errors.AuthError, 403: errors.PermissionDeniedError,
    404: errors.NotFoundError, 409: errors.InUseError, 413: errors.UsageError,
    422: errors.UsageError, 429: errors.RateLimitedError,
}


def _run_body(command: Sequence[str], stdin: bytes | str | None, **options: Any) -> dict:
    body: dict[str, Any] = {"command": list(command)}
    body.update({k: v for k, v in options.items() if v is not None and v != () and v != {}})
    if "allow_domains" in body:
        body["allow_domains"] = list(body["allow_domains"])
    if isinstance(stdin, str):
        body["stdin"] = stdin
    elif stdin is not None:
        body["stdin_b64"] = base64.b64encode(stdin).decode()
    return body


class AsyncClient:
    """Async SDK. Use as ``async with AsyncClient(url, token) as c: await c.run([...])``."""

    def __init__(self, base_url: str, token: str | None = None, *,
                 timeout: float = DEFAULT_TIMEOUT_S, transport: Any = None) -> None:
        import httpx

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.AsyncClient(base_url=base_url.rstrip("/"), headers=headers,
                                       timeout=timeout, transport=transport)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kw: Any):
        import httpx

        try:
            response = await self._http.request(method, path, **kw)
        except httpx.TimeoutException as exc:
            raise errors.DeadlineError(f"the sandbox API did not answer in time: {exc}") from exc
        except httpx.HTTPError as exc:
            raise errors.ConnectError(f"could not reach the sandbox API: {exc}",
                                      "is 'tether serve' running at that address?") from exc
        if response.status_code >= 400:
            exc = error_from(response.status_code, _json_or_text(response))
            if isinstance(exc, errors.RateLimitedError):
                exc.retry_after = _retry_after(response)
            raise exc
        return response

    async def health(self) -> dict:
        return (await self._request("GET", "/health")).json()

    async def run(self, command: Sequence[str], *, stdin: bytes | str | None = None,
                  **options: Any) -> Result:
        """Run ``command`` in a fresh sandbox. ``options``: profile, network, allow_domains,
        env, memory, cpus, pids, timeout (see ``schemas.RunOptions``)."""
        r = await self._request("POST", "/run", json=_run_body(command, stdin, **options))
        return Result.from_response(schemas.RunResponse.model_validate(r.json()))

    async def stream(self, command: Sequence[str], *, stdin: bytes | str | None = None,
                     **options: Any) -> AsyncIterator[Event]:
        """Yield stdout/stderr chunks as they come, then one ``exit`` event."""
        import httpx

        body = _run_body(command, stdin, **options)
        try:
            async with self._http.stream("POST", "/run/stream", json=body) as response:
                if response.status_code >= 400:
                    await response.aread()
                    raise error_from(response.status_code, _json_or_text(response))
                pending: list[str] = []
                async for line in response.aiter_lines():
                    pending.append(line)
                    if line == "":
                        for event in parse_sse_lines(pending):
                            yield _event(*event)
                        pending = []
                for event in parse_sse_lines(pending):
                    yield _event(*event)
        except httpx.HTTPError as exc:
            raise errors.ConnectError(f"the sandbox API stream failed: {exc}") from exc

    async def create_sandbox(self, name: str, *, command: Sequence[str] | None = None,
                             **options: Any) -> schemas.SandboxInfo:
        body = _run_body(command or ["-"], None, **options)
        body["command"] = list(command) if command else None
        body["name"] = name
        r = await self._request("POST", "/sandboxes", json=body)
        return schemas.SandboxInfo.model_validate(r.json())

    async def list_sandboxes(self) -> list[schemas.SandboxInfo]:
        r = await self._request("GET", "/sandboxes")
        return [schemas.SandboxInfo.model_validate(x) for x in r.json()]

    async def get_sandbox(self, name: str) -> schemas.SandboxInfo:
        r = await self._request("GET", f"/sandboxes/{name}")
        return schemas.SandboxInfo.model_validate(r.json())

    async def delete_sandbox(self, name: str, *, force: bool = False) -> None:
        await self._request("DELETE", f"/sandboxes/{name}", params={"force": force})

    async def start_sandbox(self, name: str) -> schemas.SandboxInfo:
        r = await self._request("POST", f"/sandboxes/{name}/start")
        return schemas.SandboxInfo.model_validate(r.json())

    async def stop_sandbox(self, name: str) -> schemas.SandboxInfo:
        r = await self._request("POST", f"/sandboxes/{name}/stop")
        return schemas.SandboxInfo.model_validate(r.json())

    async def exec(self, name: str, command: Sequence[str], *, stdin: bytes | str | None = None,
                   timeout: float | None = None) -> Result:
        body = _run_body(command, stdin, timeout=timeout)
        r = await self._request("POST", f"/sandboxes/{name}/exec", json=body)
        return Result.from_response(schemas.RunResponse.model_validate(r.json()))

    async def read_file(self, name: str, path: str) -> bytes:
        r = await self._request("GET", f"/sandboxes/{name}/files", params={"path": path})
        return r.content

    async def write_file(self, name: str, path: str, data: bytes | str) -> None:
        content = data.encode() if isinstance(data, str) else data
        await self._request("PUT", f"/sandboxes/{name}/files", params={"path": path},
                            content=content)

    async def logs(self, name: str) -> bytes:
        return (await self._request("GET", f"/sandboxes/{name}/logs")).content


def _retry_after(response) -> float | None:
    try:
        return float(response.headers.get("retry-after", ""))
    except ValueError:
        return None


def _json_or_text(response) -> Any:
    try:
        return response.json()
    except (ValueError, json.JSONDecodeError):
        return response.text[:200]


def _event(kind: str, data: str) -> Event:
    payload = json.loads(data)
    if kind in ("stdout", "stderr"):
        return Event(kind, base64.b64decode(payload["data"]))
    if kind == "exit":
        return Event("exit", exit=schemas.ExitEvent.model_validate(payload))
    if kind == "error":
        raise error_from(int(payload.get("status", 500)), payload)
    raise errors.ProtocolError(f"unknown event {kind!r} from the sandbox API")


class Client:
    """Blocking SDK: every method runs the ``AsyncClient`` coroutine of the same name.

    Inside ``with Client(...) as c:`` one event loop thread and one connection pool serve all
    calls. Without ``with``, each call starts and stops its own, so nothing lingers (a portal
    thread left running would keep the interpreter from exiting).
    """

    def __init__(self, base_url: str, token: str | None = None, **kw: Any) -> None:
        self._args = (base_url, token, kw)
        self._portal_cm = None
        self._portal = None
        self._async: AsyncClient | None = None

    def __enter__(self) -> Client:
        self._portal_cm, self._portal, self._async = self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _open(self):
        from anyio.from_thread import start_blocking_portal

        base_url, token, kw = self._args
        cm = start_blocking_portal()
        portal = cm.__enter__()
        try:
            client = portal.call(functools.partial(_make_async, base_url, token, **kw))
        except BaseException:
            cm.__exit__(None, None, None)
            raise
        return cm, portal, client

    @staticmethod
    def _shut(cm, portal, client) -> None:
        try:
            portal.call(client.aclose)
        finally:
            cm.__exit__(None, None, None)

    def close(self) -> None:
        if self._portal_cm is not None:
            opened, self._portal_cm = (self._portal_cm, self._portal, self._async), None
            self._shut(*opened)

    @contextlib.contextmanager
    def _session(self):
        if self._portal_cm is not None:
            yield self._portal, self._async
            return
        opened = self._open()
        try:
            yield opened[1], opened[2]
        finally:
            self._shut(*opened)

    def _call(self, name: str, *args: Any, **kw: Any) -> Any:
        with self._session() as (portal, client):
            return portal.call(functools.partial(getattr(client, name), *args, **kw))

    def stream(self, command: Sequence[str], **kw: Any) -> Iterator[Event]:
        with self._session() as (portal, client):
            agen = client.stream(command, **kw)
            try:
                while True:
                    try:
                        yield portal.call(agen.__anext__)
                    except StopAsyncIteration:
                        return
            finally:
                portal.call(agen.aclose)

    def health(self) -> dict:
        return self._call("health")

    def run(self, command: Sequence[str], **kw: Any) -> Result:
        return self._call("run", command, **kw)

    def create_sandbox(self, name: str, **kw: Any) -> schemas.SandboxInfo:
        return self._call("create_sandbox", name, **kw)

    def list_sandboxes(self) -> list[schemas.SandboxInfo]:
        return self._call("list_sandboxes")

    def get_sandbox(self, name: str) -> schemas.SandboxInfo:
        return self._call("get_sandbox", name)

    def delete_sandbox(self, name: str, **kw: Any) -> None:
        return self._call("delete_sandbox", name, **kw)

    def start_sandbox(self, name: str) -> schemas.SandboxInfo:
        return self._call("start_sandbox", name)

    def stop_sandbox(self, name: str) -> schemas.SandboxInfo:
        return self._call("stop_sandbox", name)

    def exec(self, name: str, command: Sequence[str], **kw: Any) -> Result:
        return self._call("exec", name, command, **kw)

    def read_file(self, name: str, path: str) -> bytes:
        return self._call("read_file", name, path)

    def write_file(self, name: str, path: str, data: bytes | str) -> None:
        return self._call("write_file", name, path, data)

    def logs(self, name: str) -> bytes:
        return self._call("logs", name)


async def _make_async(base_url: str, token: str | None, **kw: Any) -> AsyncClient:
    return AsyncClient(base_url, token, **kw)  # made on the portal's loop, where it is used


# The names under which `tether` itself re-exports the SDK (`tether.SandboxClient`).
SandboxClient = Client
AsyncSandboxClient = AsyncClient
