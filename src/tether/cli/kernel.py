"""`tether kernel ...`: Jupyter kernels that run on an SSH host."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer(help="Jupyter kernels on any SSH host (tether hosts or ~/.ssh/config aliases).",
                  add_completion=False, no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(help="Kernel name (installed as kernelspec tether-NAME).")]
HostOpt = Annotated[Optional[str], typer.Option(
    "--host", help="ssh alias, user@host or tether host name.", show_default=False)]
PythonOpt = Annotated[Optional[str], typer.Option(
    "--python", help="Absolute path of the remote python.", show_default=False)]
RemoteKernelOpt = Annotated[Optional[str], typer.Option(
    "--remote-kernel", help="Remote kernelspec name [default: python3].", show_default=False)]
DisplayOpt = Annotated[Optional[str], typer.Option(
    "--display-name", help="Name shown in Jupyter [default: NAME (HOST)].", show_default=False)]
SshConfigOpt = Annotated[Optional[Path], typer.Option(
    "--ssh-config", help="ssh config file [default: OpenSSH's].", show_default=False)]
InterruptOpt = Annotated[Optional[str], typer.Option(
    "--interrupt-mode", help="signal or message [default: the remote kernelspec's].",
    show_default=False)]
LifetimeOpt = Annotated[Optional[str], typer.Option(
    "--lifetime", help="session: the kernel dies with its link; grace: it waits --grace "
    "seconds for `tether kernel attach` [default: grace].", show_default=False)]
GraceOpt = Annotated[Optional[float], typer.Option(
    "--grace", help="Seconds a dropped kernel waits for a re-attach [default: 600].",
    show_default=False)]
NoCheckOpt = Annotated[bool, typer.Option("--no-check", help="Skip the health checks.")]


def _mode(value: str | None):
    from tether.errors import UsageError
    from tether.kernels.specs import InterruptMode

    if value is None:
        return None
    try:
        return InterruptMode(value.lower())
    except ValueError:
        raise UsageError(f"invalid --interrupt-mode {value!r}", "use signal or message") from None


def _show_entry(o: Output, entry, verb: str) -> None:
    s = entry.spec
    o.out.print(f"{verb} kernel {s.name} (kernelspec {s.kernel_name}) on {s.host}", markup=False)
    if entry.health is not None:
        for c in entry.health.checks:
            o.out.print(f"  ok  {c.name}: {c.message}", markup=False)
    o.out.print(f"  use: jupyter console --kernel {s.kernel_name}", markup=False)


@app.command()
def add(name: NameArg, host: HostOpt = None, python: PythonOpt = None,
        remote_kernel: RemoteKernelOpt = None, display_name: DisplayOpt = None,
        ssh_config: SshConfigOpt = None, interrupt_mode: InterruptOpt = None,
        lifetime: LifetimeOpt = None, grace: GraceOpt = None, no_check: NoCheckOpt = False,
        json: JsonOption = False) -> None:
    """Check a host and install a kernelspec that runs the kernel there."""
    from tether.errors import UsageError
    from tether.kernels.specs import RemoteKernelSpec, add_kernel

    o = Output(json)
    if not host or not python:
        raise UsageError("tether kernel add needs --host and --python",
                         "e.g. tether kernel add gpu --host gpu --python /usr/bin/python3")
    spec = RemoteKernelSpec(name=name, host=host, python=python,
                            remote_kernel=remote_kernel or "python3",
                            display_name=display_name or "",
                            ssh_config=str(ssh_config.resolve()) if ssh_config else "",
                            lifetime=lifetime or "grace",
                            grace_s=600.0 if grace is None else grace)
    entry = add_kernel(spec, check=not no_check, interrupt_mode=_mode(interrupt_mode))
    o.result(entry.to_dict(), lambda out: _show_entry(out, entry, "added"))


@app.command()
def edit(name: NameArg, host: HostOpt = None, python: PythonOpt = None,
         remote_kernel: RemoteKernelOpt = None, display_name: DisplayOpt = None,
         ssh_config: SshConfigOpt = None, interrupt_mode: InterruptOpt = None,
         lifetime: LifetimeOpt = None, grace: GraceOpt = None, no_check: NoCheckOpt = False,
         json: JsonOption = False) -> None:
    """Change a kernel's settings (only the options given), re-check and rewrite it."""
    from tether.kernels.specs import edit_kernel

    o = Output(json)
    entry = edit_kernel(name, check=not no_check, interrupt_mode=_mode(interrupt_mode),
                        host=host, python=python, remote_kernel=remote_kernel,
                        display_name=display_name,
                        ssh_config=str(ssh_config.resolve()) if ssh_config else None,
                        lifetime=lifetime, grace_s=grace)
    o.result(entry.to_dict(), lambda out: _show_entry(out, entry, "updated"))


