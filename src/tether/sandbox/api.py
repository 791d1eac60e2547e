"""The sandbox HTTP API (``tether serve``): a FastAPI app made by ``create_app(settings)``.

Every request passes one guard before any route runs, in this order:

1. a browser ``Origin`` (or ``Sec-Fetch-Site: cross-site``) that is not explicitly allowed is
   refused with 403, so a web page the user visits cannot drive the API (no CSRF, and no DNS
   rebinding either, since the page cannot learn the token);
2. the bearer token is checked in constant time (401 without it); only ``/health`` and the
   OpenAPI documents are open;
3. the request body is limited (413 past ``max_body_bytes``, by header or while streaming).

Errors are ``TetherError``s mapped to status codes in ONE handler (``STATUS_CODES``). The
wire format, including the SSE events of ``POST /run/stream``, is in docs/sandbox-api.md.
"""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

# FastAPI resolves route annotations in this module's globals (PEP 563 strings), so the
# request types are imported here; this module is loaded only by `tether serve` and tests.
from fastapi import Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from tether import errors
from tether.sandbox import schemas

DEFAULT_MAX_BODY = 16 * 1024 * 1024
OPEN_PATHS = frozenset({"/health", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"})
TOKEN_SECRET_KEY = "sandbox:api:token"

# The most specific class in an error's MRO wins.
STATUS_CODES: dict[type[errors.TetherError], int] = {
    errors.TetherError: 500,
    errors.UsageError: 400,
    errors.AlreadyExistsError: 409,
    errors.InUseError: 409,
    errors.LockedError: 409,
    errors.NotFoundError: 404,
    errors.AuthError: 401,
    errors.PermissionDeniedError: 403,
    errors.RateLimitedError: 429,
}


def status_for(exc: errors.TetherError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS_CODES:
            return STATUS_CODES[cls]
    return 500


class AuthPolicy(str, Enum):
    """Who may call the API. TOKEN_REQUIRED is the default; NONE only on a loopback address."""

    TOKEN_REQUIRED = "token"
    NONE = "none"


@dataclass(frozen=True)
class ApiSettings:
    token: str | None
    auth: AuthPolicy = AuthPolicy.TOKEN_REQUIRED
    allowed_origins: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY
    workdir: Path = field(default_factory=Path.cwd)
    pool_size: int = 0  # warm sandboxes kept for POST /run (0: every run starts cold)
    max_runs: int | None = None  # runs at once before 429 (None: 4 per CPU)


def _json_response(status: int, body: dict[str, Any], headers: list | None = None):
    payload = json.dumps(body).encode()
    start = {"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"),
                         (b"content-length", str(len(payload)).encode()), *(headers or [])]}
    return start, {"type": "http.response.body", "body": payload}


class _BodyTooLarge(Exception):
    pass


class Guard:
    """Pure ASGI middleware: origin, token and body size, before routing (see module doc)."""

    def __init__(self, app, settings: ApiSettings) -> None:
        self.app = app
        self.settings = settings
        self._token = (settings.token or "").encode()

    def _refusal(self, scope) -> tuple[int, str, str | None] | None:
        headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
        origin = headers.get("origin")
        if origin is not None and origin not in self.settings.allowed_origins:
            return 403, f"cross-origin request from {origin} refused", \
                "browser pages may not call this API; use the SDK or curl"
        if origin is None and headers.get("sec-fetch-site") in ("cross-site", "same-site"):
            return 403, "cross-site request refused", None
        length = headers.get("content-length")
        if length is not None and (not length.isdigit()
                                   or int(length) > self.settings.max_body_bytes):
            return 413, f"request body larger than {self.settings.max_body_bytes} bytes", None
        if self.settings.auth is AuthPolicy.NONE or scope["path"] in OPEN_PATHS:
            return None
        scheme, _, given = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(),
                                                                 self._token):
            return 401, "missing or wrong bearer token", \
                "send 'Authorization: Bearer <token>' (tether serve printed it, or --token-file)"
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        refusal = self._refusal(scope)
        if refusal is not None:
            status, message, hint = refusal
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else []
            kind = {401: "AuthError", 403: "PermissionDeniedError"}.get(status, "UsageError")
            for msg in _json_response(status, {"error": message, "hint": hint, "kind": kind},
                                      extra):
                await send(msg)
            return
        seen = 0
        started = False

        async def limited_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.settings.max_body_bytes:
                    raise _BodyTooLarge
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyTooLarge:
            if started:
                raise
            for msg in _json_response(413, {"error": "request body too large", "hint": None,
                                            "kind": "UsageError"}):
                await send(msg)


