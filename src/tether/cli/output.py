"""One object every command renders through, so `--json` works the same everywhere.

Results go to stdout: a JSON document with ``--json``, human text otherwise. Progress,
notices and warnings go to stderr, so ``tether x --json | jq`` always gets clean JSON.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any

import typer

JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

_current: contextvars.ContextVar[Output | None] = contextvars.ContextVar("tether_output",
                                                                        default=None)


def current() -> Output | None:
    """The Output of the running command (the error handler uses it to pick JSON or text)."""
    return _current.get()


class ProgressBar:
    """What :meth:`Output.progress` yields: ``bar(n)`` advances it; the total and the
    description can be set once the library learns them (a status line off a terminal)."""

    def __init__(self, out: Output, prog: Any = None, task: Any = None) -> None:
        self.out, self.prog, self.task = out, prog, task

    def __call__(self, n: float) -> None:
        if self.prog is not None:
            self.prog.advance(self.task, n)

    advance = __call__

    def total(self, n: float) -> None:
        if self.prog is not None:
            self.prog.update(self.task, total=n)

    def status(self, text: str) -> None:
        if self.prog is not None:
            self.prog.update(self.task, description=text)
        else:
            self.out.info(text)  # off a terminal: one line each (none with --json)


class Output:
    def __init__(self, json_mode: bool = False) -> None:
        self.json_mode = json_mode
        _current.set(self)
        self._out = None
        self._err = None

    # Rich consoles are made on first use: many commands never print rich text.
    @property
    def out(self):
        if self._out is None:
            from rich.console import Console

            self._out = Console(soft_wrap=True, highlight=False)
        return self._out

    @property
    def err(self):
        if self._err is None:
            from rich.console import Console

            self._err = Console(stderr=True, soft_wrap=True, highlight=False)
        return self._err

    def result(self, data: Any, human: Callable[[Output], None] | str | None = None) -> None:
        """Emit the command's result: ``data`` as JSON, or ``human`` (text or a renderer)."""
        if self.json_mode:
            sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
            sys.stdout.flush()
        elif callable(human):
            human(self)
        elif human is not None:
            self.out.print(human, markup=False)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]],
              title: str | None = None) -> None:
        from rich.table import Table

        table = Table(title=title, show_edge=False, pad_edge=False, box=None,
                      header_style="bold")
        for col in columns:
            table.add_column(col)
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        self.out.print(table)

    def info(self, message: str) -> None:
        """A notice for people; silent in JSON mode."""
        if not self.json_mode:
            self.err.print(message, markup=False)

    def warn(self, message: str) -> None:
        """A warning; shown in JSON mode too (on stderr), since it may matter to the caller."""
        self.err.print(f"warning: {message}", markup=False, style="yellow")

    @contextlib.contextmanager
    def progress(self, description: str, total: float | None = None,
                 unit: str = "bytes") -> Iterator[ProgressBar]:
        """A Rich progress bar on stderr; yields a :class:`ProgressBar` (call it with a count
        to advance). Hidden in JSON mode or off a tty."""
        if self.json_mode or not self.err.is_terminal:
            yield ProgressBar(self)
            return
        from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress,
                                   TextColumn, TimeRemainingColumn, TransferSpeedColumn)

        cols: list[Any] = [TextColumn("{task.description}"), BarColumn()]
        if unit == "bytes":
            cols += [DownloadColumn(), TransferSpeedColumn()]
        else:
            cols += [MofNCompleteColumn()]
        cols.append(TimeRemainingColumn())
        with Progress(*cols, console=self.err, transient=True) as prog:
            yield ProgressBar(self, prog, prog.add_task(description, total=total))
