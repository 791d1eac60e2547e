"""`tether agents`: installed AI coding agents and whether their API keys are set."""

from __future__ import annotations

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer(help="List installed AI coding agents.")


@app.command()
def agents(json: JsonOption = False) -> None:
    """Show claude, codex, gemini, opencode and aider: installed? key set? (never the key)."""
    from tether.sandbox.agents import detect_agents, key_summary

    out = Output(json)
    found = detect_agents()
    keys = key_summary()

    def human(o: Output) -> None:
        o.table(["agent", "installed", "version", "keys", "ready"],
                [(a.name, a.path or "no", a.version or "-",
                  ", ".join(f"{var} {'set' if ok else 'unset'}" for var, ok in a.keys),
                  "yes" if a.ready else "no") for a in found])

    out.result({"agents": [a.to_json() for a in found], "keys": keys}, human)