def _client_of(request) -> str | None:
    return f"{request.client.host}:{request.client.port}" if request.client else None


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def create_app(settings: ApiSettings):
    """The API app for ``settings``. No globals: two apps in one process do not share state."""
    from fastapi import FastAPI

    from tether._version import __version__
    from tether.sandbox import service

    if settings.auth is AuthPolicy.TOKEN_REQUIRED and not settings.token:
        raise errors.ConfigError("the sandbox API needs a token",
                                 "pass one (tether serve generates and stores it)")
    runner = service.Service(workdir=settings.workdir, pool_size=settings.pool_size,
                             max_runs=settings.max_runs)
    # a workspace the runner refuses (missing, or exposing $HOME) fails here, not per request
    runner.prepare(schemas.RunRequest(command=["true"]))
    app = FastAPI(title="tether sandbox API", version=__version__,
                  description="Run commands in bubblewrap sandboxes. See docs/sandbox-api.md.",
                  lifespan=runner.lifespan)
    app.state.service = runner

    @app.exception_handler(errors.TetherError)
    async def tether_error(request: Request, exc: errors.TetherError):
        body = schemas.ErrorBody(error=exc.message, hint=exc.hint, kind=type(exc).__name__)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, errors.AuthError) else None
        if isinstance(exc, errors.RateLimitedError) and exc.retry_after is not None:
            headers = {"Retry-After": str(int(exc.retry_after + 0.999))}
        return JSONResponse(body.model_dump(), status_code=status_for(exc), headers=headers)

    @app.get("/health", response_model=schemas.Health)
    async def health() -> schemas.Health:
        return schemas.Health()

    @app.post("/run", response_model=schemas.RunResponse)
    async def run(req: schemas.RunRequest, request: Request) -> schemas.RunResponse:
        with runner.admission.slot():
            result = await runner.run(req, via="api", client=_client_of(request))
        return schemas.RunResponse.from_result(result)

    @app.post("/run/stream", response_class=StreamingResponse,
              responses={200: {"content": {"text/event-stream": {}}}})
    async def run_stream(req: schemas.RunRequest, request: Request):
        prepared = runner.prepare(req)  # bad options fail here, as a normal HTTP error
        stdin = req.stdin_bytes()
        runner.admission.acquire()  # held until the stream ends (released by _stream)
        return StreamingResponse(_stream(lambda cb: runner.run_prepared(
            prepared, stdin, via="api", client=_client_of(request), on_output=cb),
            done=runner.admission.release),
            media_type="text/event-stream", headers={"Cache-Control": "no-store"})

    _add_sandbox_routes(app, settings, runner.admission)
    app.add_middleware(Guard, settings=settings)
    return app


def _add_sandbox_routes(app, settings: ApiSettings, admission) -> None:
    """/sandboxes: named sandboxes, their exec, logs and files."""
    from tether.sandbox import named

    @app.get("/sandboxes", response_model=list[schemas.SandboxInfo])
    def list_sandboxes() -> list[schemas.SandboxInfo]:
        return [s.to_schema() for s in named.list_sandboxes()]

    @app.post("/sandboxes", response_model=schemas.SandboxInfo, status_code=201)
    def create_sandbox(req: schemas.CreateRequest) -> schemas.SandboxInfo:
        options = schemas.RunOptions(**req.model_dump(exclude={"name", "command"}))
        return named.create(req.name, options, command=req.command,
                            workdir=settings.workdir).to_schema()

    @app.get("/sandboxes/{name}", response_model=schemas.SandboxInfo)
    def get_sandbox(name: str) -> schemas.SandboxInfo:
        return named.get(name).to_schema()

    @app.delete("/sandboxes/{name}", status_code=204, response_class=Response)
    def delete_sandbox(name: str, force: bool = False):
        named.remove(name, force=force)
        return Response(status_code=204)

    @app.post("/sandboxes/{name}/start", response_model=schemas.SandboxInfo)
    def start_sandbox(name: str) -> schemas.SandboxInfo:
        return named.start(name).to_schema()

    @app.post("/sandboxes/{name}/stop", response_model=schemas.SandboxInfo)
    def stop_sandbox(name: str) -> schemas.SandboxInfo:
        return named.stop(name).to_schema()

    @app.post("/sandboxes/{name}/exec", response_model=schemas.RunResponse)
    async def exec_in(name: str, req: schemas.ExecRequest, request: Request):
        with admission.slot():
            result = await named.exec_async(name, req.command, stdin=req.stdin_bytes(),
                                            timeout=req.timeout, via="api",
                                            client=_client_of(request))
        return schemas.RunResponse.from_result(result)

    @app.get("/sandboxes/{name}/logs", response_class=Response)
    def sandbox_logs(name: str):
        return Response(named.logs(name), media_type="application/octet-stream")

    @app.get("/sandboxes/{name}/files", response_class=Response,
             responses={200: {"content": {"application/octet-stream": {}}}})
    def get_file(name: str, path: str = Query(..., description="path inside the sandbox")):
        return Response(named.read_file(name, path), media_type="application/octet-stream")

    @app.put("/sandboxes/{name}/files", status_code=204, response_class=Response)
    async def put_file(name: str, request: Request,
                       path: str = Query(..., description="path inside the sandbox")):
        data = await request.body()
        await asyncio.to_thread(named.write_file, name, path, data)
        return Response(status_code=204)


