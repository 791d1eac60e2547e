"""jupyter_kernel_test against TetherSSHProvisioner through the real sshd, and nbclient
running a notebook on the remote kernel."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from kernel_helpers import wait_gone

HERE = Path(__file__).parent


@pytest.mark.timeout(120)
def test_jupyter_kernel_test_suite_passes_through_the_provisioner(kenv):
    kenv.spec("rk", interrupt_mode="message")
    env = dict(os.environ, TETHER_CONFORMANCE_KERNEL="tether-rk")
    proc = subprocess.run([sys.executable, "-m", "unittest", "-v", "_conformance_suite"],
                          cwd=HERE, env=env, capture_output=True, text=True, timeout=110)
    report = proc.stderr
    ran = re.search(r"Ran (\d+) tests?", report)
    assert proc.returncode == 0, report[-3000:]
    # the only skip is the history "range" sub-test upstream disables for ipykernel too
    assert report.rstrip().splitlines()[-1] == "OK (skipped=1)", report[-3000:]
    assert report.count("skipped 'History range not supported'") == 1
    assert ran and int(ran.group(1)) >= 12, report[-3000:]
    assert wait_gone(kenv.procs) == {}


@pytest.mark.timeout(90)
def test_nbclient_executes_a_notebook_remotely(kenv):
    from nbclient import NotebookClient

    kenv.spec("rk")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("import os\nvalues = [i * i for i in range(5)]"),
        nbformat.v4.new_code_cell("print(sum(values), os.environ['TETHER_KERNEL_ID'] != '')"),
        nbformat.v4.new_code_cell("values[-1]"),
    ]
    nb.metadata["kernelspec"] = {"name": "tether-rk", "display_name": "rk",
                                 "language": "python"}
    NotebookClient(nb, kernel_name="tether-rk", timeout=30, startup_timeout=60).execute()
    assert nb.cells[1].outputs[0]["text"] == "30 True\n"
    assert nb.cells[2].outputs[0]["data"]["text/plain"] == "16"
    assert wait_gone(kenv.procs) == {}
