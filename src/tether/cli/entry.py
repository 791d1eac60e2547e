"""The `tether` console script: the exec fast path first, then the full CLI.

Importing Typer and building the command tree costs ~30-60 ms, a large share of a
`tether exec NAME -- true` that goals put under 150 ms; so `exec` is parsed here without
them (:mod:`tether.cli.exec_fast`), `agent sync ROOT` (the remote end of every `tether sync`)
goes straight to the agent, and every other command goes to :func:`tether.cli.main.main`.
"""

from __future__ import annotations

import sys


def main() -> None:
    if sys.argv[1:3] == ["agent", "sync"] and len(sys.argv) == 4 \
            and not sys.argv[3].startswith("-"):
        # The remote half of every `tether sync` starts here: Typer would add ~0.1 s to
        # each session's start.
        from tether.sync.agent import main as agent_main

        sys.exit(agent_main(sys.argv[3]))
    if sys.argv[1:2] == ["exec"]:
        from tether.errors import TetherError

        try:
            from tether.cli.exec_fast import fast_main

            code = fast_main(sys.argv[2:])
        except TetherError as exc:
            from tether.cli.main import _debug, report_error

            if _debug():
                raise
            sys.exit(report_error(exc))
        except KeyboardInterrupt:
            sys.stderr.write("interrupted\n")
            sys.exit(130)
        except BrokenPipeError:  # `tether exec h -- yes | head -1`: the reader left
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(1)
        if code is not None:
            _exit_now(code)
    from tether.cli.main import main as full_main

    full_main()


def _exit_now(code: int) -> None:
    """Exit without the interpreter's finalization (~10 ms with site's modules loaded): the
    fast path has nothing to clean up once its output is flushed."""
    import os

    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        pass  # the reader left; everything the command printed went out unbuffered anyway
    os._exit(code)


if __name__ == "__main__":
    main()
