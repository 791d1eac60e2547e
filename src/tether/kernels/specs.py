"""Kernelspecs for remote kernels: add, edit, delete, list, each with health checks.

A tether kernel ``NAME`` is the Jupyter kernelspec ``tether-NAME`` in the user's Jupyter data
dir (``JUPYTER_DATA_DIR`` respected), whose ``metadata.kernel_provisioner`` selects
``tether-ssh-provisioner`` with the host, the remote python and the remote kernelspec. Its
``argv`` runs :mod:`tether.kernels.shim`, so frontends that launch argv themselves (and ignore
provisioners) still reach the remote kernel. ``metadata.tether`` marks specs tether owns.

The spec <-> JSON mapping and the probe -> checks mapping are pure; ``check_spec`` and the
file operations are the I/O shell.
"""

from __future__ import annotations

import enum
import json
import re
import shutil
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tether import paths
from tether.errors import (AlreadyExistsError, ConfigError, LocalIOError, NotFoundError,
                           TetherError, UsageError)

SPEC_VERSION = 1
PREFIX = "tether-"
PROVISIONER = "tether-ssh-provisioner"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
CHECKS = ("host reachable", "remote python runs", "ipykernel present",
          "remote kernelspec found")


class InterruptMode(str, enum.Enum):
    SIGNAL = "signal"    # SIGINT to the remote kernel's process group, via the launcher
    MESSAGE = "message"  # an interrupt_request on the control channel


@dataclass(frozen=True)
class RemoteKernelSpec:
    name: str
    host: str
    python: str
    remote_kernel: str = "python3"
    display_name: str = ""
    ssh_config: str = ""
    interrupt_mode: InterruptMode = InterruptMode.SIGNAL
    lifetime: str = "grace"
    grace_s: float = 600.0
    remote_argv: tuple[str, ...] = ()
    language: str = "python"
    remote_state_dir: str = ""

    @property
    def kernel_name(self) -> str:
        """The Jupyter kernel name (``jupyter console --kernel tether-NAME``)."""
        return PREFIX + self.name

    @property
    def title(self) -> str:
        return self.display_name or f"{self.name} ({self.host})"


def validate(spec: RemoteKernelSpec) -> RemoteKernelSpec:
    """Reject what cannot work before anything is written (pure)."""
    if not _NAME_RE.match(spec.name):
        raise UsageError(f"invalid kernel name {spec.name!r}",
                         "use lower-case letters, digits, '.', '_' and '-' (max 63)")
    if not spec.python.startswith("/"):
        raise UsageError(f"--python must be an absolute path on the remote host, "
                         f"not {spec.python!r}", "e.g. --python /usr/bin/python3")
    if not spec.host or spec.host.startswith("-") or any(c.isspace() for c in spec.host):
        raise UsageError(f"invalid host {spec.host!r}",
                         "give an ssh alias, user@host or a tether host name")
    if not _NAME_RE.match(spec.remote_kernel.lower()):
        raise UsageError(f"invalid remote kernelspec name {spec.remote_kernel!r}")
    if spec.lifetime not in ("session", "grace"):
        raise UsageError(f"invalid lifetime {spec.lifetime!r}", "use session or grace")
    if spec.grace_s < 0:
        raise UsageError("the grace period cannot be negative")
    return spec


def spec_to_json(spec: RemoteKernelSpec) -> dict[str, Any]:
    """The kernel.json document of ``spec`` (pure)."""
    config: dict[str, Any] = {
        "host": spec.host, "python": spec.python, "remote_kernel": spec.remote_kernel,
        "lifetime": spec.lifetime, "grace_s": spec.grace_s, "spec_name": spec.name,
    }
    if spec.ssh_config:
        config["ssh_config"] = spec.ssh_config
    if spec.remote_argv:
        config["remote_argv"] = list(spec.remote_argv)
    if spec.remote_state_dir:
        config["remote_state_dir"] = spec.remote_state_dir
    return {
        "argv": [sys.executable, "-m", "tether.kernels.shim", "--kernel", spec.kernel_name,
                 "-f", "{connection_file}"],
        "display_name": spec.title,
        "language": spec.language,
        "interrupt_mode": InterruptMode(spec.interrupt_mode).value,
        "metadata": {
            "kernel_provisioner": {"provisioner_name": PROVISIONER, "config": config},
            "tether": {"v": SPEC_VERSION, "name": spec.name,
                       "display_name": spec.display_name},
        },
    }


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def is_foreign(data: Any) -> bool:
    """Whether a readable kernel.json is a kernelspec (it has an ``argv``) with no sign of
    tether at all (pure): someone else's, which tether must not delete even under a
    ``tether-`` name. Anything else that fails to parse as ours is a broken one of ours."""
    meta = _object(_object(data).get("metadata"))
    prov = _object(meta.get("kernel_provisioner"))
    return (isinstance(_object(data).get("argv"), list) and "tether" not in meta
            and prov.get("provisioner_name") != PROVISIONER)


