"""`tether exec` without Typer: the hot path of scripts that call tether in a loop.

Parses ``NAME [--cwd D] [-e K=V]... [-t|-T] -- CMD...`` by hand and hands the request to the
link daemon (:mod:`tether.link.daemon_client`). Anything else returns None and the full Typer
CLI (:mod:`tether.cli.exec`) takes over, so help and error messages stay in one place.
"""

from __future__ import annotations


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
