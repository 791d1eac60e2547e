"""`tether sync`: two-way file sync between a local folder and a workspace.

`tether sync NAME LOCAL [REMOTE]` starts a session (once, or `--watch` in the foreground);
`list`, `status`, `stop`, `conflicts` and `resolve` manage sessions. All logic lives in
`tether.sync.api`.
"""

from __future__ import annotations

from typing import Annotated

import typer
from typer.core import TyperGroup

from tether.cli.output import JsonOption, Output

_SUBCOMMANDS = {"list", "status", "stop", "conflicts", "resolve", "start"}


class _DefaultStart(TyperGroup):
    """`tether sync NAME LOCAL ...` means `tether sync start NAME LOCAL ...`."""

    def resolve_command(self, ctx, args):  # type: ignore[no-untyped-def]
        if args and args[0] not in _SUBCOMMANDS and not args[0].startswith("-"):
            args = ["start", *args]
        return super().resolve_command(ctx, args)


_HELP = """Two-way file sync with a workspace.

  tether sync NAME LOCAL [REMOTE] [--watch] [--mode MODE] [--exclude P]... [--json]

REMOTE is relative to the workspace home (default: LOCAL's folder name). MODE is \
two-way-safe (default: a conflict keeps both versions), two-way-resolved (local wins), \
one-way-safe (never overwrites remote changes) or one-way-replica (remote mirrors local). \
.gitignore and .tetherignore files are honoured. A one-shot sync that leaves unresolved \
conflicts or unsynced paths exits 3. See `tether sync start --help`.
"""

app = typer.Typer(cls=_DefaultStart, add_completion=False, no_args_is_help=True,
                  help=_HELP)


@app.callback()
def sync() -> None:
    pass


def _conflict_rows(conflicts: list[dict]) -> list[tuple]:
    def kind(e: dict | None) -> str:
        return "deleted" if e is None else e["kind"]

    return [(c["path"], kind(c.get("local")), kind(c.get("remote")), c.get("copy") or "",
             c.get("resolved") or "") for c in conflicts]


def _show_conflicts(o: Output, conflicts: list[dict]) -> None:
    if conflicts:
        o.table(["conflict", "local", "remote", "other version saved as", "auto-resolved"],
                _conflict_rows(conflicts))
        o.out.print("resolve with: tether sync resolve PATH --keep local|remote|both",
                    markup=False)


@app.command("start", help="Sync LOCAL with REMOTE on host NAME (`start` may be left out). "
                           "Without --watch: exit 3 when conflicts stay unresolved or paths "
                           "could not be synced.")
def start(
    name: Annotated[str, typer.Argument(help="Host name (see `tether hosts`).")],
    local: Annotated[str, typer.Argument(help="Local folder.")],
    remote: Annotated[str | None, typer.Argument(
        help="Folder on the workspace (relative to its home; default: LOCAL's name).")] = None,
    watch: Annotated[bool, typer.Option("--watch", help="Keep syncing changes until stopped "
                                        "(Ctrl-C or `tether sync stop`).")] = False,
    mode: Annotated[str, typer.Option("--mode", help="two-way-safe (default: conflicts keep "
                                      "both versions), two-way-resolved (local wins), "
                                      "one-way-safe, one-way-replica.")] = "two-way-safe",
    exclude: Annotated[list[str] | None, typer.Option(
        "--exclude", help="Gitignore-style pattern to leave out (repeatable); .gitignore and "
                          ".tetherignore are honoured too.")] = None,
    json_mode: JsonOption = False,
) -> None:
    from tether.sync import api

    out = Output(json_mode)
    if watch:
        def on_cycle(r) -> None:  # type: ignore[no-untyped-def]
            if r.changed or r.conflicts or r.failed:
                if json_mode:
                    out.result({"uploaded": r.uploaded, "downloaded": r.downloaded,
                                "deleted_local": r.deleted_local,
                                "deleted_remote": r.deleted_remote,
                                "conflicts": [c.to_dict() for c in r.conflicts],
                                "failed": [list(f) for f in r.failed],
                                "duration_s": round(r.duration_s, 4)})
                else:
                    out.info(f"up {r.uploaded}, down {r.downloaded}, deleted "
                             f"{r.deleted_local + r.deleted_remote}, conflicts "
                             f"{len(r.conflicts)} ({r.duration_s * 1000:.0f} ms)")

        out.info(f"watching {local} <-> {name}:{remote or '(same name)'}; Ctrl-C stops")
        api.sync_watch(name, local, remote, mode=mode, excludes=exclude or (),
                       on_cycle=on_cycle)
        return
    with out.progress(f"sync {name}", total=None, unit="bytes") as advance:
        result = api.sync_once(name, local, remote, mode=mode, excludes=exclude or (),
                               on_bytes=advance)
    data = result.to_dict()

    # Open conflicts and failed paths are a partial failure: scripts see exit 3 (docs/cli.md)
    # instead of a success that left work undone; the result is still printed in full.
    left = [f"{n} unresolved conflict{'s' if n != 1 else ''}"
            for n in [len(result.conflicts)] if n]
    left += [f"{n} path{'s' if n != 1 else ''} not synced" for n in [len(result.failed)] if n]

    def human(o: Output) -> None:
        o.out.print(f"synced {result.local} <-> {name}:{result.remote} ({result.mode}): "
                    f"{result.uploaded} up, {result.downloaded} down, "
                    f"{result.deleted_local + result.deleted_remote} deleted, "
                    f"{len(result.conflicts)} conflicts in {result.duration_s:.1f} s"
                    + (f"; incomplete: {' and '.join(left)} (exit 3)" if left else ""),
                    markup=False)
        _show_conflicts(o, data["conflicts"])
        for c in data["auto_resolved"]:
            o.warn(f"{c['path']}: changed on both sides; kept {c['resolved']} ({result.mode})")
        for f in data["failed"]:
            o.warn(f"{f['side']}: {f['path']}: {f['reason']}")

    out.result(data, human)
    if left:
        from tether.cli.main import EXIT_CODES
        from tether.errors import PartialFailureError

        raise typer.Exit(EXIT_CODES[PartialFailureError])