async def _stream(start, done=None):
    """SSE events of one run: stdout/stderr chunks (base64) as they come, then exit or error.

    The queue is bounded, so a slow client slows the reader of the sandbox's pipes instead of
    growing memory; if the client goes away, the generator is closed and the run cancelled.
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue(maxsize=64)

    async def on_output(stream: str, data: bytes) -> None:
        await queue.put((stream, data))

    async def drive() -> None:
        try:
            result = await start(on_output)
        except errors.TetherError as exc:
            await queue.put(("error", exc))
        except Exception as exc:  # a bug of ours: still end the stream with an error event
            await queue.put(("error", errors.TetherError(f"internal error: {exc}")))
        else:
            await queue.put(("exit", result))

    task = asyncio.create_task(drive())
    try:
        while True:
            kind, value = await queue.get()
            if kind in ("stdout", "stderr"):
                yield _sse(kind, {"data": base64.b64encode(value).decode()})
            elif kind == "exit":
                yield _sse("exit", schemas.ExitEvent(
                    exit_code=value.exit_code, duration_s=value.duration_s,
                    peak_memory_bytes=value.peak_memory_bytes, timed_out=value.timed_out,
                    signal=value.signal).model_dump())
                return
            else:
                yield _sse("error", {"error": value.message, "hint": value.hint,
                                     "kind": type(value).__name__, "status": status_for(value)})
                return
    finally:
        if not task.done():
            task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if done is not None:
            done()


def ensure_token(token_file: Path | None = None, *, rotate: bool = False) -> tuple[str, bool]:
    """The API token and whether it was just generated (then show it once).

    From ``token_file`` if given; else the one kept by tether.secrets; else (or with
    ``rotate``) a new random one, stored there.
    """
    import secrets as pysecrets

    from tether import secrets

    if token_file is not None:
        return secrets.read_secret(secrets.SecretSource("sandbox API token", file=token_file,
                                                        prompt=False)), False
    if not rotate:
        existing = secrets.get_secret(TOKEN_SECRET_KEY)
        if existing:
            return existing, False
    token = pysecrets.token_urlsafe(32)
    secrets.set_secret(TOKEN_SECRET_KEY, token)
    return token, True


def _is_loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(*, host: str = "127.0.0.1", port: int = 0, token_file: Path | None = None,
          rotate_token: bool = False, auth: AuthPolicy = AuthPolicy.TOKEN_REQUIRED,
          allowed_origins: tuple[str, ...] = (), max_body_bytes: int = DEFAULT_MAX_BODY,
          pool_size: int = 0, workdir: Path | None = None, max_runs: int | None = None,
          announce=print) -> None:
    """``tether serve``: bind, announce the URL (and a new token, once), serve until ^C."""
    import socket

    import uvicorn

    if auth is AuthPolicy.NONE and not _is_loopback(host):
        raise errors.UsageError(f"--auth none is refused on {host}",
                                "without a token, listen on 127.0.0.1 only")
    token = None
    if auth is AuthPolicy.TOKEN_REQUIRED:
        token, generated = ensure_token(token_file, rotate=rotate_token)
        if generated:
            announce(f"API token (shown once; kept in tether's secret store): {token}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # accepted connections inherit it: without, a response written as headers + body waits
    # for the client's delayed ACK (Nagle), ~40 ms per request
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise errors.UsageError(f"cannot listen on {host}:{port}: {exc.strerror}",
                                "pick another --port (0 picks a free one)") from exc
    sock.listen(128)
    bound = sock.getsockname()
    url = f"http://{f'[{bound[0]}]' if family == socket.AF_INET6 else bound[0]}:{bound[1]}"
    # The API's own /docs page may call it. Its origin is the address we bound, never the
    # request's Host header (which a DNS-rebinding page controls).
    own = (url,) + ((f"http://localhost:{bound[1]}",) if _is_loopback(host) else ())
    settings = ApiSettings(token=token, auth=auth, allowed_origins=(*allowed_origins, *own),
                           max_body_bytes=max_body_bytes, workdir=Path(workdir or Path.cwd()),
                           pool_size=pool_size, max_runs=max_runs)
    app = create_app(settings)
    announce(f"serving the sandbox API on {url}")
    config = uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
