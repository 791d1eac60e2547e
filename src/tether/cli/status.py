"""`tether status NAME [--json]`: reachability, round trip, uptime, disk, GPUs."""

from __future__ import annotations

from typing import Annotated

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer(add_completion=False)


def _size(n: int | None) -> str:
    if n is None:
        return "?"
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _duration(s: float | None) -> str:
    if s is None:
        return "?"
    days, rest = divmod(int(s), 86400)
    hours, rest = divmod(rest, 3600)
    return (f"{days}d " if days else "") + f"{hours}h {rest // 60}m"


@app.command(help="Show whether host NAME answers, its round trip, uptime, workspace disk "
                  "and GPUs (exit 1 when unreachable).")
def status(name: Annotated[str, typer.Argument(help="Host name (see `tether hosts`).")],
           json_mode: JsonOption = False) -> None:
    from tether.link.daemon_client import status_cli

    out = Output(json_mode)
    st = status_cli(name)  # through the link daemon's warm connection

    def human(o: Output) -> None:
        if not st.reachable:
            o.out.print(f"{name}: unreachable ({st.error})", markup=False)
            return
        rows = [("reachable", "yes"), ("round trip", f"{st.rtt_ms:.1f} ms"),
                ("uptime", _duration(st.uptime_s)), ("system", st.system or "?"),
                ("workspace", st.workspace or "?"),
                ("disk", f"{_size(st.disk_used_bytes)} used, {_size(st.disk_free_bytes)} free"
                         f" of {_size(st.disk_total_bytes)}")]
        for g in st.gpus:
            rows.append(("gpu", f"{g.name}: {g.memory_used_mb}/{g.memory_total_mb} MiB, "
                                f"{g.utilization_pct}%"))
        if not st.gpus:
            rows.append(("gpus", "none"))
        o.table(["", name], rows)

    out.result(st.to_dict(), human)
    if not st.reachable:
        raise typer.Exit(1)