@app.command("list", help="List sync sessions (running or not).")
def list_(json_mode: JsonOption = False) -> None:
    from tether.sync import api

    out = Output(json_mode)
    records = api.sync_list()

    def human(o: Output) -> None:
        if not records:
            o.out.print("no sync sessions", markup=False)
            return
        o.table(["id", "host", "local", "remote", "mode", "status", "conflicts"],
                [(r.id, r.name, r.local, r.remote, r.mode,
                  r.status if r.running or r.status not in ("watching", "syncing", "starting")
                  else "dead", len(r.conflicts)) for r in records])

    out.result([r.to_dict() for r in records], human)


@app.command(help="Show one sync session: status, last cycle, conflicts.")
def status(session: Annotated[str | None, typer.Argument(
               help="Session id (prefix) or a path inside its local folder.")] = None,
           json_mode: JsonOption = False) -> None:
    from tether.sync import api

    out = Output(json_mode)
    rec = api.sync_status(session)

    def human(o: Output) -> None:
        o.table(["field", "value"], [
            ("id", rec.id), ("host", rec.name), ("local", rec.local), ("remote", rec.remote),
            ("mode", rec.mode), ("status", rec.status), ("running", rec.running),
            ("cycles", rec.cycles), ("error", rec.error or "")])
        _show_conflicts(o, rec.conflicts)

    out.result(rec.to_dict(), human)


@app.command(help="Stop a running sync session (or all with --all).")
def stop(session: Annotated[str | None, typer.Argument(
             help="Session id (prefix) or a path inside its local folder.")] = None,
         all_sessions: Annotated[bool, typer.Option("--all", help="Stop every running "
                                                    "session.")] = False,
         json_mode: JsonOption = False) -> None:
    from tether.sync import api

    out = Output(json_mode)
    stopped = api.sync_stop(session, all_sessions=all_sessions)
    out.result({"stopped": stopped}, f"stopped {len(stopped)} session(s)"
               + (": " + ", ".join(stopped) if stopped else ""))


@app.command(help="List the conflicts of a sync session.")
def conflicts(session: Annotated[str | None, typer.Argument(
                  help="Session id (prefix) or a path inside its local folder.")] = None,
              json_mode: JsonOption = False) -> None:
    from tether.sync import api

    out = Output(json_mode)
    found = api.sync_conflicts(session)

    def human(o: Output) -> None:
        if not found:
            o.out.print("no conflicts", markup=False)
        _show_conflicts(o, found)

    out.result(found, human)


@app.command(help="Resolve the conflict at PATH (a local path): keep local, remote or both.")
def resolve(path: Annotated[str, typer.Argument(help="The conflicting file, as a local path.")],
            keep: Annotated[str, typer.Option("--keep", help="local, remote or both (local "
                                              "at PATH, remote's version beside it).")],
            json_mode: JsonOption = False) -> None:
    from tether.sync import api

    out = Output(json_mode)
    res = api.sync_resolve(path, keep)
    out.result(res, f"resolved {res['path']}: kept {res['keep']}"
               + (f"; {len(res['remaining'])} conflict(s) left" if res["remaining"] else ""))