def spec_from_json(data: Any) -> RemoteKernelSpec:
    """Read back a kernel.json tether wrote (pure); ConfigError when it is not one."""
    if not isinstance(data, dict):
        raise ConfigError("not a tether kernelspec (not a JSON object)")
    meta = _object(data.get("metadata"))
    mark = _object(meta.get("tether"))
    prov = _object(meta.get("kernel_provisioner"))
    if mark.get("v") != SPEC_VERSION or prov.get("provisioner_name") != PROVISIONER:
        raise ConfigError("not a tether kernelspec (or a version this tether cannot read)")
    cfg = _object(prov.get("config"))
    try:
        return RemoteKernelSpec(
            name=mark["name"], host=cfg["host"], python=cfg["python"],
            remote_kernel=cfg.get("remote_kernel", "python3"),
            display_name=mark.get("display_name", ""), ssh_config=cfg.get("ssh_config", ""),
            interrupt_mode=InterruptMode(data.get("interrupt_mode", "signal")),
            lifetime=cfg.get("lifetime", "grace"), grace_s=float(cfg.get("grace_s", 600)),
            remote_argv=tuple(cfg.get("remote_argv") or ()),
            language=data.get("language", "python"),
            remote_state_dir=cfg.get("remote_state_dir", ""))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"malformed tether kernelspec: {exc}") from exc


# -- health --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool | None  # None: not run, an earlier check failed
    message: str
    hint: str | None = None
    error: TetherError | None = field(default=None, compare=False, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "message": self.message, "hint": self.hint}


@dataclass(frozen=True)
class Health:
    checks: tuple[Check, ...]
    probe: dict[str, Any] | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failure(self) -> Check | None:
        return next((c for c in self.checks if c.ok is False), None)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checks": [c.to_dict() for c in self.checks]}


def checks_from_failure(exc: TetherError) -> tuple[Check, ...]:
    """The checks when the probe session itself failed (pure)."""
    from tether.errors import NotFoundError as Missing

    reached = isinstance(exc, Missing)  # the remote shell answered "no such python"
    failed_at = 1 if reached else 0
    checks = []
    for i, name in enumerate(CHECKS):
        if i < failed_at:
            checks.append(Check(name, True, "ok"))
        elif i == failed_at:
            checks.append(Check(name, False, exc.message, exc.hint, exc))
        else:
            checks.append(Check(name, None, "not checked"))
    return tuple(checks)


def checks_from_probe(spec: RemoteKernelSpec, info: dict[str, Any]) -> tuple[Check, ...]:
    """The checks from a successful probe answer (pure)."""
    host, py = spec.host, spec.python
    checks = [Check(CHECKS[0], True, "ok"),
              Check(CHECKS[1], True, f"Python {info.get('python', '?')}")]
    if not info.get("ipykernel"):
        err = NotFoundError(f"ipykernel is not installed for {py} on {host}"
                            f" ({info.get('ipykernel_error', 'import failed')})",
                            f"on {host}: {py} -m pip install ipykernel")
        checks.append(Check(CHECKS[2], False, err.message, err.hint, err))
        checks.append(Check(CHECKS[3], None, "not checked"))
        return tuple(checks)
    checks.append(Check(CHECKS[2], True, f"ipykernel {info['ipykernel']}"))
    if not info.get("kernelspec"):
        found = ", ".join(info.get("kernelspecs") or []) or "none"
        err = NotFoundError(f"no kernelspec {spec.remote_kernel!r} for {py} on {host} "
                            f"(found: {found})",
                            f"on {host}: {py} -m ipykernel install --user, "
                            "or pass --remote-kernel with one of those")
        checks.append(Check(CHECKS[3], False, err.message, err.hint, err))
    else:
        checks.append(Check(CHECKS[3], True, spec.remote_kernel))
    return tuple(checks)


