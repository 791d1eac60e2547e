"""The `tether` command line: a thin layer over the Python API (see tether.cli.main)."""
