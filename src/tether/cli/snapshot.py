"""`tether snapshot ...`: push, pull, ls, diff, verify, repair, prune, forget."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path
from typing import Annotated

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer(help="Keep folders (code, virtualenvs, settings) in a store: incremental, "
                  "verified, safe to restore.", no_args_is_help=True)

StoreArg = Annotated[str, typer.Argument(
    help="Store URL: file:///path, s3://bucket/prefix, hf://datasets/OWNER/NAME, "
         "kaggle://OWNER/SLUG.")]


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


@app.command()
def push(path: Annotated[Path, typer.Argument(help="Folder to snapshot.")], store: StoreArg,
         tag: Annotated[list[str] | None, typer.Option("--tag", help="Tag the snapshot "
                                                           "(repeatable).")] = None,
         json: JsonOption = False) -> None:
    """Snapshot PATH into STORE; only new content is uploaded."""
    from tether.snapshot import api

    out = Output(json)
    with out.progress(f"push {path}") as bar:
        r = api.push(store, path, tags=tuple(tag or ()), progress=bar.advance,
                     on_total=bar.total, on_status=bar.status)
    for s in r.skipped:
        out.warn(f"skipped {s}")
    out.result(dataclasses.asdict(r),
               f"snapshot {r.snapshot_id[:12]}: {r.files} files, {_size(r.bytes)}; "
               f"read {r.files_read} files, uploaded {_size(r.bytes_uploaded)} "
               f"in {r.duration_s:.2f}s")


@app.command()
def pull(source: Annotated[str, typer.Argument(
            help="The store URL, optionally followed by @ and a snapshot id prefix or tag "
                 "(STORE@ID, STORE@TAG); default: the newest snapshot.")],
         path: Annotated[Path | None, typer.Argument(
             help="Where to restore (default: the path the snapshot was taken from).")] = None,
         replace: Annotated[bool, typer.Option("--replace", help="Swap out a non-empty "
                                               "destination (atomically).")] = False,
         rebuild_venv: Annotated[bool, typer.Option("--rebuild-venv", help="Recreate "
                                 "virtualenvs whose interpreter differs, from the recorded "
                                 "package list.")] = False,
         max_entries: Annotated[int | None, typer.Option(
             "--max-entries", help="Plan at most this many files, directories and links "
                                   "(default 3,000,000; ~200 bytes of memory each).")] = None,
         json: JsonOption = False) -> None:
    """Restore a snapshot: checked first, staged next to PATH, swapped in atomically."""
    from tether.snapshot import api

    out = Output(json)
    with out.progress("pull") as bar:
        r = api.pull(source, path, replace=replace, rebuild_venv=rebuild_venv,
                     progress=bar.advance, on_total=bar.total, max_entries=max_entries)
    for w in r.warnings:
        out.warn(w)
    out.result(dataclasses.asdict(r), f"restored {r.snapshot_id[:12]} to {r.path}: "
               f"{r.files} files, {_size(r.bytes)} in {r.duration_s:.2f}s")


@app.command("ls")
def ls(store: StoreArg, json: JsonOption = False) -> None:
    """List the snapshots in STORE, oldest first."""
    from tether.snapshot import api

    out = Output(json)
    snaps = api.list_snapshots(store)
    out.result([dataclasses.asdict(s) for s in snaps],
               lambda o: o.table(["id", "time", "host", "path", "tags", "files", "size"],
                                 [(s.id[:12], s.time, s.hostname, s.path, ",".join(s.tags),
                                   s.files, _size(s.bytes)) for s in snaps])
               if snaps else o.out.print("no snapshots"))


@app.command()
def diff(store: StoreArg, a: Annotated[str, typer.Argument(help="Older snapshot (id/tag).")],
         b: Annotated[str, typer.Argument(help="Newer snapshot (id/tag).")],
         json: JsonOption = False) -> None:
    """Show what changed between snapshots A and B (+ added, - removed, M modified)."""
    from tether.snapshot import api

    out = Output(json)
    changes = api.diff(store, a, b)
    out.result([dataclasses.asdict(c) for c in changes],
               lambda o: [o.out.print(f"{c.status} {c.path}", markup=False) for c in changes]
               if changes else o.out.print("no differences"))


@app.command()
def verify(store: StoreArg,
           data: Annotated[bool, typer.Option("--data", help="Also read every pack and check "
                                              "every blob against its hash.")] = False,
           json: JsonOption = False) -> None:
    """Check the repository's structure (and with --data, all content)."""
    from tether.snapshot import api

    out = Output(json)
    with out.progress("verify", None) as advance:
        r = api.verify(store, data=data, progress=advance)
    doc = dataclasses.asdict(r) | {"ok": r.ok}

    def human(o: Output) -> None:
        for p in r.problems:
            o.out.print(f"problem: {p}", markup=False)
        o.out.print(f"{r.snapshots} snapshots, {r.packs} packs"
                    + (f", {r.blobs_checked} blobs ({_size(r.bytes_checked)}) read" if data
                       else "") + (": ok" if r.ok else f": {len(r.problems)} problems"))

    out.result(doc, human)
    if not r.ok:
        # The result above already carries the problems: with --json, stdout must hold that
        # one document, so this failure is reported on stderr only (not as a TetherError,
        # whose handler would print a second JSON document).
        _fail(f"verify found {len(r.problems)} problems in {store}", r.hint(store))


def _fail(message: str, hint: str, code: int = 1) -> None:
    sys.stderr.write(f"error: {message}\nhint: {hint}\n")
    raise typer.Exit(code)


@app.command()
def repair(store: StoreArg, json: JsonOption = False) -> None:
    """Drop corrupt and missing packs from the index (keeping their intact content), so the
    next push uploads what was lost."""
    from tether.snapshot import api

    out = Output(json)
    with out.progress("repair", None) as advance:
        r = api.repair(store, progress=advance)

    def human(o: Output) -> None:
        o.out.print(f"checked {r.packs_checked} packs: removed {len(r.corrupt_packs)} corrupt "
                    f"(kept {r.blobs_salvaged} intact blobs, lost {r.blobs_lost}), dropped "
                    f"{len(r.missing_packs)} missing from the index", markup=False)
        for p in r.problems:
            o.out.print(f"still damaged: {p}", markup=False)
        if r.problems:
            o.out.print("next: push the affected folders again to re-upload the lost content",
                        markup=False)

    out.result(dataclasses.asdict(r), human)


@app.command()
def prune(store: StoreArg,
          keep_last: Annotated[int | None, typer.Option("--keep-last", min=1,
                               help="Forget all but the newest N snapshots first.")] = None,
          json: JsonOption = False) -> None:
    """Delete packs no snapshot uses (never while a push holds the repository)."""
    from tether.snapshot import api

    out = Output(json)
    r = api.prune(store, keep_last=keep_last)
    out.result(dataclasses.asdict(r), f"forgot {len(r.forgotten)} snapshots, deleted "
               f"{r.packs_deleted} packs ({_size(r.bytes_freed)}), kept {r.packs_kept}")


@app.command()
def forget(store: StoreArg, snapshot: Annotated[str, typer.Argument(help="Snapshot id "
                                                                    "prefix or tag.")],
           json: JsonOption = False) -> None:
    """Remove one snapshot (its data goes at the next prune)."""
    from tether.snapshot import api

    out = Output(json)
    sid = api.forget(store, snapshot)
    out.result({"forgotten": sid}, f"forgot snapshot {sid[:12]}")
