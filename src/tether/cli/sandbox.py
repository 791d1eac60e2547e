"""`tether sandbox`: run commands in isolation (run, probe; named sandboxes add more)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer(help="Run untrusted code in bubblewrap sandboxes.", no_args_is_help=True)


@app.command(context_settings={"allow_interspersed_args": False})
def run(
    command: Annotated[list[str], typer.Argument(help="The command, after --.")],
    profile: Annotated[Optional[str], typer.Option(
        help="restrictive, moderate (default) or permissive.")] = None,
    no_network: Annotated[bool, typer.Option("--no-network", help="No network at all.")] = False,
    allow_domain: Annotated[Optional[list[str]], typer.Option(
        "--allow-domain", help="Allow only this domain (repeatable) through the proxy.")] = None,
    mount: Annotated[Optional[list[str]], typer.Option(
        help="SRC[:DST][:ro] (repeatable).")] = None,
    env: Annotated[Optional[list[str]], typer.Option(
        help="K=V, or K to pass the host's value (repeatable; use K for secrets: "
             "values on the command line show in ps).")] = None,
    memory: Annotated[Optional[str], typer.Option(help="Memory limit, e.g. 1G.")] = None,
    cpus: Annotated[Optional[float], typer.Option(help="CPU limit in cores.")] = None,
    pids: Annotated[Optional[int], typer.Option(help="Process limit.")] = None,
    timeout: Annotated[Optional[float], typer.Option(help="Seconds; kills everything.")] = None,
    keep: Annotated[bool, typer.Option(help="Keep the sandbox home directory.")] = False,
    rootfs: Annotated[Optional[Path], typer.Option(help="A separate root filesystem.")] = None,
    workdir: Annotated[Optional[Path], typer.Option(
        help="The workspace (default: current directory).")] = None,
    stdin: Annotated[bool, typer.Option(
        "--stdin", "-i", help="Pass this command's stdin to CMD (read fully first).")] = False,
    ignore_project_config: Annotated[bool, typer.Option(
        "--ignore-project-config",
        help="Do not read tether.toml [sandbox] (by default it applies only when trusted: "
             "tether sandbox trust).")] = False,
    json: JsonOption = False,
) -> None:
    """Run CMD in a fresh sandbox; exits with CMD's exit code."""
    from tether.cli.sandbox_named import _stream
    from tether.sandbox.runner import sandbox_run
    from tether.sandbox.trust import ProjectConfig

    out = Output(json)
    data = _read_stdin() if stdin else None
    result = sandbox_run(
        list(command), profile=profile, workdir=workdir, no_network=no_network,
        allow_domains=tuple(allow_domain or ()), mounts=tuple(mount or ()),
        env=tuple(env or ()), memory=memory, cpus=cpus, pids=pids, timeout=timeout,
        rootfs=rootfs, keep=keep, stdin=data, on_output=None if json else _stream,
        prestart=False, via="cli",
        project_config=ProjectConfig.IGNORED if ignore_project_config
        else ProjectConfig.TRUSTED_ONLY)
    out.result(result.to_dict(), lambda o: None)
    for note in result.notes:
        out.warn(note)
    if result.timed_out:
        out.warn(f"timed out after {timeout}s: the sandbox was killed")
    if result.kept:
        out.info(f"kept the sandbox home at {result.kept}")
    raise typer.Exit(result.exit_code)


def _read_stdin() -> bytes | None:
    """stdin for --stdin; a terminal is not read (there is no interactive input)."""
    if sys.stdin is None or sys.stdin.isatty():
        return None
    raw = getattr(sys.stdin, "buffer", None)
    data = raw.read() if raw is not None else sys.stdin.read().encode()
    return data or None


@app.command()
def trust(
    path: Annotated[Optional[Path], typer.Argument(
        help="A tether.toml or its directory (default: the nearest one here or above).")]
    = None,
    revoke: Annotated[bool, typer.Option(
        "--revoke", help="Forget the trust in PATH (its [sandbox] section no longer applies).")]
    = False,
    list_: Annotated[bool, typer.Option("--list", help="List the trusted files.")] = False,
    json: JsonOption = False,
) -> None:
    """Trust a project tether.toml: its [sandbox] section applies to runs until it changes.

    A sandbox with a writable workspace can write tether.toml, so an untrusted or changed
    section is refused instead of applied. Review it first.
    """
    from tether.errors import UsageError
    from tether.sandbox import trust as trust_store

    out = Output(json)
    if list_:
        if path is not None or revoke:
            raise UsageError("--list takes no PATH and no --revoke",
                             hint="tether sandbox trust --list")
        records = trust_store.list_trusted()

        def human(o: Output) -> None:
            if not records:
                o.info("no trusted project configs (trust one: tether sandbox trust PATH)")
                return
            o.table(["path", "sha256", "trusted"],
                    [(str(r.path), r.sha256[:16], _when(r.trusted_at)) for r in records])

        out.result([r.to_json() for r in records], human)
        return
    if revoke:
        if path is None:
            raise UsageError("--revoke needs the PATH to forget",
                             hint="see them with: tether sandbox trust --list")
        key = trust_store.canonical(path)
        was = trust_store.revoke(path)
        out.result({"path": str(key), "revoked": was},
                   f"revoked the trust in {key}" if was else f"{key} was not trusted")
        return
    record = trust_store.trust(path)
    out.result(record.to_json(), f"trusted {record.path} (sha256 {record.sha256[:16]}): its "
                                 "[sandbox] section applies until the file changes")


def _when(timestamp: float) -> str:
    import datetime

    return datetime.datetime.fromtimestamp(timestamp).strftime("%Y-%m-%d %H:%M")


_SCOPE_LABELS = {"abstract_unix_socket": "abstract sockets", "signal": "signals"}


@app.command()
def probe(json: JsonOption = False) -> None:
    """Show what this host can enforce (namespaces, seccomp, Landlock, cgroups) per profile."""
    from tether.sandbox.probe import probe as do_probe
    from tether.sandbox.probe import report

    out = Output(json)
    data = report(do_probe())

    def human(o: Output) -> None:
        o.table(["mechanism", "enforced"], list(data["mechanisms"].items()))
        o.out.print()
        o.table(["profile", "enforceable", "network", "landlock", "scoped", "limits"],
                [(n, "yes" if p["enforceable"] else "NO: missing " + ", ".join(p["missing"]),
                  p["network"], "yes" if p["landlock"] else "no",
                  ", ".join(_SCOPE_LABELS.get(x, x) for x in p["scoped"]) or "nothing",
                  ", ".join(f"{k}={v}" for k, v in p["limits"].items()) or "-")
                 for n, p in data["profiles"].items()])
        for problem in data["problems"]:
            o.out.print(f"problem: {problem}", markup=False)

    out.result(data, human)


# Named sandboxes and the audit log (sandbox-service): create, start, exec, attach, cp, logs,
# stop, rm, ls, audit.
from tether.cli.sandbox_named import register as _register_named  # noqa: E402

_register_named(app)
