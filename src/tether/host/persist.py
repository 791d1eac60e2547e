"""`tether up --restore/--autosave`: the workspace's components in a snapshot store.

Components (docs/snapshots.md, "Workspace components"): ``workspace`` (the workspace folder),
``venv:<name>`` (each listed virtualenv, at its own absolute path), ``ide`` (with ``--ide``)
and ``identity`` (the host key, the workspace id, paired clients' token digests and
authorized_keys). The host state dir mixes identity with runtime files (run.json, pids,
locks, logs, one-time codes), so identity is copied into its own folder before each save and
restored through a staging folder, then installed file by file: only identity travels.

Restoring an identity over a *different* one already here is refused unless forced: it would
lock out every client paired with the current one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tether import paths
from tether.errors import (
    AlreadyExistsError,
    IntegrityError,
    LockedError,
    TetherError,
    UsageError,
)

IDENTITY_DIR = "identity-stage"        # the copy that is saved
INCOMING_DIR = "identity-incoming"     # where a restored identity waits to be checked
STATUS_FILE = "autosave.json"
STATUS_VERSION = 1
DEFAULT_STORE = "default"
# Order matters on install: the host key last, so an interrupted install leaves the old key
# or a key pair that ensure_host_key() regenerates (it needs both halves).
IDENTITY_FILES = ("workspace.json", "clients.json", "authorized_keys",
                  "ssh_host_ed25519_key", "ssh_host_ed25519_key.pub")

Announce = Callable[[str], None]


def resolve_store(url: str | None) -> str | None:
    """``default`` -> ``file://<state>/snapshots``; other URLs are checked for a known scheme."""
    if url is None:
        return None
    if url == DEFAULT_STORE:
        return f"file://{paths.state_dir() / 'snapshots'}"
    from tether.snapshot.stores.base import SCHEMES, scheme_of

    scheme = scheme_of(url)
    if scheme not in SCHEMES:
        raise UsageError(f"unknown store scheme {scheme!r} in {url!r}",
                         f"supported: {', '.join(s + '://' for s in SCHEMES)}, or `default`")
    return url


def protect_local_store(url: str, announce: Announce) -> None:
    """A ``file://`` autosave store holds the host's private key: make a new one 0700, and
    say so when an existing one is open to other users (its files are 0644 inside)."""
    if not url.startswith("file:"):
        return
    from tether.snapshot.stores.local import open as open_local

    root = open_local(url).root
    if not root.exists():
        paths.ensure_dir(root, 0o700)
    elif not root.is_dir():
        raise UsageError(f"the autosave store {root} is not a folder",
                         "give a folder (it is created if missing)")
    elif root.stat().st_mode & 0o077:
        announce(f"warning: the store folder {root} is readable by other users, and it will "
                 f"hold this host's private key: run `chmod 700 {root}`")


def components(directory: Path, venvs: tuple[str, ...], ide: bool, host_dir: Path) -> list:
    """The components `up` restores and saves, identity excluded (it is handled apart)."""
    from tether.snapshot.components import Component

    out = [Component("workspace", directory)]
    for v in venvs:
        path = Path(v).expanduser().absolute()
        out.append(Component(f"venv:{path.name}", path))
    names = [c.name for c in out]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"two --venv folders share the name {dupes[0].split(':', 1)[1]!r}",
                         "each virtualenv is saved under its folder name; rename one")
    if ide:
        from tether.ide import component as ide_component

        out.append(ide_component(host_dir))
    return out


# -- identity ----------------------------------------------------------------------------


def _identity_key(directory: Path) -> tuple[str | None, str | None]:
    """(host public key "type base64", workspace id) found in ``directory``."""
    try:
        key = " ".join((directory / IDENTITY_FILES[4]).read_text().split()[:2]) or None
    except FileNotFoundError:
        key = None
    try:
        wid = json.loads((directory / "workspace.json").read_text()).get("workspace_id")
    except FileNotFoundError:
        wid = None
    except (OSError, ValueError) as exc:
        raise IntegrityError(f"unreadable workspace.json in {directory}: {exc}") from exc
    return key, wid


def stage_identity(host_dir: Path) -> Path:
    """Copy the identity files into their own folder (rewriting only what changed)."""
    from tether.gateway.state import HostState

    stage = paths.ensure_dir(host_dir / IDENTITY_DIR)
    with HostState(host_dir).locked():  # pairing writes authorized_keys + clients.json
        for name in IDENTITY_FILES:
            dst = stage / name
            try:
                data = (host_dir / name).read_bytes()
            except FileNotFoundError:
                dst.unlink(missing_ok=True)
                continue
            with contextlib.suppress(FileNotFoundError):
                if dst.read_bytes() == data:
                    continue  # unchanged: the push's stat cache skips it
            paths.atomic_write(dst, data, mode=0o600)
    return stage


