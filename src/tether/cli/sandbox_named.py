"""Named-sandbox commands of `tether sandbox`: create, start, exec, attach, cp, logs, stop, rm,
ls, and the audit log. `tether.cli.sandbox` calls `register(app)` to add them to its group.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tether.cli.output import JsonOption, Output

NameArg = Annotated[str, typer.Argument(help="The sandbox's name.")]


def _stdin_bytes() -> bytes:
    raw = getattr(sys.stdin, "buffer", None)
    return raw.read() if raw is not None else sys.stdin.read().encode()


def _write(target, data: bytes) -> None:
    raw = getattr(target, "buffer", None)
    if raw is not None:
        raw.write(data)
    else:  # an in-memory text stream (tests, embedding)
        target.write(data.decode(errors="replace"))
    target.flush()


def _stream(name: str, data: bytes) -> None:
    _write(sys.stdout if name == "stdout" else sys.stderr, data)


def _info_row(box) -> list:
    import datetime

    info = box.to_schema()
    created = datetime.datetime.fromtimestamp(info.created_at).strftime("%Y-%m-%d %H:%M")
    return [info.name, info.status, info.options.profile or "default", created,
            " ".join(info.command) if info.command else "-"]


def create(
    name: NameArg,
    command: Annotated[Optional[list[str]], typer.Argument(
        help="The main command `start` runs (after --); optional.")] = None,
    profile: Annotated[Optional[str], typer.Option(
        help="restrictive, moderate (default) or permissive.")] = None,
    no_network: Annotated[bool, typer.Option("--no-network", help="No network at all.")] = False,
    allow_domain: Annotated[Optional[list[str]], typer.Option(
        "--allow-domain", help="Allow only this domain (repeatable) through the proxy.")] = None,
    mount: Annotated[Optional[list[str]], typer.Option(
        help="SRC[:DST][:ro] (repeatable).")] = None,
    env: Annotated[Optional[list[str]], typer.Option(help="K=V (repeatable).")] = None,
    memory: Annotated[Optional[str], typer.Option(help="Memory limit, e.g. 1G.")] = None,
    cpus: Annotated[Optional[float], typer.Option(help="CPU limit in cores.")] = None,
    pids: Annotated[Optional[int], typer.Option(help="Process limit.")] = None,
    timeout: Annotated[Optional[float], typer.Option(
        help="Seconds per process; kills it.")] = None,
    json: JsonOption = False,
) -> None:
    """Create a named sandbox with its own /workspace and home (nothing runs yet)."""
    from tether.sandbox import named
    from tether.sandbox.schemas import RunOptions

    out = Output(json)
    options = RunOptions(profile=profile, network="none" if no_network else None,
                         allow_domains=list(allow_domain or ()),
                         env=dict(_split_env(e) for e in env or ()), memory=memory, cpus=cpus,
                         pids=pids, timeout=timeout)
    box = named.create(name, options, command=command or None, mounts=mount or ())
    out.result(box.to_schema().model_dump(), f"created sandbox {name}")


def _split_env(item: str) -> tuple[str, str]:
    from tether.errors import UsageError

    key, eq, value = item.partition("=")
    if not eq:
        import os

        if key not in os.environ:
            raise UsageError(f"--env {key}: not set here", "use --env K=V")
        value = os.environ[key]
    return key, value


def start(name: NameArg, json: JsonOption = False) -> None:
    """Start the sandbox's main command in the background (its output: `logs`)."""
    from tether.sandbox import named

    box = named.start(name)
    Output(json).result(box.to_schema().model_dump(), f"started {name}")


def stop(name: NameArg, json: JsonOption = False) -> None:
    """Stop the sandbox's main command (and everything it started)."""
    from tether.sandbox import named

    box = named.stop(name)
    Output(json).result(box.to_schema().model_dump(), f"stopped {name}")


def exec_(
    name: NameArg,
    command: Annotated[list[str], typer.Argument(help="The command, after --.")],
    timeout: Annotated[Optional[float], typer.Option(help="Seconds; kills it.")] = None,
    stdin: Annotated[bool, typer.Option(
        "--stdin", "-i", help="Pass this command's stdin to CMD (read fully first).")] = False,
    json: JsonOption = False,
) -> None:
    """Run CMD in the sandbox (its files; its processes while started); exits with its code."""
    from tether.sandbox import named

    out = Output(json)
    data = _stdin_bytes() if stdin else None
    result = named.exec_sync(name, command, stdin=data, timeout=timeout, via="cli",
                             on_output=None if json else _stream, prestart=False)
    out.result(result.to_dict(), lambda o: None)
    if result.timed_out:
        out.warn(f"timed out after {timeout or 'the sandbox timeout'}s: killed")
    raise typer.Exit(result.exit_code)


