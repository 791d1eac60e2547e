"""`tether kernel add/edit/delete/list/ps` through the real entry point, against the real sshd:
each health check failing on its own, with its own message, and nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kernel_helpers import wait_gone

from tests.conftest import free_port

pytestmark = pytest.mark.timeout(60)
PY = sys.executable


def _spec_file(kenv, name: str) -> Path:
    return kenv.data_dir / "kernels" / f"tether-{name}" / "kernel.json"


def test_add_checks_the_host_and_installs_a_usable_kernelspec(kenv, cli):
    r = cli("kernel", "add", "gpu", "--host", "rk", "--python", PY, "--json")
    assert r.exit_code == 0, r.stderr
    data = r.json()
    assert data["kernel_name"] == "tether-gpu" and data["health"]["ok"] is True
    assert [c["name"] for c in data["health"]["checks"]] == [
        "host reachable", "remote python runs", "ipykernel present", "remote kernelspec found"]
    spec = json.loads(_spec_file(kenv, "gpu").read_text())
    prov = spec["metadata"]["kernel_provisioner"]
    assert prov["provisioner_name"] == "tether-ssh-provisioner"
    assert prov["config"]["host"] == "rk" and prov["config"]["python"] == PY
    assert prov["config"]["remote_argv"][0] == PY  # cached: launches skip the spec lookup
    assert spec["interrupt_mode"] == "signal"
    # jupyter itself sees it, through JUPYTER_DATA_DIR
    from jupyter_client.kernelspec import KernelSpecManager

    assert "tether-gpu" in KernelSpecManager().find_kernel_specs()
    r = cli("kernel", "add", "gpu", "--host", "rk", "--python", PY)
    assert r.exit_code == 2 and "exists" in r.stderr


def _unreachable_config(kenv, tmp_path) -> Path:
    cfg = tmp_path / "bad_config"
    cfg.write_text(kenv.remote.config.read_text() +
                   f"\nHost dead\n  HostName 127.0.0.1\n  Port {free_port()}\n"
                   "  ConnectTimeout 3\n")
    return cfg


@pytest.mark.parametrize("case", ["unreachable", "no-python", "no-ipykernel", "no-kernelspec"])
def test_add_reports_each_failed_check_and_writes_nothing(kenv, cli, tmp_path, case):
    args = {"unreachable": ["--host", "dead", "--python", PY,
                            "--ssh-config", str(_unreachable_config(kenv, tmp_path))],
            "no-python": ["--host", "rk", "--python", "/nonexistent/python3"],
            "no-ipykernel": ["--host", "rk", "--python", "/usr/bin/python3"],
            "no-kernelspec": ["--host", "rk", "--python", PY, "--remote-kernel", "julia-9"],
            }[case]
    expect = {"unreachable": (1, "cannot reach dead"),
              "no-python": (10, "remote python /nonexistent/python3 does not run on rk"),
              "no-ipykernel": (10, "ipykernel is not installed for /usr/bin/python3 on rk"),
              "no-kernelspec": (10, "no kernelspec 'julia-9'"),
              }[case]
    r = cli("kernel", "add", "k", *args)
    assert r.exit_code == expect[0], r.stderr
    first = r.stderr.splitlines()[0]
    assert first.startswith("error: ") and expect[1] in first, r.stderr
    assert "hint: " in r.stderr
    assert not _spec_file(kenv, "k").exists()


@pytest.mark.parametrize("args,message", [
    (["--host", "rk", "--python", "python3"], "absolute path"),
    (["--host", "rk"], "needs --host and --python"),
    (["--host", "-oProxyCommand=x", "--python", PY], "invalid host"),
    (["--host", "rk", "--python", PY, "--interrupt-mode", "loud"], "invalid --interrupt-mode"),
], ids=["relative-python", "missing-python", "option-as-host", "bad-interrupt-mode"])
def test_add_rejects_bad_input_without_touching_the_host(kenv, cli, args, message):
    r = cli("kernel", "add", "k", *args)
    assert r.exit_code == 2 and message in r.stderr
    assert not _spec_file(kenv, "k").exists()


def test_list_edit_delete(kenv, cli):
    kenv.spec("one")
    kenv.spec("two", python="/usr/bin/python3")
    r = cli("kernel", "list", "--json")
    assert r.exit_code == 3  # one kernel fails its health check
    kernels = {k["name"]: k for k in r.json()["kernels"]}
    assert kernels["one"]["health"]["ok"] is True
    failure = [c for c in kernels["two"]["health"]["checks"] if c["ok"] is False]
    assert failure[0]["name"] == "ipykernel present"
    human = cli("kernel", "list")
    assert "two: ipykernel present: ipykernel is not installed" in human.stderr
    assert cli("kernel", "list", "--no-check").exit_code == 0

    r = cli("kernel", "edit", "two", "--python", PY, "--display-name", "Two", "--json")
    assert r.exit_code == 0, r.stderr
    assert r.json()["python"] == PY and r.json()["display_name"] == "Two"
    assert cli("kernel", "list").exit_code == 0

    r = cli("kernel", "delete", "two")
    assert r.exit_code == 0 and not _spec_file(kenv, "two").exists()
    assert cli("kernel", "delete", "two").exit_code == 10
    assert cli("kernel", "edit", "nope", "--host", "rk").exit_code == 10


@pytest.mark.timeout(90)
def test_ps_and_attach_by_name(kenv, cli, tether_bin, tmp_path):
    from jupyter_client import BlockingKernelClient
    from jupyter_client.manager import KernelManager

    kenv.spec("rk", lifetime="grace", grace_s=30)
    km = KernelManager(kernel_name="tether-rk")
    km.kernel_spec.metadata["kernel_provisioner"]["config"]["on_link_drop"] = "report"
    km.start_kernel()
    attach = None
    try:
        r = cli("kernel", "ps", "rk", "--json")
        assert r.exit_code == 0
        [running] = r.json()["kernels"]
        assert running["kernel_id"] == km.kernel_id and running["alive"] is True
        km.provisioner.link.proc.kill()  # drop the link: the kernel waits for an attach
        km.provisioner.link.proc.wait(5)
        conn_file = tmp_path / "c.json"
        attach = subprocess.Popen([tether_bin, "kernel", "attach", "rk", "--connection-file",
                                   str(conn_file)], stdout=subprocess.PIPE, text=True,
                                  stderr=subprocess.PIPE)
        assert "attached to kernel " + km.kernel_id in attach.stdout.readline()
        kc = BlockingKernelClient(connection_file=str(conn_file))
        kc.load_connection_file()
        kc.start_channels()
        kc.wait_for_ready(timeout=30)
        kc.shutdown()
        kc.stop_channels()
        assert attach.wait(15) == 0
    finally:
        if attach is not None and attach.poll() is None:
            attach.kill()
        km.shutdown_kernel(now=True)
    assert wait_gone(kenv.procs) == {}
    r = cli("kernel", "attach", "rk")
    assert r.exit_code == 10 and "no attachable kernel" in r.stderr


def test_grace_period_ends_an_abandoned_kernel(kenv):
    from jupyter_client.manager import KernelManager

    kenv.spec("rk", lifetime="grace", grace_s=1)
    km = KernelManager(kernel_name="tether-rk")
    km.kernel_spec.metadata["kernel_provisioner"]["config"]["on_link_drop"] = "report"
    km.start_kernel()
    try:
        km.provisioner.link.proc.kill()
        t0 = time.monotonic()
        assert wait_gone(kenv.procs, timeout=15) == {}
        assert time.monotonic() - t0 >= 0.5  # it did wait for a re-attach first
    finally:
        km.shutdown_kernel(now=True)


_BROKEN = {
    "not-json": "{ not json",
    "not-an-object": "[]",
    "metadata-not-an-object": '{"metadata": "x"}',
    "unknown-version": json.dumps({"argv": [], "metadata": {
        "tether": {"v": 99, "name": "bad"},
        "kernel_provisioner": {"provisioner_name": "tether-ssh-provisioner"}}}),
    "no-kernel-json": None,
}


@pytest.mark.parametrize("case", list(_BROKEN))
def test_a_broken_kernelspec_gets_a_hint_and_delete_removes_it(kenv, cli, case):
    folder = kenv.data_dir / "kernels" / "tether-bad"
    folder.mkdir(parents=True)
    if _BROKEN[case] is not None:
        (folder / "kernel.json").write_text(_BROKEN[case])
    kenv.spec("good")  # listed as usual beside the broken one
    for args in (("edit", "bad", "--host", "rk", "--no-check"), ("ps", "bad"),
                 ("attach", "bad")):
        r = cli("kernel", *args)
        assert r.exit_code == 2, r.stderr
        error, hint = r.stderr.splitlines()[:2]
        assert error.startswith("error: the kernelspec of kernel 'bad' is broken: "), error
        assert hint.startswith("hint: ") and "`tether kernel delete bad`" in hint
        assert "Traceback" not in r.stderr
    r = cli("kernel", "list", "--no-check", "--json")
    assert r.exit_code == 0 and [k["name"] for k in r.json()["kernels"]] == ["good"]
    assert "kernel bad is not listed" in r.stderr and "tether kernel delete bad" in r.stderr
    r = cli("kernel", "delete", "bad", "--json")
    assert r.exit_code == 0, r.stderr
    assert not folder.exists() and _spec_file(kenv, "good").exists()
    assert cli("kernel", "delete", "bad").exit_code == 10


def test_delete_refuses_a_kernelspec_tether_did_not_write(kenv, cli):
    folder = kenv.data_dir / "kernels" / "tether-other"
    folder.mkdir(parents=True)
    (folder / "kernel.json").write_text(json.dumps(
        {"argv": [PY, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
         "display_name": "someone else's", "language": "python"}))
    for args in (("delete", "other"), ("ps", "other")):
        r = cli("kernel", *args)
        assert r.exit_code == 2, r.stderr
        assert "hint: " in r.stderr and "jupyter kernelspec remove tether-other" in r.stderr
    assert (folder / "kernel.json").exists()
    r = cli("kernel", "list", "--no-check")
    assert r.exit_code == 0 and "other" not in r.stderr  # not ours: passed over quietly


def test_delete_never_leaves_the_kernels_dir(kenv, cli):
    (kenv.data_dir / "kernels" / "tether-a").mkdir(parents=True)
    victim = kenv.data_dir / "victim"
    victim.mkdir()
    r = cli("kernel", "delete", "a/../../victim")
    assert r.exit_code == 10 and "no tether kernel named" in r.stderr
    assert victim.is_dir()
