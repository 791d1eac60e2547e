"""Re-attach to a remote kernel that outlived its link (``lifetime=grace``).

``attach_kernel(NAME | ID)`` opens a new SSH session, asks the remote launcher of that kernel
for its connection info (the session key travels only inside SSH), forwards five fresh local
ports to the kernel's remote ports and writes a local connection file (0600) that any Jupyter
client can use (``jupyter console --existing FILE``). The kernel keeps its state: it never
stopped. Closing the attachment hands the kernel back to its grace period.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tether import paths
from tether.errors import ConfigError, NotFoundError, UsageError
from tether.kernels import registry, specs
from tether.kernels.link import LINK_LOST, PORT_NAMES, PROTOCOL, KernelLink, run_once
from tether.kernels.remote_launcher import free_ports
from tether.kernels.target import SshTarget, resolve_target


@dataclass(frozen=True)
class KernelLocation:
    kernel_id: str
    host: str
    python: str
    ssh_config: str
    state_dir: str


@dataclass
class AttachedKernel:
    kernel_id: str
    host: str
    connection_file: Path
    connection_info: dict[str, Any]
    link: KernelLink

    def wait(self, timeout: float | None = None) -> int | None:
        """Block until the kernel exits (its code) or the link drops (255)."""
        self.link.wait_exit(float("inf") if timeout is None else timeout)
        if self.link.kernel_exit is not None:
            return self.link.kernel_exit
        return None if self.link.alive else LINK_LOST

    def close(self) -> None:
        """Detach: the kernel goes back to waiting out its grace period."""
        self.link.send({"op": "detach"})
        self.link.close()

    def to_dict(self) -> dict[str, Any]:
        ports = {n: self.connection_info[n] for n in PORT_NAMES}
        return {"kernel_id": self.kernel_id, "host": self.host,
                "connection_file": str(self.connection_file), "ports": ports}


def remote_kernels(spec: specs.RemoteKernelSpec) -> list[dict[str, Any]]:
    """Kernels the launcher on ``spec``'s host knows about (alive or not)."""
    target = resolve_target(spec.host, spec.ssh_config or None)
    answer = run_once(target, spec.python, {"v": PROTOCOL, "op": "list",
                                            "state_dir": spec.remote_state_dir or None})
    return list(answer.get("kernels") or [])


def locate(name_or_id: str) -> KernelLocation:
    """A kernel name (the one running attachable kernel of that spec) or a kernel id."""
    broken: ConfigError | None = None
    try:
        spec = specs.get_kernel(name_or_id)
    except NotFoundError:
        spec = None
    except ConfigError as exc:  # a broken spec of that name, unless it is a kernel id after all
        spec, broken = None, exc
    if spec is not None:
        running = [k for k in remote_kernels(spec)
                   if k.get("alive") and k.get("tag") == spec.name and k.get("lifetime") == "grace"]
        if not running:
            raise NotFoundError(f"no attachable kernel of {spec.name!r} runs on {spec.host}",
                                "kernels are attachable while running with lifetime=grace")
        if len(running) > 1:
            ids = ", ".join(k["kernel_id"] for k in running)
            raise UsageError(f"{len(running)} kernels of {spec.name!r} run on {spec.host}",
                             f"attach one by id: {ids}")
        return KernelLocation(running[0]["kernel_id"], spec.host, spec.python,
                              spec.ssh_config, spec.remote_state_dir)
    try:
        rec = registry.find_record(name_or_id)
    except NotFoundError:
        if broken is not None:
            raise broken from None  # its hint says how to repair the spec
        raise
    return KernelLocation(rec.kernel_id, rec.host, rec.python, rec.ssh_config, rec.state_dir)


def default_connection_file(kernel_id: str) -> Path:
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir()) / f"kernel-tether-{kernel_id}.json"


def open_link(target: SshTarget, python: str, kernel_id: str, state_dir: str,
              timeout: float = 60.0, keepalive_s: float = 10.0) -> tuple[KernelLink, dict]:
    """A new session attached to the launcher of ``kernel_id``; returns it and the answer."""
    link = KernelLink(target, python)
    answer = link.open({"v": PROTOCOL, "op": "attach", "kernel_id": kernel_id,
                        "state_dir": state_dir or None}, timeout, keepalive_s)
    return link, answer


def attach_kernel(name_or_id: str, *, connection_file: Path | None = None,
                  timeout: float = 60.0) -> AttachedKernel:
    """Attach to a running remote kernel; see the module docstring."""
    where = locate(name_or_id)
    target = resolve_target(where.host, where.ssh_config or None)
    link, answer = open_link(target, where.python, where.kernel_id, where.state_dir, timeout)
    try:
        remote = answer["connection"]
        local = dict(zip(PORT_NAMES, free_ports(len(PORT_NAMES))))
        link.forward("127.0.0.1", [(local[n], int(answer["ports"][n])) for n in PORT_NAMES])
        info = {**local, "ip": "127.0.0.1", "transport": "tcp", "key": remote["key"],
                "signature_scheme": remote.get("signature_scheme", "hmac-sha256"),
                "kernel_name": remote.get("kernel_name", "")}
        path = connection_file or default_connection_file(where.kernel_id)
        paths.atomic_write(path, json.dumps(info, indent=1), mode=0o600)
    except BaseException:
        link.close()
        raise
    return AttachedKernel(where.kernel_id, where.host, path, info, link)
