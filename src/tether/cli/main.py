"""The `tether` command: a root Typer app whose command groups load only when used.

Loading a group imports its library (asyncssh, FastAPI, boto3, ...), so the root imports none
of them: `tether exec` must start fast, and a broken group must not break the others.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Annotated

import typer
from typer.core import TyperGroup

from tether import errors
from tether._version import __version__

# name -> "module:attribute" of a Typer app. A Typer app with exactly one command and no
# callback becomes a plain command (`tether up`), otherwise a group (`tether keys ...`).
LAZY_COMMANDS: dict[str, str] = {
    "doctor": "tether.cli.doctor:app",
    "snapshot": "tether.cli.snapshot:app",
    "up": "tether.cli.up:app",
    "down": "tether.cli.down:app",
    "host": "tether.cli.host:app",
    "connect": "tether.cli.connect:app",
    "hosts": "tether.cli.hosts:app",
    "proxy": "tether.cli.proxy:app",
    "exec": "tether.cli.exec:app",
    "shell": "tether.cli.shell:app",
    "forward": "tether.cli.forward:app",
    "cp": "tether.cli.cp:app",
    "status": "tether.cli.status:app",
    "keys": "tether.cli.keys:app",
    "git": "tether.cli.git:app",
    "kernel": "tether.cli.kernel:app",
    "sandbox": "tether.cli.sandbox:app",
    "serve": "tether.cli.serve:app",
    "mcp": "tether.cli.mcp:app",
    "agents": "tether.cli.agents:app",
    "agent": "tether.cli.agent:app",
    "sync": "tether.cli.sync:app",
    "ide": "tether.cli.ide:app",
}

# One table maps errors to exit codes (documented in docs/cli.md); the most specific class
# in an error's MRO wins.
EXIT_CODES: dict[type[errors.TetherError], int] = {
    errors.TetherError: 1,
    errors.UsageError: 2,
    errors.PartialFailureError: 3,
    errors.NotFoundError: 10,
    errors.LockedError: 11,
    errors.AuthError: 12,
}
EXIT_INTERRUPTED = 130


def exit_code_for(exc: errors.TetherError) -> int:
    for cls in type(exc).__mro__:
        if cls in EXIT_CODES:
            return EXIT_CODES[cls]
    return 1


class LazyGroup(TyperGroup):
    def list_commands(self, ctx: typer.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(LAZY_COMMANDS))

    def get_command(self, ctx: typer.Context, cmd_name: str):
        if cmd_name in LAZY_COMMANDS:
            module_name, _, attr = LAZY_COMMANDS[cmd_name].partition(":")
            sub = getattr(importlib.import_module(module_name), attr)
            command = typer.main.get_command(sub)
            command.name = cmd_name
            return command
        return super().get_command(ctx, cmd_name)


app = typer.Typer(
    cls=LazyGroup,
    name="tether",
    help="Secure workspaces on borrowed machines: SSH, sync, snapshots and sandboxes.",
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"tether {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=_version_callback,
                                          is_eager=True, help="Print the version and exit.")]
    = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks (or TETHER_DEBUG=1).")]
    = False,
) -> None:
    if debug:
        os.environ["TETHER_DEBUG"] = "1"


def _debug() -> bool:
    return os.environ.get("TETHER_DEBUG", "") not in ("", "0")


def report_error(exc: errors.TetherError) -> int:
    """Print ``exc`` as one line (plus its hint) and return its exit code."""
    from tether.cli.output import current

    code = exit_code_for(exc)
    out = current()
    if out is not None and out.json_mode:
        import json

        sys.stdout.write(json.dumps({"error": exc.message, "hint": exc.hint,
                                     "kind": type(exc).__name__, "exit_code": code}) + "\n")
    sys.stderr.write(f"error: {exc.message}\n")
    if exc.hint:
        sys.stderr.write(f"hint: {exc.hint}\n")
    return code


def report_usage_error(exc: typer.TyperException) -> int:
    """Print a usage error the parser raised (missing argument, bad value, unknown command or
    option) like tether's own errors: one ``error:`` line and a ``hint:`` naming the command's
    help, instead of click's usage block. Returns the exit code (2 for usage errors)."""
    # Typer vendors click; a group called without a command raises this to show its help.
    from typer._click.exceptions import NoArgsIsHelpError

    if isinstance(exc, NoArgsIsHelpError):  # `tether keys`: the help is the answer
        exc.show()
        return exc.exit_code
    message = " ".join(exc.format_message().split()).rstrip(".")
    if message[:1].isupper() and message[1:2].islower():  # "Missing ..." -> "missing ..."
        message = message[0].lower() + message[1:]
    ctx = getattr(exc, "ctx", None)
    command = ctx.command_path if ctx is not None else "tether"
    sys.stderr.write(f"error: {message}\nhint: run `{command} --help`\n")
    return exc.exit_code


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: run the app, turn errors into one line and an exit code."""
    try:
        if argv is None and sys.argv[1:2] == ["exec"]:
            # `tether exec` fast path: no Typer app is built (docs/link-daemon.md).
            from tether.cli.exec_fast import fast_main

            rv = fast_main(sys.argv[2:])
            if rv is not None:
                sys.exit(rv)
        if argv is None and sys.argv[1:2] == ["proxy"] and len(sys.argv) == 3 \
                and not sys.argv[2].startswith("-"):
            # `tether proxy NAME` is ssh's ProxyCommand: every ssh/scp/rsync/git start waits
            # for it, so it skips building the Typer app.
            from tether.link.proxy import run_proxy

            sys.exit(run_proxy(sys.argv[2]))
        command = typer.main.get_command(app)
        rv = command.main(args=argv, prog_name="tether", standalone_mode=False)
    except errors.TetherError as exc:
        if _debug():
            raise
        sys.exit(report_error(exc))
    except typer.Abort:
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        if _debug():
            raise
        sys.stderr.write("interrupted\n")
        sys.exit(EXIT_INTERRUPTED)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # click's usage errors: one line, a hint, exit 2
        sys.exit(report_usage_error(exc))
    except BrokenPipeError:
        # `tether x | head`: the reader left; that is not an error of ours.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except Exception as exc:  # a bug of ours: say so in one line, keep the traceback opt-in
        if _debug():
            raise
        sys.stderr.write(f"error: internal error: {type(exc).__name__}: {exc}\n"
                         "hint: run again with --debug for the traceback and report it\n")
        sys.exit(1)
    # standalone_mode=False hands typer.Exit codes back as the return value
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
