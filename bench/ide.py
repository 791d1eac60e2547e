"""Browser IDE benchmark: `python bench/ide.py [--json] [-n N]`.

A real `tether.up` gateway on 127.0.0.1 with code-server behind it (the install tether made:
the tools dir, or TETHER_TOOLS_CACHE / ~/.cache/tether-test-tools). Figures:
- start_to_login_s   p50 code-server start -> `/login` answers 200 through the gateway
                     (goal < 3 s; each run is a fresh code-server process)
- rss_idle_mib       resident memory of code-server's whole process group, no browser
                     (goal < 300 MiB)
- rss_session_mib    the same with one headless Chromium session on the workbench
                     (goal < 1024 MiB)
Informational: login -> `.monaco-workbench` in the browser.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

GOALS = {"start_to_login_s": ("<", 3.0), "rss_idle_mib": ("<", 300.0),
         "rss_session_mib": ("<", 1024.0)}
PASSWORD = "bench-password-1234"


def _tools() -> Path:
    from tether import paths
    from tether.ide import install

    for candidate in (paths.tools_dir(), Path(os.environ.get("TETHER_TOOLS_CACHE") or
                                              "~/.cache/tether-test-tools").expanduser()):
        if install.locate(install.DEFAULT_VERSION, candidate):
            return candidate
    sys.exit("code-server is not installed: run `tether ide install` first")


def _rss_mib(server) -> float:
    from tether.ide.server import rss_bytes

    return rss_bytes(server.pids()) / 2**20


def _start_once(session, gateway_url: str) -> float:
    """Seconds from starting code-server until the gateway serves its /login page."""
    import httpx

    started = time.monotonic()
    errors: list[BaseException] = []

    def start() -> None:
        try:
            session.start([gateway_url])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller's thread
            errors.append(exc)

    t = threading.Thread(target=start)
    t.start()
    while not errors:
        try:
            if httpx.get(gateway_url + "/login", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.02)
    elapsed = time.monotonic() - started
    t.join()
    if errors:
        raise errors[0]
    return elapsed


def _browser_session(url: str) -> tuple[float, object]:
    from playwright.sync_api import sync_playwright

    pw = sync_playwright().start()
    browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
        "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"])
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    page.goto(url)
    page.fill("input[type=password]", PASSWORD)
    started = time.monotonic()
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_selector(".monaco-workbench", timeout=90_000)
    return time.monotonic() - started, (pw, browser)


def run(n: int) -> dict:
    import logging

    import tether

    # the gateway logs every request that arrives while code-server is still starting
    logging.getLogger("tether.gateway.proxy").setLevel(logging.ERROR)
    from tether.ide.api import open_ide

    tools = _tools()
    with tempfile.TemporaryDirectory() as tmp:
        # everything (tether, code-server, Chromium's crash reports) stays in the temp dir
        os.environ.update(TETHER_HOME=f"{tmp}/home", TETHER_SECRETS_BACKEND="file",
                          TETHER_IDE_PASSWORD=PASSWORD, HOME=f"{tmp}/user",
                          XDG_CONFIG_HOME=f"{tmp}/user/.config",
                          XDG_CACHE_HOME=f"{tmp}/user/.cache")
        from tether import paths

        mine = paths.ensure_dir(paths.tools_dir(), 0o755)
        for d in tools.iterdir():
            if d.name.startswith(("node-", "code-server-")):
                (mine / d.name).symlink_to(d)
        ws = Path(tmp) / "ws"
        ws.mkdir()
        state = Path(tmp) / "state"
        session = open_ide(ws, state)
        handle = tether.up(ws, proxy_upstream=session.upstream, state_dir=state)
        url = handle.info["local_url"]
        starts = []
        try:
            for i in range(n):
                starts.append(_start_once(session, url))
                if i < n - 1:
                    session.stop()
            time.sleep(5)
            idle = _rss_mib(session.server)
            login_s, (pw, browser) = _browser_session(url + "/")
            time.sleep(5)
            with_session = _rss_mib(session.server)
            browser.close()
            pw.stop()
        finally:
            session.stop()
            handle.stop()
    return {"start_to_login_s": round(statistics.median(starts), 2),
            "start_to_login_runs_s": [round(s, 2) for s in starts],
            "rss_idle_mib": round(idle), "rss_session_mib": round(with_session),
            "login_to_workbench_s": round(login_s, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true")
    parser.add_argument("-n", type=int, default=3, help="code-server starts to time")
    args = parser.parse_args()
    figures = run(args.n)
    rows = []
    for name, value in figures.items():
        goal = GOALS.get(name)
        ok = None
        if goal:
            ok = value < goal[1]
        rows.append({"figure": name, "value": value,
                     "goal": f"{goal[0]} {goal[1]}" if goal else "-",
                     "pass": ok})
    if args.json:
        print(json.dumps({"figures": figures, "rows": rows}, indent=2))
        return
    print(f"{'figure':<24} {'value':>18} {'goal':>10}  pass")
    for r in rows:
        mark = "-" if r["pass"] is None else ("yes" if r["pass"] else "NO")
        print(f"{r['figure']:<24} {r['value']!s:>18} {r['goal']:>10}  {mark}")


if __name__ == "__main__":
    main()
