"""`tether exec NAME [--cwd D] [--env K=V]... -- CMD...`: run a command on a workspace.

The command goes through the local link daemon (warm connection), so repeated calls cost a
few milliseconds plus Python start-up. :func:`fast_main` parses the common forms without
building the Typer app; anything it does not recognise (``--help``...) falls back to Typer.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

app = typer.Typer(add_completion=False)

_HELP = """Run COMMAND on host NAME; stdout, stderr and the exit code come back as they are.

One COMMAND word is shell text ('ls | wc -l'); several are an argv, each quoted. A remote
command killed by a signal exits 128+N. With a terminal on stdin a PTY is allocated
(override with -t/-T); Ctrl-C is forwarded.
"""


@app.command(help=_HELP)
def exec(  # noqa: A001 - the command's name
    name: Annotated[str, typer.Argument(help="Host name (see `tether hosts`).")],
    command: Annotated[Optional[list[str]], typer.Argument(help="The command.")] = None,
    cwd: Annotated[Optional[str], typer.Option("--cwd", help="Remote working directory.")]
    = None,
    env: Annotated[Optional[list[str]], typer.Option("--env", "-e", help="K=V (repeatable).")]
    = None,
    tty: Annotated[Optional[bool], typer.Option("--tty/--no-tty", "-t/-T",
                                                help="Force a PTY on or off.")] = None,
) -> None:
    from tether import errors
    from tether.link.daemon_client import exec_request, run_cli

    if not command:
        raise errors.UsageError("no command given", "tether exec NAME -- COMMAND [ARGS...]")
    code = run_cli(exec_request(name, command, cwd=cwd, env=env or [], tty=tty))
    raise typer.Exit(code)


def parse_fast(argv: list[str]) -> dict | None:
    """``NAME [--cwd D] [-e K=V]... [-t|-T] -- CMD...`` -> request fields; None: use Typer."""
    name = None
    cwd = None
    env: list[str] = []
    tty: bool | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            command = argv[i + 1:]
            return None if (name is None or not command) else \
                {"name": name, "command": command, "cwd": cwd, "env": env, "tty": tty}
        if arg in ("--cwd", "--env", "-e") and i + 1 < len(argv):
            if arg == "--cwd":
                cwd = argv[i + 1]
            else:
                env.append(argv[i + 1])
            i += 2
            continue
        if arg.startswith("--cwd="):
            cwd = arg[6:]
        elif arg.startswith("--env="):
            env.append(arg[6:])
        elif arg in ("-t", "--tty"):
            tty = True
        elif arg in ("-T", "--no-tty"):
            tty = False
        elif not arg.startswith("-") and name is None:
            name = arg
        else:
            return None
        i += 1
    return None


def fast_main(argv: list[str]) -> int | None:
    """The exec fast path: an exit code, or None to let Typer handle ``argv``."""
    parsed = parse_fast(argv)
    if parsed is None:
        return None
    from tether.link.daemon_client import _has_fds, exec_request, run_cli

    if not _has_fds():
        return None
    return run_cli(exec_request(parsed["name"], parsed["command"], cwd=parsed["cwd"],
                                env=parsed["env"], tty=parsed["tty"]))
