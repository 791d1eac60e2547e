"""Named workspace components for `tether up --restore/--autosave`.

A component is a folder with a stable name ("workspace", "venv:ml", "ide", "identity").
Each save pushes it with the tag ``component:<name>``; a restore pulls the newest snapshot
carrying that tag back to the component's path (replacing what is there: `up` runs on a
fresh machine). Components without a snapshot are reported as skipped, not as errors, so the
first `up` with ``--restore`` on an empty store works.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tether.errors import NotFoundError, PartialFailureError, TetherError, UsageError
from tether.snapshot import api
from tether.snapshot.backup import PushResult
from tether.snapshot.repo import Repository
from tether.snapshot.restore import PullResult
from tether.snapshot.stores.base import Store


@dataclass(frozen=True)
class Component:
    name: str
    path: Path

    @property
    def tag(self) -> str:
        return f"component:{self.name}"


def _check(components: Sequence[Component]) -> None:
    names = [c.name for c in components]
    if len(set(names)) != len(names):
        raise UsageError("component names must be unique")
    for c in components:
        if not c.name or any(ch.isspace() for ch in c.name):
            raise UsageError(f"invalid component name {c.name!r}")


@dataclass
class RestoreReport:
    restored: dict[str, PullResult] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)     # no snapshot of that component yet
    warnings: list[str] = field(default_factory=list)


def restore_components(store: Store | str, components: Sequence[Component], *,
                       rebuild_venv: bool = False,
                       progress: Callable[[int], None] | None = None) -> RestoreReport:
    """Pull the newest snapshot of each component to its path (atomic swap per component)."""
    _check(components)
    s = api.open_retrying(store) if isinstance(store, str) else store
    report = RestoreReport()
    try:
        try:
            snaps = Repository.open(s).snapshots()
        except NotFoundError:
            report.skipped = [c.name for c in components]
            return report
        tagged = {t for _, sn in snaps for t in sn.tags}
        for c in components:
            if c.tag not in tagged:
                report.skipped.append(c.name)
                continue
            r = api.pull(s, c.path, ref=c.tag, replace=True, rebuild_venv=rebuild_venv,
                         progress=progress)
            report.restored[c.name] = r
            report.warnings += [f"{c.name}: {w}" for w in r.warnings]
    finally:
        if isinstance(store, str):
            s.close()
    return report


def save_components(store: Store | str, components: Sequence[Component], *,
                    progress: Callable[[int], None] | None = None) -> dict[str, PushResult]:
    """Push every component that exists; failures are collected, the others still saved."""
    _check(components)
    results: dict[str, PushResult] = {}
    problems: list[str] = []
    for c in components:
        if not c.path.is_dir():
            continue
        try:
            results[c.name] = api.push(store, c.path, tags=(c.tag,), progress=progress)
        except TetherError as exc:
            problems.append(f"{c.name}: {exc.message}")
    if problems:
        raise PartialFailureError(f"{len(problems)} of {len(components)} components were not "
                                  "saved", "see the problems; the others were saved",
                                  problems=problems)
    return results


class Autosaver:
    """Saves components every ``every_s`` seconds in a thread, and once more on ``stop()``."""

    def __init__(self, store: Store | str, components: Sequence[Component], every_s: float,
                 on_error: Callable[[TetherError], None] | None = None) -> None:
        if every_s < 10:
            raise UsageError("autosave interval must be at least 10 seconds")
        _check(components)
        self.store = store
        self.components = list(components)
        self.every_s = every_s
        self.on_error = on_error or (lambda exc: None)
        self.saves = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="tether-autosave", daemon=True)

    def start(self) -> Autosaver:
        self._thread.start()
        return self

    def save_now(self) -> dict[str, PushResult]:
        with self._lock:  # never two saves at once from one workspace
            try:
                out = save_components(self.store, self.components)
            except TetherError as exc:
                self.on_error(exc)
                return {}
            self.saves += 1
            return out

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.save_now()

    def stop(self, final_save: bool = True) -> None:
        """Stop the timer; with ``final_save`` (a clean shutdown) save once more."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()
        if final_save:
            self.save_now()


def autosave(store: Store | str, components: Sequence[Component], *, every_s: float = 600,
             on_error: Callable[[TetherError], None] | None = None) -> Autosaver:
    """Start saving ``components`` periodically; call ``.stop()`` on clean shutdown."""
    return Autosaver(store, components, every_s, on_error).start()


def parse_interval(text: str) -> float:
    """"10m", "90s", "1h", "600" -> seconds (for `--every`)."""
    units = {"s": 1, "m": 60, "h": 3600}
    t = text.strip().lower()
    try:
        if t and t[-1] in units:
            return float(t[:-1]) * units[t[-1]]
        return float(t)
    except ValueError:
        raise UsageError(f"invalid interval {text!r}", "use e.g. 90s, 10m or 1h") from None
