"""Sandbox benchmark: `python bench/sandbox.py [--json] [-n N]`.

run_ratio: p50 of `run -- true` through the Python API (resolve_spec + runner.run, default
profile) divided by p50 of raw `bwrap ... true` with the same namespaces (--unshare-all,
--share-net when the profile has the network, same /usr binds, --proc, --dev), both started
from this Python process. The two are interleaved so machine noise hits both alike.
Context figures: the other profiles, and podman/runc one-shot where installed.
Other helpers append their figures (api_run_p50_ms, pool_p50_ms) to FIGURES via `figure()`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

FIGURES: list[dict] = []


def figure(name: str, value: float | None, unit: str, goal: str | None = None,
           ok: bool | None = None, note: str = "") -> None:
    FIGURES.append({"name": name, "value": value, "unit": unit, "goal": goal, "pass": ok,
                    "note": note})


def p50_ms(fn: Callable[[], object], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return statistics.median(times)


def interleaved_p50(fns: dict[str, Callable[[], object]], n: int) -> dict[str, float]:
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(n):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1000)
    return {k: statistics.median(v) for k, v in times.items()}


def raw_bwrap_argv(share_net: bool) -> list[str]:
    argv = ["bwrap", "--unshare-all"] + (["--share-net"] if share_net else [])
    argv += ["--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for d in ("/bin", "/sbin", "/lib", "/lib64"):
        p = Path(d)
        if p.is_symlink():
            argv += ["--symlink", str(p.readlink()), d]
    return argv + ["--proc", "/proc", "--dev", "/dev", "true"]


def bench_runner(n: int) -> None:
    from tether.sandbox import runner
    from tether.sandbox.profiles import DEFAULT_PROFILE, NetworkMode, resolve_spec

    work = Path(tempfile.mkdtemp(prefix="tether-bench-"))

    def api(profile: str = DEFAULT_PROFILE, **kw) -> Callable[[], object]:
        def go():
            r = runner.run(resolve_spec(profile, ["true"], workdir=work, **kw))
            assert r.exit_code == 0, r.stderr
        return go

    default = resolve_spec(DEFAULT_PROFILE, ["true"], workdir=work)
    share = default.network is NetworkMode.FULL
    raw = raw_bwrap_argv(share)
    api()()          # warm: probe, prepared /etc, compiled filter
    res = interleaved_p50({"api": api(), "raw": lambda: subprocess.run(raw, check=True)}, n)
    ratio = res["api"] / res["raw"]
    figure("run_ratio", round(ratio, 2), "x", "<= 2", ratio <= 2,
           f"api {res['api']:.2f} ms / raw bwrap {res['raw']:.2f} ms ({DEFAULT_PROFILE})")
    figure("run_p50_ms", round(res["api"], 2), "ms", note=f"{DEFAULT_PROFILE}, Python API")
    figure("raw_bwrap_p50_ms", round(res["raw"], 2), "ms",
           note="share-net" if share else "unshared net")
    raw_nonet = raw_bwrap_argv(False)
    for label, fn in (("restrictive_p50_ms", api("restrictive")),
                      ("restrictive_no_landlock_p50_ms", api("restrictive", landlock=False)),
                      ("allowlist_p50_ms", api(allow_domains=["pypi.org"])),
                      ("with_limits_p50_ms", api(pids=256, memory="1G")),
                      ("raw_bwrap_no_net_p50_ms",
                       lambda: subprocess.run(raw_nonet, check=True))):
        figure(label, round(p50_ms(fn, max(n // 2, 5)), 2), "ms", note="context")
    shutil.rmtree(work, ignore_errors=True)


def bench_other_runtimes(n: int) -> None:
    for tool, argv in (("podman", ["podman", "run", "--rm", "--network=none", "alpine", "true"]),
                       ("runc", None)):
        if shutil.which(tool) is None:
            figure(f"{tool}_p50_ms", None, "ms", note="not installed")
            continue
        if argv is None:
            figure(f"{tool}_p50_ms", None, "ms", note="installed; needs an OCI bundle "
                   "(not measured)")
            continue
        try:
            figure(f"{tool}_p50_ms", round(p50_ms(
                lambda: subprocess.run(argv, check=True, capture_output=True), n), 2), "ms")
        except subprocess.CalledProcessError as exc:
            figure(f"{tool}_p50_ms", None, "ms", note=f"failed: {exc}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("-n", type=int, default=60, help="runs per figure")
    args = ap.parse_args(argv)
    bench_runner(args.n)
    bench_other_runtimes(max(args.n // 6, 3))
    extra = globals().get("EXTRA_BENCHES", [])
    for fn in extra:        # other helpers register callables here
        fn(args.n)
    if args.json:
        print(json.dumps({"figures": FIGURES}, indent=2))
    else:
        print(f"{'figure':34} {'value':>10}  {'goal':8} {'result':6}  note")
        for f in FIGURES:
            value = "-" if f["value"] is None else f"{f['value']} {f['unit']}"
            result = "" if f["pass"] is None else ("pass" if f["pass"] else "FAIL")
            print(f"{f['name']:34} {value:>10}  {f['goal'] or '':8} {result:6}  {f['note']}")
    return 0 if all(f["pass"] is not False for f in FIGURES) else 1


EXTRA_BENCHES: list[Callable[[int], None]] = []

if __name__ == "__main__":
    sys.exit(main())