def check_spec(spec: RemoteKernelSpec, timeout: float = 30.0) -> Health:
    """Run the four health checks against the real host (one SSH session)."""
    from tether.kernels.link import PROTOCOL, run_once
    from tether.kernels.target import resolve_target, ssh_options

    try:
        target = resolve_target(spec.host, spec.ssh_config or None)
        ssh_options(target)
        answer = run_once(target, spec.python, {"v": PROTOCOL, "op": "probe",
                                                "kernel": spec.remote_kernel}, timeout)
    except TetherError as exc:
        return Health(checks_from_failure(exc))
    info = answer.get("info") or {}
    return Health(checks_from_probe(spec, info), info)


def with_probe(spec: RemoteKernelSpec, info: dict[str, Any],
               interrupt_mode: InterruptMode | None) -> RemoteKernelSpec:
    """Cache what the probe learned: the remote argv (saves ~0.3 s per launch) and modes."""
    ks = info.get("kernelspec") or {}
    mode = interrupt_mode or InterruptMode(ks.get("interrupt_mode") or "signal")
    return replace(spec, remote_argv=tuple(ks.get("argv") or ()), interrupt_mode=mode,
                   language=ks.get("language") or spec.language)


# -- files --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KernelEntry:
    spec: RemoteKernelSpec
    path: Path
    health: Health | None = None

    def to_dict(self) -> dict[str, Any]:
        s = self.spec
        data = {"name": s.name, "kernel_name": s.kernel_name, "display_name": s.title,
                "host": s.host, "python": s.python, "remote_kernel": s.remote_kernel,
                "ssh_config": s.ssh_config or None,
                "interrupt_mode": InterruptMode(s.interrupt_mode).value,
                "lifetime": s.lifetime, "grace_s": s.grace_s, "path": str(self.path)}
        if self.health is not None:
            data["health"] = self.health.to_dict()
        return data


def kernels_dir() -> Path:
    from jupyter_core.paths import jupyter_data_dir

    return Path(jupyter_data_dir()) / "kernels"


def _spec_dir(name: str) -> Path:
    return kernels_dir() / (PREFIX + name)


def _existing_dir(name: str) -> Path:
    """The kernelspec folder of ``name``; NotFoundError when there is none.

    A name that `add` would refuse names no kernel, and must not reach the file system: it
    could climb out of the kernels dir (``../x``) and `delete` removes folders.
    """
    directory = _spec_dir(name)
    if not _NAME_RE.match(name) or not (directory.is_dir() or directory.is_symlink()):
        raise NotFoundError(f"no tether kernel named {name!r}", "see `tether kernel list`")
    return directory


def _read_spec(directory: Path) -> tuple[RemoteKernelSpec | None, str | None, bool]:
    """(spec, None, False) for a good kernel.json, else (None, why it is broken, foreign)."""
    path = directory / "kernel.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None, f"{path} is missing", False
    except (OSError, ValueError) as exc:
        return None, f"cannot read {path}: {exc}", False
    try:
        return spec_from_json(data), None, False
    except ConfigError as exc:
        return None, f"{path}: {exc.message}", is_foreign(data)


def _write(spec: RemoteKernelSpec) -> Path:
    directory = paths.ensure_dir(_spec_dir(spec.name), 0o755)
    paths.atomic_write(directory / "kernel.json", json.dumps(spec_to_json(spec), indent=1),
                       mode=0o644)
    return directory


def _foreign_hint(name: str) -> str:
    return (f"{PREFIX}{name} holds a kernelspec tether did not write; if it is not needed, "
            f"`jupyter kernelspec remove {PREFIX}{name}` removes it")


