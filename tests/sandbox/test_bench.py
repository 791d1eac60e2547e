"""bench/sandbox.py starts `tether serve` from the interpreter's own environment."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_the_api_bench_finds_tether_beside_its_interpreter_without_path(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))              # for its `from _common import`
    spec = importlib.util.spec_from_file_location("bench_sandbox", BENCH / "sandbox.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")          # the venv is not on PATH
    assert bench.tether_command() == str(Path(sys.executable).with_name("tether"))
