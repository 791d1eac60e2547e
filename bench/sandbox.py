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
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from _common import p50_ms

FIGURES: list[dict] = []


def figure(name: str, value: float | None, unit: str, goal: str | None = None,
           ok: bool | None = None, note: str = "") -> None:
    FIGURES.append({"name": name, "value": value, "unit": unit, "goal": goal, "pass": ok,
                    "note": note})


def interleaved_p50(fns: dict[str, Callable[[], object]], n: int) -> dict[str, float]:
    """Alternate the order every round (ABBA) so load drifts hit every candidate alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    order = list(fns.items())
    for i in range(n):
        for name, fn in (order if i % 2 == 0 else order[::-1]):
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
    # both collect the command's output through pipes
    res = interleaved_p50({"api": api(), "raw": lambda: subprocess.run(raw, check=True,
                                                                       capture_output=True)}, n)
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
                       lambda: subprocess.run(raw_nonet, check=True, capture_output=True))):
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
    ap.add_argument("-n", type=int, default=100, help="runs per figure")
    args = ap.parse_args(argv)
    bench_runner(args.n)
    bench_other_runtimes(max(args.n // 6, 3))
    extra = globals().get("EXTRA_BENCHES", [])
    for fn in extra:        # other helpers register callables here
        fn(args.n)
    import os

    figure("load_average", round(os.getloadavg()[0], 2), "", note=f"{os.cpu_count()} cpus; "
           "figures on a loaded machine are noisy")
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

# -- sandbox-service figures: the warm pool and the HTTP API ----------------------------------


def bench_pool(n: int) -> None:
    """pool_p50_ms: one pooled `true` (fresh state) while the pool is warm and idle, i.e.
    each run finds a ready sandbox and the refill of the previous one is done. Back-to-back
    runs (the refill competing with the run for the 2 cores and the GIL) are a context figure.
    """
    import os

    from tether.sandbox.pool import WarmPool
    from tether.sandbox.profiles import DEFAULT_PROFILE, resolve_spec

    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-pool-"))
    work = tmp / "work"
    work.mkdir()
    os.environ.setdefault("TETHER_HOME", str(tmp / "home"))
    spec = resolve_spec(DEFAULT_PROFILE, ["true"], workdir=work)
    raw = raw_bwrap_argv(True)
    idle, busy, bare = [], [], []
    with WarmPool(size=2, scratch_root=tmp / "scratch") as pool:
        pool.warm(spec, wait=True, timeout=60)
        for _ in range(n):
            pool.warm(spec, wait=True, timeout=60)
            time.sleep(0.03)  # let the previous refill and cleanup finish
            t = time.perf_counter()
            r = pool.run(spec)
            idle.append((time.perf_counter() - t) * 1000)
            assert r.exit_code == 0, r.stderr
            time.sleep(0.03)  # interleaved: machine noise hits both alike
            t = time.perf_counter()
            subprocess.run(raw, check=True, capture_output=True)  # pipes, as the pool
            bare.append((time.perf_counter() - t) * 1000)
        pool.warm(spec, wait=True, timeout=60)
        for _ in range(max(n // 3, 5)):
            t = time.perf_counter()
            pool.run(spec)
            busy.append((time.perf_counter() - t) * 1000)
        pooled = pool.stats["pooled"]
    rt = _pool_p50_isolated(n, spec, tmp)
    shutil.rmtree(tmp, ignore_errors=True)
    p50 = statistics.median(idle)
    load = os.getloadavg()[0]
    figure("pool_p50_ms", round(p50, 2), "ms", "<= 5", p50 <= 5,
           f"pooled `true`, fresh state, {DEFAULT_PROFILE}; {pooled} pooled runs; "
           f"load average {load:.1f} on {os.cpu_count()} cpus")
    figure("pool_vs_raw_bwrap", round(p50 / statistics.median(bare), 2), "x",
           note=f"context: raw bwrap one-shot `true` interleaved: "
                f"{statistics.median(bare):.2f} ms")
    figure("pool_back_to_back_p50_ms", round(statistics.median(busy), 2), "ms",
           note="context: no pause, refills compete with the runs")
    if rt is not None:
        figure("pool_p50_rt_ms", round(rt, 2), "ms",
               note="context: same measurement under SCHED_FIFO, i.e. with the other "
                    "tenants' CPU load factored out")


def _pool_p50_isolated(n: int, spec, tmp: Path) -> float | None:
    """pool_p50 with this process (and the sandboxes it starts) on real-time scheduling, so
    a loaded shared machine shows the pool's own cost; None where that is not permitted."""
    import os

    from tether.sandbox.pool import WarmPool

    try:
        old = os.sched_getscheduler(0), os.sched_getparam(0)
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
    except (OSError, AttributeError):
        return None
    times = []
    try:
        with WarmPool(size=2, scratch_root=tmp / "scratch-rt") as pool:
            pool.warm(spec, wait=True, timeout=60)
            for _ in range(n):
                pool.warm(spec, wait=True, timeout=60)
                time.sleep(0.03)
                t = time.perf_counter()
                pool.run(spec)
                times.append((time.perf_counter() - t) * 1000)
    finally:
        os.sched_setscheduler(0, old[0], old[1])
    return statistics.median(times)