def attach(
    name: NameArg,
    command: Annotated[Optional[list[str]], typer.Argument(
        help="What to run on the terminal (default: an interactive shell).")] = None,
    record: Annotated[Optional[Path], typer.Option(
        help="Write the session as an asciicast v2 file.")] = None,
) -> None:
    """Open an interactive shell in the sandbox on a pseudo-terminal."""
    from tether.sandbox.attach import attach as do_attach
    from tether.sandbox.attach import check_record_path

    check_record_path(record)
    code = do_attach(name, command or None, record=record)
    if record is not None:
        sys.stderr.write(f"recorded the session to {record}\n")
    raise typer.Exit(code)


def cp(
    src: Annotated[str, typer.Argument(help="A host path, or NAME:path in the sandbox.")],
    dst: Annotated[str, typer.Argument(help="A host path, or NAME:path in the sandbox.")],
    json: JsonOption = False,
) -> None:
    """Copy files into or out of a sandbox (NAME:/workspace/..., NAME:~/...)."""
    from tether.sandbox import named

    out = Output(json)
    with out.progress("copying", total=None, unit="files") as advance:
        count = named.copy(src, dst, progress=advance)
    out.result({"files": count, "src": src, "dst": dst},
               f"copied {count} file{'s' if count != 1 else ''}")


def logs(
    name: NameArg,
    follow: Annotated[bool, typer.Option("--follow", "-f",
                                         help="Keep printing new output while it runs.")]
    = False,
) -> None:
    """Print the output of the sandbox's main command."""
    from tether.sandbox import named

    if not follow:
        _write(sys.stdout, named.logs(name))
        return
    for chunk in named.follow_logs(name):
        _write(sys.stdout, chunk)


def rm(
    name: NameArg,
    force: Annotated[bool, typer.Option("--force", "-f", help="Stop it first if running.")]
    = False,
    json: JsonOption = False,
) -> None:
    """Delete a sandbox and its files."""
    from tether.sandbox import named

    named.remove(name, force=force)
    Output(json).result({"removed": name}, f"removed {name}")


def ls(json: JsonOption = False) -> None:
    """List the named sandboxes."""
    from tether.sandbox import named

    out = Output(json)
    boxes = named.list_sandboxes()

    def human(o: Output) -> None:
        if not boxes:
            o.info("no sandboxes (create one: tether sandbox create NAME)")
            return
        o.table(["name", "status", "profile", "created", "main command"],
                [_info_row(b) for b in boxes])

    out.result([b.to_schema().model_dump() for b in boxes], human)


def audit(
    limit: Annotated[int, typer.Option(help="Show the last N runs (0: all).")] = 50,
    sandbox: Annotated[Optional[str], typer.Option(help="Only runs in this sandbox.")] = None,
    json: JsonOption = False,
) -> None:
    """Show the log of every sandboxed run: who, what, profile, exit, time."""
    import datetime
    import shlex

    from tether.sandbox import audit as audit_log

    out = Output(json)
    records = audit_log.read(limit=limit, sandbox=sandbox)

    def human(o: Output) -> None:
        if not records:
            o.info(f"no runs logged yet ({audit_log.log_path()})")
            return
        o.table(["time", "who", "via", "sandbox", "profile", "network", "exit", "seconds",
                 "command"],
                [(datetime.datetime.fromtimestamp(r.time).strftime("%Y-%m-%d %H:%M:%S"),
                  r.who, r.via, r.sandbox or "-", r.profile, r.network,
                  "timeout" if r.timed_out else (r.error and "error") or r.exit_code,
                  f"{r.duration_s:.3f}", shlex.join(r.command)[:60]) for r in records])

    out.result([r.to_json() for r in records], human)


def register(app: typer.Typer) -> None:
    """Add the named-sandbox commands to the `tether sandbox` group."""
    # NAME comes first and options may follow it, so the command goes after `--`
    # (tether sandbox exec dev -- ls -la), which ends option parsing.
    app.command("create")(create)
    app.command("start")(start)
    app.command("exec")(exec_)
    app.command("attach")(attach)
    app.command("cp")(cp)
    app.command("logs")(logs)
    app.command("stop")(stop)
    app.command("rm")(rm)
    app.command("ls")(ls)
    app.command("audit")(audit)
