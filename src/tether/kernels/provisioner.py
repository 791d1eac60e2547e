"""``TetherSSHProvisioner``: a jupyter_client kernel provisioner for kernels on SSH hosts.

Registered under the ``jupyter_client.kernel_provisioners`` entry point group as
``tether-ssh-provisioner``; a kernelspec selects it with::

    "metadata": {"kernel_provisioner": {"provisioner_name": "tether-ssh-provisioner",
                                         "config": {"host": "gpu", "python": "/usr/bin/python3"}}}

(``tether kernel add`` writes such specs). The kernel manager picks five local ports as for a
local kernel; the provisioner starts the remote launcher over one OpenSSH session, which picks
five remote ports on the remote 127.0.0.1, and forwards local -> remote through that session.
All SSH work is blocking calls on worker threads (``asyncio.to_thread``), so the provisioner
behaves the same under ``KernelManager`` and ``AsyncKernelManager``, whichever loop calls it.
"""

from __future__ import annotations

import asyncio
import enum
import signal
from typing import Any

from jupyter_client.connect import KernelConnectionInfo, LocalPortCache
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import CaselessStrEnum, Float, List, Unicode

from tether.errors import ConnectError, TetherError, UsageError
from tether.kernels import registry
from tether.kernels.link import LINK_LOST, PORT_NAMES, PROTOCOL, KernelLink
from tether.kernels.target import resolve_target

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class KernelLifetime(str, enum.Enum):
    """What a link drop does to the remote kernel."""

    SESSION = "session"  # the kernel dies with its SSH session: nothing can outlive the client
    GRACE = "grace"      # the kernel outlives a drop for ``grace_s`` and can be re-attached


class LinkDropPolicy(str, enum.Enum):
    """What ``poll()`` does when it finds the SSH session gone (GRACE lifetime only)."""

    REATTACH = "reattach"  # re-attach once on the same local ports, state intact
    REPORT = "report"      # report the kernel as gone (exit code 255); attach by hand