def get_kernel(name: str) -> RemoteKernelSpec:
    spec, problem, foreign = _read_spec(_existing_dir(name))
    if spec is None:
        raise ConfigError(
            f"the kernelspec of kernel {name!r} is broken: {problem}",
            _foreign_hint(name) if foreign else
            f"`tether kernel delete {name}` removes it; then add it again with "
            f"`tether kernel add {name} --host HOST --python /abs/python`")
    return spec


def _checked(spec: RemoteKernelSpec, check: bool,
             interrupt_mode: InterruptMode | None) -> tuple[RemoteKernelSpec, Health | None]:
    if not check:
        return spec, None
    health = check_spec(spec)
    failure = health.failure
    if failure is not None:
        assert failure.error is not None
        raise failure.error  # nothing written: the spec would not start
    return with_probe(spec, health.probe or {}, interrupt_mode), health


def add_kernel(spec: RemoteKernelSpec, *, check: bool = True, replace_existing: bool = False,
               interrupt_mode: InterruptMode | None = None) -> KernelEntry:
    """Check the host and install the kernelspec ``tether-NAME``."""
    validate(spec)
    if (_spec_dir(spec.name) / "kernel.json").exists() and not replace_existing:
        raise AlreadyExistsError(f"a kernel named {spec.name!r} exists",
                                 f"`tether kernel edit {spec.name} ...` or delete it first")
    if interrupt_mode is not None:
        spec = replace(spec, interrupt_mode=interrupt_mode)
    spec, health = _checked(spec, check, interrupt_mode)
    return KernelEntry(spec, _write(spec), health)


def edit_kernel(name: str, *, check: bool = True, interrupt_mode: InterruptMode | None = None,
                **changes: Any) -> KernelEntry:
    """Change fields of an existing kernel (None values are left alone), re-check, rewrite."""
    current = get_kernel(name)
    changes = {k: v for k, v in changes.items() if v is not None}
    mode = interrupt_mode or current.interrupt_mode  # a re-probe does not undo a choice
    if {"host", "python", "remote_kernel", "ssh_config"} & set(changes):
        changes["remote_argv"] = ()  # cached for the old target; re-learned or resolved
    spec = validate(replace(current, interrupt_mode=mode, **changes))
    spec, health = _checked(spec, check, mode)
    return KernelEntry(spec, _write(spec), health)


def delete_kernel(name: str) -> Path:
    """Remove the kernelspec folder ``tether-NAME``, also when its kernel.json is broken
    (the folder is tether's); refused for a readable kernelspec tether did not write."""
    directory = _existing_dir(name)
    _, problem, foreign = _read_spec(directory)
    if foreign:
        raise ConfigError(f"{directory} is not a tether kernelspec: {problem}",
                          _foreign_hint(name))
    try:
        if directory.is_symlink():  # remove the link, never what it points to
            directory.unlink()
        else:
            shutil.rmtree(directory)
    except OSError as exc:
        raise LocalIOError(f"cannot remove {directory}: {exc.strerror}",
                           "check the folder's permissions") from exc
    return directory


def list_kernels(*, check: bool = True,
                 on_checked: Callable[[int], None] | None = None,
                 on_broken: Callable[[str, str], None] | None = None) -> list[KernelEntry]:
    """Every tether kernelspec in the data dir, health-checked in parallel.

    ``on_checked(1)`` is called as each check finishes (for a progress bar);
    ``on_broken(name, problem)`` for each ``tether-NAME`` folder that cannot be read (other
    programs' kernelspecs are passed over silently).
    """
    entries = []
    base = kernels_dir()
    for directory in sorted(base.glob(PREFIX + "*")) if base.is_dir() else []:
        if not directory.is_dir():
            continue
        spec, problem, foreign = _read_spec(directory)
        if spec is None:
            if on_broken is not None and not foreign:
                on_broken(directory.name[len(PREFIX):], problem or "")
            continue  # list what can be read
        entries.append(KernelEntry(spec, directory))
    if check and entries:
        def one(entry: KernelEntry) -> Health:
            health = check_spec(entry.spec)
            if on_checked is not None:
                on_checked(1)
            return health

        with ThreadPoolExecutor(max_workers=min(8, len(entries))) as pool:
            healths = list(pool.map(one, entries))
        entries = [replace(e, health=h) for e, h in zip(entries, healths)]
    return entries