def tether_command() -> str | None:
    """The `tether` script of the interpreter running the bench (a venv's bin need not be on
    PATH), else the one on PATH."""
    beside = Path(sys.executable).with_name("tether")
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("tether")


def bench_api(n: int) -> None:
    """api_run_p50_ms: POST /run of `true` to a `tether serve` process, end to end (httpx
    keep-alive client, bearer token), cold runs; the same with `--pool 2` as context."""
    import os
    import re

    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-api-"))
    (tmp / "work").mkdir()
    token = tmp / "token"
    token.write_text("bench-token-0123456789")
    env = {**os.environ, "TETHER_HOME": str(tmp / "home"), "TETHER_SECRETS_BACKEND": "file"}
    tether = tether_command()
    for label, extra in (("api_run_p50_ms", []), ("api_pool_run_p50_ms", ["--pool", "2"])):
        if tether is None:
            figure(label, None, "ms", note="no tether console script next to "
                                           f"{sys.executable} or on PATH")
            continue
        proc = subprocess.Popen([tether, "serve", "--port", "0", "--token-file", str(token),
                                 "--workdir", str(tmp / "work"), *extra], env=env,
                                stderr=subprocess.PIPE, text=True)
        try:
            line = proc.stderr.readline()
            match = re.search(r"http://127\.0\.0\.1:(\d+)", line)
            if match is None:
                figure(label, None, "ms", note=f"server did not start: {line.strip()}")
                continue
            url = f"http://127.0.0.1:{match.group(1)}"
            headers = {"Authorization": "Bearer bench-token-0123456789"}
            with httpx.Client(base_url=url, headers=headers, timeout=30) as c:
                def post():
                    r = c.post("/run", json={"command": ["true"]})
                    assert r.status_code == 200 and r.json()["exit_code"] == 0, r.text
                for _ in range(3):
                    post()  # warm: probe, first pool fill
                    time.sleep(0.2)
                times = []
                for _ in range(n):
                    if extra:
                        time.sleep(0.03)  # as bench_pool: the pool is refilled between runs
                    t = time.perf_counter()
                    post()
                    times.append((time.perf_counter() - t) * 1000)
            figure(label, round(statistics.median(times), 2), "ms",
                   note="context: end to end over HTTP" + (" (warm pool)" if extra else ""))
        finally:
            proc.terminate()
            proc.wait(10)
    shutil.rmtree(tmp, ignore_errors=True)


EXTRA_BENCHES += [bench_pool, bench_api]


if __name__ == "__main__":
    sys.exit(main())
