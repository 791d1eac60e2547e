"""Remote kernel benchmark: `python bench/kernel.py [--json] [-n N]`.

The "remote" is this machine through a private OpenSSH sshd on 127.0.0.1 (real ssh client,
real sshd, real ipykernel), so the figures are tether's overhead, not a network's. Anchor: the
same ipykernel started locally by jupyter_client's own LocalProvisioner. Figures:
- first_reply_ratio  p50 launch -> first execute_reply, remote / local (goal <= 1.5), with the
                     host link up: how every launch but a process's first to a host goes (a
                     Jupyter server's second notebook, every restart). Launches are
                     interleaved with local ones so machine noise hits both.
- interrupt_ms       p50 interrupt (signal mode: SIGINT relayed to the remote kernel's
                     process group) -> the KeyboardInterrupt execute_reply (goal < 200), after
                     one warm-up interrupt: a kernel's very first KeyboardInterrupt also pays
                     ~0.3 s of one-time imports inside ipykernel, local or remote alike
                     (reported as first_interrupt_*).
Informational, reported next to them: cold_first_reply_ratio, the same ratio for a launch that
first has to open the host link (a process's first kernel on a host: one SSH login, the remote
shell's rc files, the agent's start); the local interrupt, message-mode interrupt, and one SSH
session's start-up with OpenSSH vs an asyncssh connect + command.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GOALS = {"first_reply_ratio": ("<=", 1.5), "interrupt_ms": ("<", 200.0)}


def start_sshd(d: Path):
    """tether's own workspace sshd (tether.ssh.sshd) on a free port, trusting a client key."""
    from tether.ssh.sshd import Sshd, ensure_sshd, host_public_key

    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / "client_key")],
                   check=True)
    sshd = Sshd(d / "sshd")
    sshd.start(ensure_sshd(install=False))
    sshd.authorized_keys.write_text((d / "client_key.pub").read_text())
    port = sshd.port
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_public_key(sshd.host_key)}\n")
    import pwd

    user = pwd.getpwuid(os.getuid()).pw_name
    (d / "ssh_config").write_text(
        f"Host bench\n  HostName 127.0.0.1\n  Port {port}\n  User {user}\n"
        f"  IdentityFile {d / 'client_key'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {d / 'known_hosts'}\n  StrictHostKeyChecking yes\n")
    return sshd, {"port": port, "user": user}


def first_reply_s(kernel_name: str) -> tuple[float, object, object]:
    from jupyter_client.manager import KernelManager

    t = time.perf_counter()
    km = KernelManager(kernel_name=kernel_name)
    km.start_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    kc = km.client()
    kc.start_channels()
    msg_id = kc.execute("1")
    while kc.get_shell_msg(timeout=60)["parent_header"].get("msg_id") != msg_id:
        pass
    return time.perf_counter() - t, km, kc


def interrupt_ms(km, kc) -> float:
    # stop_on_error=False: else ipykernel aborts the requests queued behind the interrupted one
    msg_id = kc.execute("while True:\n    pass", stop_on_error=False)
    time.sleep(0.5)  # the kernel is idle: the loop is running by then (shell is reliable,
    # iopub may still be subscribing right after launch)
    t = time.perf_counter()
    km.interrupt_kernel()
    while True:
        reply = kc.get_shell_msg(timeout=30)
        if reply["parent_header"].get("msg_id") == msg_id:
            break
    elapsed = (time.perf_counter() - t) * 1000
    assert reply["content"].get("ename") == "KeyboardInterrupt", reply["content"]
    return elapsed


def stop(km, kc) -> None:
    kc.stop_channels()
    km.shutdown_kernel(now=False)


def session_startup_ms(d: Path, info: dict, n: int) -> tuple[float, float]:
    from tether.link._asyncssh import asyncssh

    ssh_t = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(["ssh", "-F", str(d / "ssh_config"), "bench", "true"], check=True)
        ssh_t.append((time.perf_counter() - t) * 1000)

    async def one() -> float:
        t = time.perf_counter()
        async with asyncssh.connect("127.0.0.1", port=info["port"], username=info["user"],
                                    client_keys=[str(d / "client_key")],
                                    known_hosts=str(d / "known_hosts")) as conn:
            await conn.run("true", check=True)
        return (time.perf_counter() - t) * 1000

    a_t = [asyncio.run(one()) for _ in range(n)]
    return statistics.median(ssh_t), statistics.median(a_t)


