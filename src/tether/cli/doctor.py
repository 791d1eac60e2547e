"""`tether doctor`."""

from __future__ import annotations

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer()


@app.command()
def doctor(json: JsonOption = False) -> None:
    """Check the system parts tether needs and print how to install what is missing."""
    from tether.doctor import CheckStatus, run_checks

    out = Output(json)
    report = run_checks()

    def human(o: Output) -> None:
        o.out.print(f"platform: {report.platform}")
        marks = {CheckStatus.OK: "ok", CheckStatus.MISSING: "MISSING", CheckStatus.WARN: "warn"}
        o.table(["check", "status", "detail"],
                [(c.name, marks[c.status], c.detail) for c in report.checks])
        fixes = [c for c in report.checks if c.status is not CheckStatus.OK and c.fix]
        if fixes:
            o.out.print("\nto fix:")
            for c in fixes:
                o.out.print(f"  {c.name}: {c.fix}", markup=False)
        for note in report.notes:
            o.out.print(f"\nnote: {note}", markup=False)

    out.result(report.to_dict(), human)
    if not report.ok:
        raise typer.Exit(1)