@app.command()
def delete(name: NameArg, json: JsonOption = False) -> None:
    """Remove a kernel's kernelspec (running kernels are not touched)."""
    from tether.kernels.specs import delete_kernel

    o = Output(json)
    path = delete_kernel(name)
    o.result({"name": name, "deleted": str(path)}, f"deleted kernel {name} ({path})")


@app.command("list")
def list_(no_check: NoCheckOpt = False, json: JsonOption = False) -> None:
    """List tether kernels and check each one (exit 3 when any check fails)."""
    from tether.kernels.specs import list_kernels

    o = Output(json)
    broken: list[tuple[str, str]] = []
    with o.progress("checking kernels", unit="kernels") as advance:
        entries = list_kernels(check=not no_check, on_checked=advance,
                               on_broken=lambda name, problem: broken.append((name, problem)))
    for name, problem in broken:
        o.warn(f"kernel {name} is not listed, its kernelspec is broken: {problem} "
               f"(`tether kernel delete {name}` removes it)")
    bad = [e for e in entries if e.health is not None and not e.health.ok]

    def human(out: Output) -> None:
        if not entries:
            out.out.print("no tether kernels (add one: tether kernel add NAME --host H "
                          "--python /abs/python)", markup=False)
            return
        rows = []
        for e in entries:
            status = "-" if e.health is None else ("ok" if e.health.ok else "FAILED")
            rows.append([e.spec.name, e.spec.host, e.spec.python, e.spec.remote_kernel,
                         e.spec.interrupt_mode.value, e.spec.lifetime, status])
        out.table(["name", "host", "python", "remote kernel", "interrupt", "lifetime",
                   "health"], rows)
        for e in bad:
            failure = e.health.failure
            out.err.print(f"{e.spec.name}: {failure.name}: {failure.message}", markup=False)
            if failure.hint:
                out.err.print(f"  hint: {failure.hint}", markup=False)

    o.result({"kernels": [e.to_dict() for e in entries]}, human)
    if bad:
        raise typer.Exit(3)


@app.command()
def ps(name: NameArg, json: JsonOption = False) -> None:
    """Kernels of NAME running on its host (ids for `tether kernel attach`)."""
    import time

    from tether.kernels.attach import remote_kernels
    from tether.kernels.specs import get_kernel

    o = Output(json)
    spec = get_kernel(name)
    kernels = [k for k in remote_kernels(spec) if k.get("tag") == spec.name]
    rows = [[k["kernel_id"], "running" if k.get("alive") else "dead", k.get("lifetime"),
             f"{time.time() - float(k.get('started_at') or 0):.0f}s"] for k in kernels]
    o.result({"kernels": kernels}, lambda out: out.table(["id", "state", "lifetime", "age"],
                                                         rows) if rows else
             out.out.print(f"no kernels of {name} run on {spec.host}", markup=False))


@app.command()
def attach(target: Annotated[str, typer.Argument(help="Kernel name or kernel id.")],
           connection_file: Annotated[Optional[Path], typer.Option(
               "--connection-file", help="Where to write the local connection file "
               "[default: the Jupyter runtime dir].", show_default=False)] = None,
           json: JsonOption = False) -> None:
    """Re-attach to a kernel that outlived its link; runs until Ctrl-C or the kernel ends."""
    import sys

    from tether.errors import ConnectError
    from tether.kernels.attach import attach_kernel

    o = Output(json)
    attached = attach_kernel(target, connection_file=connection_file)
    o.result(attached.to_dict(), lambda out: out.out.print(
        f"attached to kernel {attached.kernel_id} on {attached.host}\n"
        f"  connection file: {attached.connection_file}\n"
        f"  use: jupyter console --existing {attached.connection_file}\n"
        "  Ctrl-C detaches (the kernel keeps running for its grace period)", markup=False))
    sys.stdout.flush()
    try:
        code = attached.wait()
    except KeyboardInterrupt:
        attached.close()
        raise
    attached.close()
    if code == 255:
        raise ConnectError(f"the link to {attached.host} dropped",
                           f"attach again: tether kernel attach {attached.kernel_id}")
    o.info(f"kernel {attached.kernel_id} exited ({code})")