def measure(n: int, d: Path) -> dict:
    from tether.kernels.specs import InterruptMode, RemoteKernelSpec, add_kernel

    sshd, info = start_sshd(d)
    try:
        os.environ["TETHER_SSH_CONFIG"] = str(d / "ssh_config")
        for name, mode in (("bench", InterruptMode.SIGNAL), ("bench-msg", InterruptMode.MESSAGE)):
            add_kernel(RemoteKernelSpec(name=name, host="bench", python=sys.executable,
                                        lifetime="session", remote_state_dir=str(d / "rs")),
                       interrupt_mode=mode)  # with health checks, as a user would
        from tether.kernels import hostlink

        local_t, remote_t, cold_t, cold_local, cold_remote = [], [], [], [], []
        for _ in range(n):
            for name, times, cold in (("python3", local_t, cold_local),
                                      ("cold", cold_t, cold_remote),
                                      ("tether-bench", remote_t, cold_remote)):
                if name == "cold":
                    hostlink.close_all()  # no link: this launch opens it
                    name = "tether-bench"
                s, km, kc = first_reply_s(name)
                times.append(s)
                cold.append(interrupt_ms(km, kc))  # a kernel's first: imports its tracebacks
                stop(km, kc)
        warm = {}
        for name in ("python3", "tether-bench", "tether-bench-msg"):
            _, km, kc = first_reply_s(name)
            interrupt_ms(km, kc)  # warm-up, then the steady state
            warm[name] = [interrupt_ms(km, kc) for _ in range(max(5, n))]
            stop(km, kc)
        ssh_ms, asyncssh_ms = session_startup_ms(d, info, max(3, n))
    finally:
        sshd.stop()
    med = statistics.median
    return {
        "first_reply_ratio": round(med(remote_t) / med(local_t), 3),
        "interrupt_ms": round(med(warm["tether-bench"]), 1),
        "info": {
            "remote_first_reply_s": round(med(remote_t), 3),
            "local_first_reply_s": round(med(local_t), 3),
            "cold_first_reply_ratio": round(med(cold_t) / med(local_t), 3),
            "cold_remote_first_reply_s": round(med(cold_t), 3),
            "local_interrupt_ms": round(med(warm["python3"]), 1),
            "message_mode_interrupt_ms": round(med(warm["tether-bench-msg"]), 1),
            "first_interrupt_remote_ms": round(med(cold_remote), 1),
            "first_interrupt_local_ms": round(med(cold_local), 1),
            "openssh_session_ms": round(ssh_ms, 1),
            "asyncssh_session_ms": round(asyncssh_ms, 1),
            "runs": n,
        },
    }


def passes(name: str, value: float) -> bool:
    op, goal = GOALS[name]
    return value <= goal if op == "<=" else value < goal


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-n", type=int, default=3, help="launches per side (median)")
    args = parser.parse_args()
    d = Path(tempfile.mkdtemp(prefix="tether-bench-kernel-"))
    os.environ["JUPYTER_DATA_DIR"] = str(d / "jupyter")
    os.environ["JUPYTER_RUNTIME_DIR"] = str(d / "runtime")
    os.environ["TETHER_HOME"] = str(d / "tether")
    try:
        result = measure(args.n, d)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    ok = all(passes(k, result[k]) for k in GOALS)
    if args.json:
        out = {k: {"value": result[k], "goal": f"{GOALS[k][0]} {GOALS[k][1]}",
                   "pass": passes(k, result[k])} for k in GOALS}
        print(json.dumps({"figures": out, "info": result["info"], "pass": ok}, indent=2))
    else:
        print(f"{'figure':<22}{'value':>10}  {'goal':<10}{'result'}")
        for k in GOALS:
            print(f"{k:<22}{result[k]:>10}  {GOALS[k][0] + ' ' + str(GOALS[k][1]):<10}"
                  f"{'pass' if passes(k, result[k]) else 'FAIL'}")
        for k, v in result["info"].items():
            print(f"  {k:<28}{v}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