@dataclass
class IdentityPlan:
    incoming: Path | None      # None: no identity in the store
    action: str                # "skipped" | "kept" | "installed" | "replaced"


def prepare_identity(store, host_dir: Path, force: bool) -> IdentityPlan:
    """Pull the saved identity into a staging folder and decide; writes nothing live."""
    from tether.snapshot.components import Component, restore_components

    incoming = host_dir / INCOMING_DIR
    shutil.rmtree(incoming, ignore_errors=True)
    report = restore_components(store, [Component("identity", incoming)])
    if "identity" in report.skipped:
        return IdentityPlan(None, "skipped")
    saved = _identity_key(incoming)
    if saved[0] is None or saved[1] is None or not (incoming / IDENTITY_FILES[3]).is_file():
        raise IntegrityError("the saved identity has no host key or no workspace id",
                             "the store is damaged; restore without it or save again")
    here = _identity_key(host_dir)
    if here == (None, None):
        return IdentityPlan(incoming, "installed")
    if here == saved:
        return IdentityPlan(incoming, "kept")  # the same workspace: local state is newest
    if not force:
        shutil.rmtree(incoming, ignore_errors=True)
        raise AlreadyExistsError(
            f"this machine already has a different workspace identity ({here[1]}); the store "
            f"holds {saved[1]}",
            "add --force-identity to replace it (clients paired with the current one lose "
            f"access), or use another TETHER_HOME; host state: {host_dir}")
    return IdentityPlan(incoming, "replaced")


def install_identity(plan: IdentityPlan, host_dir: Path) -> None:
    """Put the staged identity in place (each file atomically), then drop the staging."""
    from tether.gateway.state import HostState

    if plan.incoming is None:
        return
    try:
        if plan.action in ("installed", "replaced"):
            with HostState(host_dir).locked():
                for name in IDENTITY_FILES:
                    src = plan.incoming / name
                    if src.is_file():
                        mode = 0o644 if name.endswith(".pub") else 0o600
                        paths.atomic_write(host_dir / name, src.read_bytes(), mode=mode)
                    else:  # not part of the saved identity: the old one's must not linger
                        (host_dir / name).unlink(missing_ok=True)
                # one-time codes of the previous identity mean nothing now
                (host_dir / "pairing.json").unlink(missing_ok=True)
    finally:
        shutil.rmtree(plan.incoming, ignore_errors=True)


# -- restore before up -------------------------------------------------------------------


