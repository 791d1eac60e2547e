"""Keys benchmark: `python bench/keys.py [--json] [-n N]`.

Anchor: OpenSSH's own `ssh-keygen`. Figures:
- keygen_ratio    p50 of `generate_key` (ed25519, API) / p50 of `ssh-keygen -t ed25519 -N ''`
                  (what a user would run instead); interleaved so machine noise hits both.
                  The key maths takes ~0.2 ms; the rest is durability: tether fsyncs both
                  files and the directory (atomic writes), ssh-keygen does not, hence the
                  goal of at most 2x.
- cli_generate_ms p50 of the `tether keys generate` process (Python start-up included).
- upsert_ms       `upsert_block` into a 5,000-line user config (parse, insert, atomic write).
- list_ms         `list_keys` over a directory of 50 key pairs (parse + fingerprint each).
Everything runs in a temp dir; nothing outside it is touched.
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
from pathlib import Path

from _common import p50_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-n", type=int, default=20)
    args = parser.parse_args()

    from tether.ssh.config import ManagedBlock, upsert_block
    from tether.ssh.keys import generate_key, list_keys

    tmp = Path(tempfile.mkdtemp(prefix="tether-bench-keys-"))
    try:
        counter = iter(range(10**6))
        api_t, kg_t = [], []
        for _ in range(args.n):
            i = next(counter)
            t = time.perf_counter()
            generate_key(f"api{i}", directory=tmp / "api", comment="bench")
            api_t.append((time.perf_counter() - t) * 1000)
            t = time.perf_counter()
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "bench",
                            "-f", str(tmp / f"kg{i}")], check=True)
            kg_t.append((time.perf_counter() - t) * 1000)
        api, kg = statistics.median(api_t), statistics.median(kg_t)

        tether = shutil.which("tether") or sys.executable
        env = dict(os.environ, HOME=str(tmp / "home"))
        cli = p50_ms(lambda: subprocess.run(
            [tether, "keys", "generate", f"cli{next(counter)}", "--json"], env=env,
            stdout=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=True), max(3, args.n // 4))

        config = tmp / "config"
        lines = []
        for h in range(1000):
            lines += [f"Host host{h}", f"    HostName 10.0.{h // 250}.{h % 250}", "    User me",
                      f"    Port {2000 + h}", ""]
        config.write_text("\n".join(lines) + "Host *\n    ServerAliveInterval 30\n")
        upsert = p50_ms(lambda: upsert_block(ManagedBlock(
            "bench", "bench", (("HostName", f"127.0.0.{next(counter) % 250}"),)), config), args.n)

        for i in range(50):
            generate_key(f"l{i}", directory=tmp / "list", comment="bench")
        listed = p50_ms(lambda: list_keys(tmp / "list"), args.n)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    figures = [
        {"name": "keygen_ratio", "value": round(api / kg, 3), "unit": "x", "goal": "<= 2.0",
         "pass": api / kg <= 2.0, "note": f"api {api:.1f} ms vs ssh-keygen {kg:.1f} ms"},
        {"name": "cli_generate_ms", "value": round(cli, 1), "unit": "ms", "goal": "< 1000",
         "pass": cli < 1000, "note": "whole process, Python start-up included"},
        {"name": "upsert_ms", "value": round(upsert, 2), "unit": "ms", "goal": "< 50",
         "pass": upsert < 50, "note": "5,000-line config"},
        {"name": "list_ms", "value": round(listed, 2), "unit": "ms", "goal": "< 100",
         "pass": listed < 100, "note": "50 key pairs"},
    ]
    if args.json:
        print(json.dumps(figures, indent=2))
    else:
        print(f"{'figure':<16} {'value':>10} {'unit':<4} {'goal':<9} {'pass':<5} note")
        for f in figures:
            print(f"{f['name']:<16} {f['value']:>10} {f['unit']:<4} {f['goal']:<9} "
                  f"{'yes' if f['pass'] else 'NO':<5} {f['note']}")
    return 0 if all(f["pass"] for f in figures) else 1


if __name__ == "__main__":
    sys.exit(main())
