"""`tether serve`: the sandbox HTTP API (FastAPI on uvicorn)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(help="Serve the sandbox HTTP API.")


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0: a free one, printed).")] = 8700,
    token_file: Annotated[Optional[Path], typer.Option(
        help="Read the bearer token from this file (default: tether's secret store).")] = None,
    rotate_token: Annotated[bool, typer.Option(
        help="Generate a new token (shown once) and forget the old one.")] = False,
    auth: Annotated[str, typer.Option(
        help="token (default) or none (loopback only).")] = "token",
    allow_origin: Annotated[Optional[list[str]], typer.Option(
        "--allow-origin", help="A browser origin allowed to call the API (repeatable).")]
    = None,
    max_body: Annotated[str, typer.Option(help="Largest request body, e.g. 16M.")] = "16M",
    pool: Annotated[int, typer.Option(
        help="Warm sandboxes kept per run shape for POST /run (0: none). Pooled runs start "
             "in ms on a private copy of the workspace: their writes are discarded.")] = 0,
    workdir: Annotated[Optional[Path], typer.Option(
        help="The workspace of /run (default: current directory).")] = None,
    max_runs: Annotated[Optional[int], typer.Option(
        help="Runs at once before answering 429 (default: 4 per CPU).")] = None,
) -> None:
    """Serve the sandbox API (OpenAPI at /docs); a bearer token is required by default."""
    from tether.errors import UsageError
    from tether.sandbox.api import AuthPolicy
    from tether.sandbox.api import serve as do_serve
    from tether.sandbox.profiles import parse_size

    try:
        policy = AuthPolicy(auth)
    except ValueError:
        raise UsageError(f"--auth {auth!r} is not a policy", "use token or none") from None

    def announce(line: str) -> None:
        sys.stderr.write(line + "\n")
        sys.stderr.flush()

    do_serve(host=host, port=port, token_file=token_file, rotate_token=rotate_token,
             auth=policy, allowed_origins=tuple(allow_origin or ()),
             max_body_bytes=parse_size(max_body), pool_size=pool, workdir=workdir,
             max_runs=max_runs, announce=announce)