class TetherSSHProvisioner(KernelProvisionerBase):  # type: ignore[misc]
    """Runs the kernel on an SSH host; the kernel manager talks to it through forwards."""

    host = Unicode(help="ssh alias, user@host or tether host name").tag(config=True)
    python = Unicode("python3", help="absolute path of the remote python").tag(config=True)
    remote_kernel = Unicode("python3", help="remote kernelspec name").tag(config=True)
    remote_argv = List(Unicode(), help="remote kernel argv cached by `tether kernel add`"
                       ).tag(config=True)
    ssh_config = Unicode("", help="ssh config file (default: OpenSSH's)").tag(config=True)
    lifetime = CaselessStrEnum([m.value for m in KernelLifetime],
                               default_value=KernelLifetime.GRACE.value).tag(config=True)
    grace_s = Float(600.0, help="seconds a dropped kernel waits for a re-attach"
                    ).tag(config=True)
    on_link_drop = CaselessStrEnum([m.value for m in LinkDropPolicy],
                                   default_value=LinkDropPolicy.REATTACH.value).tag(config=True)
    remote_state_dir = Unicode("", help="remote dir for kernel records").tag(config=True)
    remote_cwd = Unicode("", help="remote working directory (default: home)").tag(config=True)
    launch_timeout = Float(60.0).tag(config=True)
    keepalive_s = Float(10.0).tag(config=True)
    link_idle_s = Float(None, allow_none=True,
                        help="seconds the host link outlives its last kernel (default: "
                             "TETHER_KERNEL_LINK_IDLE or 600; 0: close with it)"
                        ).tag(config=True)
    spec_name = Unicode("", help="the tether kernel name").tag(config=True)

    link: KernelLink | None = None
    ports_cached = False
    remote_ports: dict[str, int] | None = None
    _reattach_failed = False
    _drop_reported = False
    _reattaching = False

    # -- the process-like surface ----------------------------------------------------------
    @property
    def has_process(self) -> bool:
        return self.link is not None

    async def poll(self) -> int | None:
        link = self.link
        if link is None:
            return 0
        if link.kernel_exit is not None:
            return link.kernel_exit
        if link.alive:
            return None
        # RACE: the session may have ended right after the launcher said "exited"; read the
        # rest of its output before calling the link dead
        await asyncio.to_thread(link.drain, 1.0)
        if link.kernel_exit is not None:
            return link.kernel_exit
        if self._reattaching:
            return None  # another poll() is re-attaching right now
        if self._can_reattach():
            self._reattaching = True
            try:
                await self.reattach()
                return None
            except TetherError as exc:
                self._reattach_failed = True
                self.log.warning("tether: link to %s lost and re-attach failed: %s",
                                 self.host, exc)
            finally:
                self._reattaching = False
        elif not self._drop_reported:
            self._drop_reported = True
            self.log.warning("tether: link to %s lost (kernel %s); %s", self.host,
                             self.kernel_id, self._attach_hint())
        return LINK_LOST

    async def wait(self) -> int | None:
        while (code := await self.poll()) is None:
            await asyncio.sleep(0.05)
        return code

    async def send_signal(self, signum: int) -> None:
        # signal mode interrupts, terminate and kill: the launcher signals the REMOTE
        # kernel's process group, over the session we already have
        if self.link is not None and not self.link.send({"op": "signal",
                                                          "signum": int(signum)}):
            self.log.warning("tether: cannot signal kernel %s: the link is down", self.kernel_id)

    async def kill(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        await self.send_signal(signal.SIGTERM)

    # -- launch --------------------------------------------------------------------------
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        km = self.parent
        if km is not None:
            if km.transport != "tcp" or km.ip not in LOOPBACK:
                raise UsageError(f"tether kernels forward to a local loopback tcp address, "
                                 f"not {km.transport}://{km.ip}",
                                 "leave the kernel manager's ip and transport at defaults")
            if km.cache_ports and not self.ports_cached:
                lpc = LocalPortCache.instance()
                for name in PORT_NAMES:
                    setattr(km, name, lpc.find_available_port(km.ip))
                self.ports_cached = True
            session_name = kwargs.get("env", {}).get("JPY_SESSION_NAME", "")
            km.write_connection_file(jupyter_session=session_name)
            self.connection_info = km.get_connection_info()
        kwargs.pop("extra_arguments", None)
        return await super().pre_launch(cmd=[], **kwargs)

    def _remote_env(self, env: dict[str, str]) -> dict[str, str]:
        # only what the kernelspec asks for travels: the local environment stays local
        wanted = set(self.kernel_spec.env) if self.kernel_spec else set()
        wanted.add("JPY_SESSION_NAME")
        return {k: env[k] for k in wanted if k in env}

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        info = self.connection_info
        key = info.get("key", b"")
        request = {
            "v": PROTOCOL, "op": "launch", "kernel_id": self.kernel_id,
            "connection": {"key": key.decode() if isinstance(key, bytes) else key,
                           "signature_scheme": info.get("signature_scheme", "hmac-sha256"),
                           "kernel_name": self.remote_kernel},
            "kernel": self.remote_kernel, "argv": list(self.remote_argv) or None,
            "env": self._remote_env(kwargs.get("env") or {}),
            "lifetime": self.lifetime, "grace_s": self.grace_s,
            "state_dir": self.remote_state_dir or None, "cwd": self.remote_cwd or None,
            "keepalive_s": self.keepalive_s, "tag": self.spec_name or None,
        }
        target = resolve_target(self.host, self.ssh_config or None)
        link = KernelLink(target, self.python, self.link_idle_s)
        started = await asyncio.to_thread(link.open, request, self.launch_timeout,
                                          self.keepalive_s)
        try:
            try:
                await self._forward(link, started["ports"])
            except ConnectError:
                if self.parent is None:
                    raise  # the ports belong to a frontend's connection file (the shim)
                # RACE: a local port the manager picked was taken before ssh bound it; pick
                # new ones once: the manager rewrites its connection file from what we return
                self._pick_new_local_ports()
                await self._forward(link, started["ports"])
        except BaseException:
            await asyncio.to_thread(link.close)
            raise
        self.link, self.remote_ports = link, started["ports"]
        self._reattach_failed = self._drop_reported = False
        registry.save_record(registry.KernelRecord(
            kernel_id=self.kernel_id, spec=self.spec_name, host=self.host, python=self.python,
            ssh_config=str(target.config_file or ""), state_dir=self.remote_state_dir,
            lifetime=self.lifetime, started_at=registry.now()))
        return self.connection_info

    def _pick_new_local_ports(self) -> None:
        lpc = LocalPortCache.instance()
        ip = str(self.connection_info.get("ip") or "127.0.0.1")
        info = dict(self.connection_info)
        for name in PORT_NAMES:
            info[name] = lpc.find_available_port(ip)
        self.connection_info = info

    async def _forward(self, link: KernelLink, remote_ports: dict[str, int]) -> None:
        info = self.connection_info
        bind_ip = str(info.get("ip") or "127.0.0.1")
        if bind_ip not in LOOPBACK:
            raise UsageError(f"refusing to expose a remote kernel on {bind_ip}",
                             "use a connection file with ip 127.0.0.1")
        pairs = [(int(info[name]), int(remote_ports[name])) for name in PORT_NAMES]
        await asyncio.to_thread(link.forward, bind_ip, pairs)

    # -- link drops --------------------------------------------------------------------------
    def _can_reattach(self) -> bool:
        shutting_down = bool(getattr(self.parent, "shutting_down", False))
        return (not shutting_down and self.lifetime == KernelLifetime.GRACE.value
                and self.on_link_drop == LinkDropPolicy.REATTACH.value
                and not self._reattach_failed)

    def _attach_hint(self) -> str:
        if self.lifetime == KernelLifetime.GRACE.value:
            return (f"it stays alive for {self.grace_s:.0f}s: "
                    f"`tether kernel attach {self.kernel_id}`")
        return "the remote kernel was stopped with its session (lifetime=session)"

    async def reattach(self) -> None:
        """Re-attach to the still-running remote kernel on the same local ports."""
        old = self.link
        if old is not None:
            await asyncio.to_thread(old.close, 1.0)  # frees the local ports if still bound
        target = resolve_target(self.host, self.ssh_config or None)
        link = KernelLink(target, self.python, self.link_idle_s)
        request = {"v": PROTOCOL, "op": "attach", "kernel_id": self.kernel_id,
                   "state_dir": self.remote_state_dir or None}
        attached = await asyncio.to_thread(link.open, request, self.launch_timeout,
                                           self.keepalive_s)
        try:
            await self._forward(link, attached["ports"])
        except BaseException:
            await asyncio.to_thread(link.close)
            raise
        self.link, self.remote_ports = link, attached["ports"]
        # clients' zmq sockets retry every 100 ms: let them reconnect (and iopub resubscribe)
        # before anyone is told the kernel is back
        await asyncio.sleep(0.3)
        self.log.warning("tether: link to %s dropped; re-attached to kernel %s", self.host,
                         self.kernel_id)

    # -- teardown ----------------------------------------------------------------------------
    async def cleanup(self, restart: bool = False) -> None:
        link, self.link = self.link, None
        if link is not None:
            # in GRACE lifetime a plain EOF would leave the kernel waiting for an attach;
            # the manager is done with it, so say stop first
            if link.kernel_exit is None:
                link.send({"op": "stop"})
                await asyncio.to_thread(link.wait_exit, 5.0)
            await asyncio.to_thread(link.close)
        if not restart:
            registry.forget_record(self.kernel_id)
            if self.ports_cached:
                lpc = LocalPortCache.instance()
                for name in PORT_NAMES:
                    port = self.connection_info.get(name)
                    if isinstance(port, int):
                        lpc.return_port(port)
                self.ports_cached = False

    async def get_provisioner_info(self) -> dict[str, Any]:
        info = await super().get_provisioner_info()
        info.update(host=self.host, python=self.python, remote_ports=self.remote_ports,
                    ssh_config=self.ssh_config, remote_state_dir=self.remote_state_dir,
                    lifetime=self.lifetime)
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        await super().load_provisioner_info(provisioner_info)
        for name in ("host", "python", "ssh_config", "remote_state_dir", "lifetime"):
            if provisioner_info.get(name):
                setattr(self, name, provisioner_info[name])
        self.remote_ports = provisioner_info.get("remote_ports")

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return max(recommended, 4.0)  # one more round trip than a local kernel

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        return recommended + 5.0

    def _finalize_env(self, env: dict[str, str]) -> None:
        super()._finalize_env(env)
        env.pop("JPY_PARENT_PID", None)


__all__ = ["KernelLifetime", "LinkDropPolicy", "TetherSSHProvisioner"]
