"""Stand-in kernel process for frontends that launch a kernelspec's argv themselves.

JupyterLab and nbclient use the provisioner named in the kernelspec; some frontends (VS Code,
older tools) ignore provisioners and run ``argv`` with a connection file instead. For them this
process *is* the kernel: it reads their connection file (ports and key they chose), runs the
same provisioner to start the remote kernel with those local ports, relays SIGINT (interrupt)
and SIGTERM (shutdown) to it, and exits with it.

    python -m tether.kernels.shim --kernel tether-NAME -f CONNECTION_FILE
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import uuid


async def _run(kernel_name: str, connection_file: str) -> int:
    from jupyter_client.kernelspec import KernelSpecManager

    from tether.kernels.provisioner import TetherSSHProvisioner

    spec = KernelSpecManager().get_kernel_spec(kernel_name)
    config = dict(spec.metadata["kernel_provisioner"].get("config") or {})
    with open(connection_file) as fh:
        info = json.load(fh)
    info["key"] = info.get("key", "").encode()
    prov = TetherSSHProvisioner(kernel_id=str(uuid.uuid4()), kernel_spec=spec, parent=None,
                                **config)
    prov.connection_info = info
    await prov.launch_kernel([], env={})
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT,
                            lambda: loop.create_task(prov.send_signal(signal.SIGINT)))
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    try:
        while not stop.is_set():
            code = await prov.poll()
            if code is not None:
                return code
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
        await prov.terminate()
        return 0
    finally:
        await prov.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tether.kernels.shim")
    parser.add_argument("--kernel", required=True, help="kernelspec name (tether-NAME)")
    parser.add_argument("-f", dest="connection_file", required=True)
    args = parser.parse_args(argv)
    from tether.errors import TetherError

    try:
        return asyncio.run(_run(args.kernel, args.connection_file))
    except TetherError as exc:
        sys.stderr.write(f"error: {exc.message}\n" + (f"hint: {exc.hint}\n" if exc.hint else ""))
        return 1


if __name__ == "__main__":
    sys.exit(main())