@contextlib.contextmanager
def holding_up_lock(host_dir: Path) -> Iterator[None]:
    """The workspace's own lock, so nothing is restored under a running workspace."""
    paths.ensure_dir(host_dir)
    fd = os.open(host_dir / "up.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as exc:
            raise LockedError("a workspace is already running here; nothing was restored",
                              "stop it with `tether down` first") from exc
        yield
    finally:
        os.close(fd)


@dataclass
class RestoreSummary:
    store: str
    restored: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    identity: str = "skipped"

    def to_dict(self) -> dict:
        return {"store": self.store, "restored": self.restored, "skipped": self.skipped,
                "warnings": self.warnings, "identity": self.identity}


def restore_before_up(store_url: str, comps: list, host_dir: Path, *, force_identity: bool,
                      rebuild_venv: bool, announce: Announce,
                      progress: Callable[[int], None] | None = None) -> RestoreSummary:
    """Restore every component from ``store_url``; any error leaves the identity untouched.

    Each component is swapped in atomically by the snapshot layer; the identity is checked
    first (a conflict stops before anything is written) and installed last.
    """
    from tether.snapshot.api import open_retrying
    from tether.snapshot.components import restore_components

    summary = RestoreSummary(store_url)
    for c in comps:
        c.path.parent.mkdir(parents=True, exist_ok=True)
    with holding_up_lock(host_dir):
        try:
            store = open_retrying(store_url)
            try:
                plan = prepare_identity(store, host_dir, force_identity)
                try:
                    report = restore_components(store, comps, rebuild_venv=rebuild_venv,
                                                progress=progress)
                except BaseException:
                    shutil.rmtree(host_dir / INCOMING_DIR, ignore_errors=True)
                    raise
                install_identity(plan, host_dir)
            finally:
                store.close()
        except AlreadyExistsError:
            raise  # the identity conflict says what to do already
        except TetherError as exc:  # same class (same exit code), with what failed and where
            exc.message = f"restoring from {store_url} failed: {exc.message}"
            exc.args = (exc.message,)
            exc.hint = (exc.hint or "") + (" " if exc.hint else "") + (
                "nothing was started; check the store with `tether snapshot verify "
                f"{store_url}`, or start without --restore")
            raise
    summary.restored = sorted(report.restored)
    summary.skipped = list(report.skipped)
    summary.warnings = list(report.warnings)
    summary.identity = plan.action
    if plan.action == "skipped":
        summary.skipped.append("identity")
    else:
        summary.restored.append("identity")
    if summary.restored:
        announce(f"restored from {store_url}: {', '.join(summary.restored)}"
                 + (" (identity here was the same workspace: kept)"
                    if plan.action == "kept" else ""))
    if summary.skipped:
        announce(f"not in the store yet (first run?), skipped: {', '.join(summary.skipped)}")
    for w in summary.warnings:
        announce(f"warning: {w}")
    return summary


# -- autosave ----------------------------------------------------------------------------


def read_status(host_dir: Path) -> dict | None:
    """The autosave record (store, interval, last save's time and result), or None."""
    try:
        data = json.loads((host_dir / STATUS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or data.get("v") != STATUS_VERSION:
        return None
    return {k: v for k, v in data.items() if k != "v"}


def clear_status(host_dir: Path) -> None:
    (host_dir / STATUS_FILE).unlink(missing_ok=True)


def _problem_text(exc: TetherError) -> str:
    problems = getattr(exc, "problems", None)
    return exc.message + (f" ({'; '.join(map(str, problems))})" if problems else "")


def _make_autosaver(store_url: str, comps: list, host_dir: Path, every_s: float,
                    announce: Announce):
    from tether.snapshot.components import Autosaver, Component, save_components

    class HostAutosaver(Autosaver):
        """Stages the identity before each save and records each result for status."""

        def save_now(self):
            with self._lock:  # never two saves at once from one workspace
                started = time.time()
                try:
                    stage_identity(host_dir)
                    out = save_components(self.store, self.components)
                    error = None
                except TetherError as exc:
                    out, error = {}, _problem_text(exc)
                except OSError as exc:
                    out, error = {}, f"{exc.strerror or exc}: {exc.filename or ''}".strip()
                if error is None:
                    self.saves += 1
                else:
                    announce(f"warning: autosave to {store_url} failed: {error}")
                self.record(started, error, sorted(out))
                return out

        def record(self, at: float | None, error: str | None, saved: list[str]) -> None:
            data = {"v": STATUS_VERSION, "store": store_url, "every_s": every_s,
                    "components": [c.name for c in self.components], "saves": self.saves,
                    "last_save_at": int(at) if at else None,
                    "last_ok": None if at is None else error is None,
                    "last_error": error, "last_saved": saved}
            with contextlib.suppress(TetherError):  # status is a courtesy, never fatal
                paths.atomic_write(host_dir / STATUS_FILE, json.dumps(data, indent=1) + "\n")

    identity = Component("identity", host_dir / IDENTITY_DIR)
    return HostAutosaver(store_url, [*comps, identity], every_s)


class HostAutosave:
    """The workspace's autosaver: periodic saves, then one bounded final save on stop."""

    def __init__(self, store_url: str, comps: list, host_dir: Path, every_s: float,
                 announce: Announce) -> None:
        self.store_url = store_url
        self.announce = announce
        self._saver = _make_autosaver(store_url, comps, host_dir, every_s, announce)
        self._saver.record(None, None, [])
        self._saver.start()

    def finish(self, timeout_s: float) -> bool:
        """Stop the timer and save once more, waiting at most ``timeout_s``; True if saved."""
        done = threading.Event()
        result: dict = {}

        def final() -> None:
            try:
                before = self._saver.saves
                self._saver.stop(final_save=True)
                result["ok"] = self._saver.saves > before
            finally:
                done.set()

        self.announce(f"saving to {self.store_url} ...")
        threading.Thread(target=final, name="tether-final-save", daemon=True).start()
        if not done.wait(timeout_s):
            self.announce(f"warning: the final save to {self.store_url} did not finish within "
                          f"{timeout_s:.0f}s; the previous save is the newest")
            return False
        if result.get("ok"):
            self.announce(f"saved to {self.store_url}")
        return bool(result.get("ok"))


def check_every(every: str | float) -> float:
    from tether.snapshot.components import parse_interval

    seconds = parse_interval(every) if isinstance(every, str) else float(every)
    if seconds < 10:
        raise UsageError(f"autosave interval {every!r} is shorter than 10 seconds",
                         "use e.g. --every 10m")
    return seconds
