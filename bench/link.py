"""Benchmark the link: copy throughput, warm exec, CLI exec, interactive echo.

Starts its own workspace with the real product path (`tether up --detach --connect bench`:
sshd + gateway, paired over loopback) in temp dirs, then measures:

- copy_ratio: 256 MB through the gateway (`tether.copy`) / direct OpenSSH `scp` to the same
  sshd (aes128-gcm). Both directions are measured; the figure is the slower direction's ratio.
- exec_ratio: p50 of `true` through the Python API on a warm link / p50 of
  `ssh tether-bench true` with an OpenSSH ControlMaster already open.
- cli_exec_ms: p50 wall time of `tether exec bench -- true` (the real binary, Python start-up
  included, link daemon warm), with tether's bytecode cached as an installed package has it.
  When PYTHONDONTWRITEBYTECODE is set (as in some sandboxes), cli_exec_nopyc_ms is the same
  with tether's modules compiled at every start. cli_overhead_ms: cli_exec_ms's p50 excess
  over the API call of the same round, i.e. what the CLI adds to the remote command.
  python_startup_ms: `python -c pass` in the same rounds (the floor: interpreter, site, .pth
  files); cli_minus_python_ms: what `tether exec` costs on top of it.
- cli_status_ms, cli_cp_ms (informational, no goal): p50 wall time of `tether status bench`
  and of `tether cp` of a 6-byte file to the host, in the same rounds, through the warm link
  daemon. Unlike exec they go through the full Typer CLI (no fast path).
- echo_p50_ms: one byte echoed through the bridge by a PTY session (`cat` in raw mode).

Debian's bash sources ~/.bashrc for every command sshd runs. The OpenSSH figures pay that
every time; tether's exec agent (docs/exec-agent.md) pays it once per connection.
remote_true_ms is `true` on the warm link (through the agent), plain_channel_true_ms the same
on a plain SSH session channel (login shell rc included). The exec series are interleaved
run by run in shuffled order, so load drift and neighbours' clean-up hit them alike.
TETHER_EXEC_AGENT=0 measures the plain-channel path instead (the figures before the agent).

Usage: python bench/link.py [--json] [--size-mb N] [--runs N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {  # name: (comparison, goal)
    "copy_ratio": (">=", 0.6),
    "exec_ratio": ("<=", 1.0),
    "cli_exec_ms": ("<", 150.0),
    "echo_p50_ms": ("<", 2.0),
}


def _p50(samples: list[float]) -> float:
    return statistics.median(samples)


def _timed(fn, runs: int) -> list[float]:
    out = []
    for _ in range(runs):
        began = time.perf_counter()
        fn()
        out.append((time.perf_counter() - began) * 1000)
    return out


class Bench:
    def __init__(self, root: Path, size_mb: int, runs: int) -> None:
        self.root = root
        self.size = size_mb * 1024 * 1024
        self.runs = runs
        self.home = root / "home"
        self.home.mkdir()
        self.env = {**os.environ, "HOME": str(self.home), "TETHER_HOME": str(root / "th"),
                    "TETHER_SECRETS_BACKEND": "file", "NO_COLOR": "1",
                    "TETHER_LINK_DAEMON_IDLE": "120"}
        os.environ.update(self.env)
        bindir = Path(sys.executable).parent
        self.tether = str(bindir / "tether") if (bindir / "tether").exists() \
            else shutil.which("tether")
        self.figures: dict[str, float] = {}

    def up(self) -> None:
        ws = self.root / "ws"
        ws.mkdir()
        r = subprocess.run([self.tether, "up", str(ws), "--detach", "--connect", "bench",
                            "--json"], env=self.env, capture_output=True, text=True,
                           timeout=120, check=False)
        if r.returncode != 0:
            raise SystemExit(f"tether up failed: {r.stderr}")
        self.info = json.loads(r.stdout)
        from tether.link.profiles import load_profile

        self.profile = load_profile("bench")
        self.ssh_config = self.home / ".ssh" / "config"

    def down(self) -> None:
        subprocess.run([self.tether, "down"], env=self.env, capture_output=True, timeout=60,
                       check=False)

    def _direct_ssh_opts(self) -> list[str]:
        p = self.profile
        return ["-F", "/dev/null", "-i", str(p.identity_file), "-o", "IdentitiesOnly=yes",
                "-o", "BatchMode=yes", "-o", f"HostKeyAlias={p.host_key_alias}",
                "-o", f"UserKnownHostsFile={p.known_hosts_file}",
                "-o", "GlobalKnownHostsFile=/dev/null", "-o", "StrictHostKeyChecking=yes",
                "-c", "aes128-gcm@openssh.com"]

    # -- copy -------------------------------------------------------------------------------

    def copy(self) -> None:
        import tether

        src = self.root / "blob.bin"
        with src.open("wb") as fh:
            left = self.size
            while left:
                n = min(left, 8 << 20)
                fh.write(os.urandom(n))
                left -= n
        remote_dir = self.root / "remote"
        remote_dir.mkdir()
        mb = self.size / 1e6
        user, port = self.profile.user, self.info["sshd_port"]

        def scp(*args: str) -> None:
            subprocess.run(["scp", "-q", "-P", str(port), *self._direct_ssh_opts(), *args],
                           check=True, timeout=600)

        t = _timed(lambda: tether.copy(str(src), f"bench:{remote_dir}/gw.bin"), 1)[0]
        t2 = _timed(lambda: tether.copy(f"bench:{remote_dir}/gw.bin", str(self.root / "b1")),
                    1)[0]
        d = _timed(lambda: scp(str(src), f"{user}@127.0.0.1:{remote_dir}/direct.bin"), 1)[0]
        d2 = _timed(lambda: scp(f"{user}@127.0.0.1:{remote_dir}/direct.bin",
                                str(self.root / "b2")), 1)[0]
        s = _timed(lambda: subprocess.run(
            ["scp", "-q", "-F", str(self.ssh_config), str(src), f"tether-bench:{remote_dir}/p"],
            check=True, timeout=600), 1)[0]
        f = self.figures
        f["copy_up_MBps"] = mb / (t / 1000)
        f["copy_down_MBps"] = mb / (t2 / 1000)
        f["direct_up_MBps"] = mb / (d / 1000)
        f["direct_down_MBps"] = mb / (d / 1000) if d2 <= 0 else mb / (d2 / 1000)
        f["scp_via_proxy_up_MBps"] = mb / (s / 1000)
        f["copy_ratio"] = min(f["copy_up_MBps"] / f["direct_up_MBps"],
                              f["copy_down_MBps"] / f["direct_down_MBps"])
        for p in [src, self.root / "b1", self.root / "b2", *remote_dir.iterdir()]:
            p.unlink()

    # -- exec -------------------------------------------------------------------------------

    def exec_figures(self) -> None:
        """API, ControlMaster ssh and CLI, interleaved run by run so load drift hits all
        three alike."""
        import tether
        from tether.link.daemon_client import request

        control = str(self.root / "cm-%C")
        base = ["ssh", "-F", str(self.ssh_config), "-o", f"ControlPath={control}"]
        cli = [self.tether, "exec", "bench", "--", "true"]
        # bytecode cached as in an installed package, in a private prefix (not the tree)
        cached = {k: v for k, v in self.env.items() if k != "PYTHONDONTWRITEBYTECODE"}
        cached["PYTHONPYCACHEPREFIX"] = str(self.root / "pycache")
        nopyc = self.env if self.env.get("PYTHONDONTWRITEBYTECODE") else None
        subprocess.run([*base, "-o", "ControlMaster=yes", "-o", "ControlPersist=120", "-f",
                        "-N", "tether-bench"], check=True, timeout=60)
        api, ssh, cli_ms, nopyc_ms, python_ms = [], [], [], [], []
        status_ms, cp_ms = [], []
        small = self.root / "small.txt"
        small.write_text("hello\n")
        (self.root / "cp-dst").mkdir()

        def run_cli(env: dict, argv: list[str] = cli) -> None:
            subprocess.run(argv, check=True, env=env, stdin=subprocess.DEVNULL, timeout=60,
                           stdout=subprocess.DEVNULL if argv is not cli else None)

        try:
            tether.exec("bench", "true")  # warm: the API's connection
            subprocess.run([*base, "tether-bench", "true"], check=True, timeout=60)
            run_cli(cached)  # the daemon, and the bytecode cache
            series = [(api, lambda: tether.exec("bench", "true")),
                      (ssh, lambda: subprocess.run([*base, "tether-bench", "true"],
                                                   check=True, timeout=60)),
                      (cli_ms, lambda: run_cli(cached)),
                      (python_ms, lambda: subprocess.run([sys.executable, "-c", "pass"],
                                                         check=True, env=cached)),
                      (status_ms, lambda: run_cli(cached, [self.tether, "status", "bench"])),
                      (cp_ms, lambda: run_cli(cached, [self.tether, "cp", str(small),
                                                       f"bench:{self.root}/cp-dst/"]))]
            if nopyc is not None:
                series.append((nopyc_ms, lambda: run_cli(nopyc)))
            order = random.Random(1)  # shuffled rounds: whatever runs after ssh pays sshd's
            for _ in range(self.runs):  # session clean-up, so no series may always follow it
                for samples, fn in order.sample(series, len(series)):
                    samples += _timed(fn, 1)
        finally:
            subprocess.run([*base, "-O", "exit", "tether-bench"], capture_output=True, check=False)
            request("shutdown")
        f = self.figures
        f["api_exec_p50_ms"] = _p50(api)
        f["ssh_controlmaster_p50_ms"] = _p50(ssh)
        f["exec_ratio"] = _p50(api) / _p50(ssh)
        f["cli_exec_ms"] = _p50(cli_ms)
        if nopyc_ms:
            f["cli_exec_nopyc_ms"] = _p50(nopyc_ms)
        # the floor no CLI can beat here: the interpreter with this environment's site/.pth
        f["python_startup_ms"] = _p50(python_ms)
        f["cli_minus_python_ms"] = _p50([c - p for c, p in zip(cli_ms, python_ms)])
        # what tether adds on top of the remote command itself (Python start-up, daemon hop)
        f["cli_overhead_ms"] = _p50([c - a for c, a in zip(cli_ms, api)])
        f["cli_status_ms"] = _p50(status_ms)  # informational
        f["cli_cp_ms"] = _p50(cp_ms)  # informational

    def echo_and_remote_cost(self) -> None:
        from tether.link.pool import run_sync

        self.figures.update(run_sync(_echo(self.runs * 10)))


async def _echo(samples: int) -> dict[str, float]:
    from tether.link import exec as lexec
    from tether.link.pool import pool_for_loop

    conn = await pool_for_loop().get("bench")
    got: asyncio.Queue[bytes] = asyncio.Queue()
    proc = await lexec.start(conn, "stty raw -echo; echo ready; exec cat",
                             on_output=lambda _s, d: got.put_nowait(d), pty=lexec.PtySpec())
    buf = b""
    while b"ready" not in buf:
        buf += await got.get()
    await asyncio.sleep(0.2)
    while not got.empty():
        got.get_nowait()
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        await proc.write(b"x")
        await got.get()
        times.append((time.perf_counter() - began) * 1000)
    proc.close()
    remote, plain = [], []
    for _ in range(10):
        began = time.perf_counter()
        await lexec.run_captured(conn, "true")  # the exec agent
        remote.append((time.perf_counter() - began) * 1000)
        began = time.perf_counter()
        await conn.run("true", check=True)  # a plain session channel: the login shell's rc
        plain.append((time.perf_counter() - began) * 1000)
    return {"echo_p50_ms": _p50(times), "remote_true_ms": _p50(remote),
            "plain_channel_true_ms": _p50(plain)}


def _verdict(name: str, value: float) -> str:
    if name not in GOALS:
        return ""
    op, goal = GOALS[name]
    ok = {">=": value >= goal, "<=": value <= goal, "<": value < goal}[op]
    return "pass" if ok else "FAIL"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--size-mb", type=int, default=256)
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="tether-bench-link-"))
    bench = Bench(root, args.size_mb, args.runs)
    try:
        bench.up()
        bench.exec_figures()
        bench.echo_and_remote_cost()
        bench.copy()
    finally:
        bench.down()
        shutil.rmtree(root, ignore_errors=True)
    figures = {k: round(v, 3) for k, v in bench.figures.items()}
    if args.json:
        print(json.dumps({"figures": figures,
                          "goals": {k: f"{op} {g}" for k, (op, g) in GOALS.items()},
                          "pass": {k: _verdict(k, figures[k]) == "pass" for k in GOALS}},
                         indent=2))
        return
    print(f"{'figure':28} {'value':>10}  {'goal':>8}  result")
    for name, value in figures.items():
        goal = f"{GOALS[name][0]} {GOALS[name][1]}" if name in GOALS else ""
        print(f"{name:28} {value:>10.3f}  {goal:>8}  {_verdict(name, value)}")


if __name__ == "__main__":
    main()
