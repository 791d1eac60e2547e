"""The remote agent starts without the full CLI: every `tether sync` session pays its start."""

from __future__ import annotations

import subprocess
import sys

CHECK = """
import atexit, sys
atexit.register(lambda: print("typer" in sys.modules, file=sys.__stderr__))
sys.argv = ["tether", "agent", "sync", sys.argv[1]]
from tether.cli.entry import main
main()
"""


def test_agent_sync_skips_typer_and_ends_cleanly_on_eof(tmp_path):
    r = subprocess.run([sys.executable, "-c", CHECK, str(tmp_path)], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stderr.strip().splitlines()[-1] == "False"  # typer never imported


def test_agent_with_an_option_still_goes_through_the_cli(tmp_path):
    r = subprocess.run([sys.executable, "-m", "tether.cli.entry", "agent", "sync", "--help"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "Serve the sync protocol" in r.stdout
