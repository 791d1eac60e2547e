"""`tether exec NAME [--cwd D] [--env K=V]... -- CMD...`: run a command on a workspace.

The command goes through the local link daemon (warm connection), so repeated calls cost a
few milliseconds plus Python start-up. The common forms never reach this module: the console
entry point hands them to :mod:`tether.cli.exec_fast`, which imports no Typer; anything it
does not recognise (``--help``...) comes here.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False)

_HELP = (
    "Run COMMAND on host NAME: tether exec NAME -- COMMAND [ARGS...]. Stdout, stderr and the "
    "exit code come back as they are; a command killed by a signal exits 128+N.\n\n"
    "One COMMAND word is shell text ('ls | wc -l'); several are an argv, each quoted. With a "
    "terminal on stdin a PTY is allocated; -t forces one even when stdin is a pipe (like "
    "ssh -tt), -T never allocates one. Ctrl-C is forwarded.\n\n"
    "Commands without a PTY get the environment your login shell's rc files set up, captured "
    "once per connection: rc-file changes apply to new connections (docs/exec-agent.md)."
)


@app.command(help=_HELP)
def exec(  # noqa: A001 - the command's name
    name: Annotated[str, typer.Argument(help="Host name (see `tether hosts`).")],
    command: Annotated[Optional[list[str]], typer.Argument(help="The command.")] = None,
    cwd: Annotated[Optional[str], typer.Option("--cwd", help="Remote working directory.")]
    = None,
    env: Annotated[Optional[list[str]], typer.Option("--env", "-e", help="K=V (repeatable).")]
    = None,
    tty: Annotated[Optional[bool], typer.Option(
        "--tty/--no-tty", "-t/-T", help="Force a PTY on (even without a terminal) or off.")]
    = None,
) -> None:
    from tether import errors
    from tether.link.daemon_client import exec_request, run_cli

    if not command:
        raise errors.UsageError("no command given", "tether exec NAME -- COMMAND [ARGS...]")
    code = run_cli(exec_request(name, command, cwd=cwd, env=env or [], tty=tty))
    raise typer.Exit(code)
