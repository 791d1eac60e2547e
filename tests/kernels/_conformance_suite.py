"""The community kernel conformance suite (jupyter_kernel_test) for a tether kernelspec.

Run by test_kernel_conformance.py in a child process (``python -m unittest``) with
TETHER_CONFORMANCE_KERNEL naming the kernelspec and the Jupyter/ssh env pointing at the test
fixtures; the sample values are ipykernel's, as in jupyter_kernel_test's own suite.
"""

import os
import unittest

import jupyter_kernel_test as jkt


class RemoteIPyKernelTests(jkt.KernelTests):
    kernel_name = os.environ.get("TETHER_CONFORMANCE_KERNEL", "tether-rk")
    language_name = "python"
    file_extension = ".py"
    code_hello_world = "print('hello, world')"
    code_stderr = "import sys; print('test', file=sys.stderr)"
    completion_samples = [{"text": "zi", "matches": {"zip"}}]
    complete_code_samples = ["1", "print('hello, world')", "def f(x):\n  return x*2\n\n\n"]
    incomplete_code_samples = ["print('''hello", "def f(x):\n  x*2"]
    invalid_code_samples = ["import = 7q"]
    code_page_something = "zip?"
    code_generate_error = "raise"
    code_execute_result = [{"code": "1+2+3", "result": "6"},
                           {"code": "[n*n for n in range(1, 4)]", "result": "[1, 4, 9]"}]
    code_display_data = [
        {"code": "from IPython.display import HTML, display; display(HTML('<b>test</b>'))",
         "mime": "text/html"},
        {"code": "from IPython.display import Math, display; display(Math('\\\\frac{1}{2}'))",
         "mime": "text/latex"},
    ]
    code_history_pattern = "1?2*"
    # as upstream's own ipykernel configuration: ipykernel answers a "range" query with the
    # session number 0 for the current session, which the suite's check does not expect
    supported_history_operations = ("tail", "search")
    code_inspect_sample = "zip"
    code_clear_output = "from IPython.display import clear_output; clear_output()"


if __name__ == "__main__":
    unittest.main()
