"""Benchmark: tether snapshots against `tar | zstd -3 -T0` on a realistic workspace.

Builds (once, cached) a ~200 MB / ~10k-file workspace: a venv with numpy, pandas, requests
and rich, plus a source tree (a copy of the Python stdlib) committed to a git repository.
Then measures, against a file:// store:

- push_ratio     first push wall time / `tar -cf - | zstd -3 -T0` of the same files
- size_ratio     repository bytes / .tar.zst bytes
- nochange_s     a push with nothing changed (in-process API call; the CLI's time, with
                 interpreter start, is printed for information)
- nochange_bytes bytes written to the store by that push
- delta_ratio    bytes uploaded after `pip install` of one small package / bytes of the
                 files that install added or changed
- restore_ratio  pull wall time / `zstd -dc | tar -x`

Both sides skip the same files (__pycache__, *.pyc, .cache). The machine is shared, so
each of ``--runs`` (default 5) runs times the anchor and tether back to back (order
alternating, each after ``sync``), and a ratio is the median of the per-run ratios.
The file:// store fsyncs every pack (durable); tar's output is not fsynced.

Usage: python bench/snapshot.py [--json] [--runs N] [--workspace DIR] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from functools import partial
from pathlib import Path

GOALS = {  # name -> (goal, "<=" or "<")
    "push_ratio": (1.5, "<="),
    "size_ratio": (1.05, "<="),
    "nochange_s": (0.3, "<="),
    "nochange_bytes": (100_000, "<"),
    "delta_ratio": (3.0, "<="),
    "restore_ratio": (1.5, "<="),
}
EXCLUDES = ["--exclude=__pycache__", "--exclude=*.pyc", "--exclude=.cache"]
DELTA_PACKAGE = "tabulate==0.9.0"


def sh(cmd: str, **kw) -> None:
    subprocess.run(cmd, shell=True, check=True, **kw)


def build_workspace(ws: Path) -> None:
    if ws.exists():
        shutil.rmtree(ws)
    ws.mkdir(parents=True)
    py = sys.executable
    print(f"building the workspace in {ws} (pip install numpy pandas requests rich)...",
          file=sys.stderr)
    sh(f"{py} -m venv {ws}/venv")
    sh(f"{ws}/venv/bin/pip install -q numpy pandas requests rich")
    stdlib = sysconfig.get_paths()["stdlib"]
    sh(f"rsync -a --exclude=__pycache__ --exclude=site-packages --exclude='config-*' "
       f"{stdlib}/ {ws}/src/")
    sh("git init -q && git add -A && git -c user.name=bench -c user.email=b@x "
       "commit -q -m init", cwd=ws / "src")
    (ws / ".bench-ready").write_text("ok")


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def fmt_times(ts: list[float]) -> str:
    return " ".join(f"{t:.2f}" for t in ts)


def paired_ratio(ours: list[float], anchor: list[float]) -> float:
    """Median of per-run ratios: each of our runs is timed right next to an anchor run, so a
    load spike from other processes on the shared machine hits both sides of one pair."""
    return statistics.median(o / a for o, a in zip(ours, anchor, strict=True))


def timed(fn) -> float:
    os.sync()  # start each measurement with no dirty pages of the previous one in flight
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def listing(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in ("__pycache__", ".cache")]
        for f in filenames:
            if f.endswith(".pyc"):
                continue
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            out[p] = (st.st_size, st.st_mtime_ns)
    return out


def du(path: Path) -> int:
    return sum(os.lstat(os.path.join(d, f)).st_size
               for d, _, fs in os.walk(path) for f in fs)


def run(ws: Path, runs: int) -> dict:
    from tether.snapshot import api

    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-"))
    tarball = tmp / "ws.tar.zst"
    excl = " ".join(EXCLUDES)
    figures: dict[str, float] = {}
    try:
        tar_t, push_t = [], []
        tar_cmd = f"tar -cf - {excl} -C {ws} . | zstd -3 -T0 -q > {tarball}"
        # warm-up, not timed: page cache and imports favour neither side afterwards
        sh(tar_cmd)
        os.environ["TETHER_HOME"] = str(tmp / "home-warm")
        api.push(f"file://{tmp}/repo-warm", ws)
        shutil.rmtree(tmp / "repo-warm")
        for i in range(runs):
            repo = tmp / f"repo{i}"
            os.environ["TETHER_HOME"] = str(tmp / f"home{i}")
            pair = [(tar_t, partial(sh, tar_cmd)),
                    (push_t, partial(api.push, f"file://{repo}", ws))]
            for times, step in (pair if i % 2 == 0 else pair[::-1]):  # alternate: cancel drift
                times.append(timed(step))
            if i:
                shutil.rmtree(repo)
        repo = tmp / "repo0"
        url = f"file://{repo}"
        os.environ["TETHER_HOME"] = str(tmp / "home0")
        log(f"tar|zstd {fmt_times(tar_t)}; push {fmt_times(push_t)}")
        figures["tar_zstd_s"] = min(tar_t)
        figures["push_s"] = min(push_t)
        figures["push_ratio"] = paired_ratio(push_t, tar_t)
        figures["tar_zst_bytes"] = tarball.stat().st_size
        figures["repo_bytes"] = du(repo)
        figures["size_ratio"] = figures["repo_bytes"] / figures["tar_zst_bytes"]

        nochange = []
        for _ in range(runs):
            t = time.perf_counter()
            r = api.push(url, ws)
            nochange.append((time.perf_counter() - t, r.bytes_uploaded))
        figures["nochange_s"] = min(t for t, _ in nochange)
        figures["nochange_bytes"] = max(b for _, b in nochange)
        tether = shutil.which("tether")
        if tether:  # for information: the same push through the CLI, interpreter start included
            figures["nochange_cli_s"] = min(timed(lambda: sh(
                f"{tether} snapshot push {ws} {url} --json > /dev/null")) for _ in range(runs))

        before = listing(ws)
        sh(f"{ws}/venv/bin/pip install -q --no-deps {DELTA_PACKAGE}")
        try:
            after = listing(ws)
            changed = sum(size for p, (size, m) in after.items() if before.get(p) != (size, m))
            r = api.push(url, ws)
            figures["delta_changed_bytes"] = changed
            figures["delta_uploaded_bytes"] = r.bytes_uploaded
            figures["delta_ratio"] = r.bytes_uploaded / max(1, changed)
        finally:
            sh(f"{ws}/venv/bin/pip uninstall -q -y {DELTA_PACKAGE.split('==')[0]}")

        untar_t, pull_t = [], []
        for i in range(runs):
            x, out = tmp / f"untar{i}", tmp / f"pull{i}"
            x.mkdir()
            pair = [(untar_t, partial(sh, f"zstd -dc {tarball} | tar -x -C {x}")),
                    (pull_t, partial(api.pull, url, out))]
            for times, step in (pair if i % 2 == 0 else pair[::-1]):
                times.append(timed(step))
            shutil.rmtree(x)
            shutil.rmtree(out)
        log(f"untar {fmt_times(untar_t)}; pull {fmt_times(pull_t)}")
        figures["untar_s"] = min(untar_t)
        figures["pull_s"] = min(pull_t)
        figures["restore_ratio"] = paired_ratio(pull_t, untar_t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workspace", type=Path,
                    default=Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                    / "tether-bench" / "snapshot-ws")
    ap.add_argument("--rebuild", action="store_true")
    args = ap.parse_args()
    ws = args.workspace
    if args.rebuild or not (ws / ".bench-ready").exists():
        build_workspace(ws)
    files = len(listing(ws))
    figures = run(ws, args.runs)
    figures["workspace_files"] = files
    results = {name: {"value": figures[name], "goal": goal, "op": op,
                      "pass": figures[name] <= goal if op == "<=" else figures[name] < goal}
               for name, (goal, op) in GOALS.items()}
    if args.json:
        print(json.dumps({"figures": figures, "results": results}, indent=2))
        return
    if "nochange_cli_s" in figures:
        print(f"(no-change push through the CLI, process start included: "
              f"{figures['nochange_cli_s']:.2f}s)")
    print(f"workspace: {ws} ({files} files, {figures['tar_zst_bytes'] / 1e6:.1f} MB as "
          f".tar.zst); tar|zstd {figures['tar_zstd_s']:.2f}s, push {figures['push_s']:.2f}s, "
          f"untar {figures['untar_s']:.2f}s, pull {figures['pull_s']:.2f}s")
    print(f"{'figure':<16}{'value':>14}  {'goal':<12}result")
    for name, r in results.items():
        v = r["value"]
        shown = f"{v:,.0f}" if name == "nochange_bytes" else f"{v:.3f}"
        print(f"{name:<16}{shown:>14}  {r['op']} {r['goal']:<9}{'PASS' if r['pass'] else 'FAIL'}")


if __name__ == "__main__":
    main()
