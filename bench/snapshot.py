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

Both sides skip the same files (__pycache__, *.pyc, .cache). Timings are the best of
``--runs`` (default 3), interleaved, each started after ``sync``, because the machine is
shared. The file:// store fsyncs every pack (durable); tar's output is not fsynced.

Usage: python bench/snapshot.py [--json] [--runs N] [--workspace DIR] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
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
        for i in range(runs):
            tar_t.append(timed(lambda: sh(f"tar -cf - {excl} -C {ws} . | zstd -3 -T0 -q "
                                          f"> {tarball}")))
            repo = tmp / f"repo{i}"
            os.environ["TETHER_HOME"] = str(tmp / f"home{i}")
            push_t.append(timed(lambda repo=repo: api.push(f"file://{repo}", ws)))
            if i:
                shutil.rmtree(repo)
        repo = tmp / "repo0"
        url = f"file://{repo}"
        os.environ["TETHER_HOME"] = str(tmp / "home0")
        figures["tar_zstd_s"] = min(tar_t)
        figures["push_s"] = min(push_t)
        figures["push_ratio"] = min(push_t) / min(tar_t)
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
            x = tmp / f"untar{i}"
            x.mkdir()
            untar_t.append(timed(lambda x=x: sh(f"zstd -dc {tarball} | tar -x -C {x}")))
            shutil.rmtree(x)
            out = tmp / f"pull{i}"
            pull_t.append(timed(lambda out=out: api.pull(url, out)))
            shutil.rmtree(out)
        figures["untar_s"] = min(untar_t)
        figures["pull_s"] = min(pull_t)
        figures["restore_ratio"] = min(pull_t) / min(untar_t)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return figures


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--runs", type=int, default=3)
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
