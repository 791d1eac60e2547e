"""Parsing of store options that arrive as strings from a URL query (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from urllib.parse import parse_qs

from tether.errors import UsageError


def query_options(kind: str, query: str, known: set[str]) -> dict[str, str]:
    """A URL query string as options (the last value of a repeated name wins); ``UsageError``
    for a name not in ``known``. ``kind`` names the store in the message ("s3")."""
    options: dict[str, str] = {}
    for name, values in parse_qs(query, keep_blank_values=True).items():
        if name not in known:
            raise UsageError(f"unknown {kind} store option {name!r}",
                             f"known: {', '.join(sorted(known))}")
        options[name] = values[-1]
    return options


def merge_options(kind: str, query: Mapping[str, str], options: Mapping[str, object],
                  known: set[str]) -> dict[str, object]:
    """The URL's ``query`` options overridden by keyword ``options`` (None means "not given");
    ``UsageError`` for a keyword not in ``known``."""
    unknown = set(options) - known
    if unknown:
        raise UsageError(f"unknown {kind} store option(s): {', '.join(sorted(unknown))}",
                         f"known: {', '.join(sorted(known))}")
    return {**query, **{k: v for k, v in options.items() if v is not None}}


def number_option(name: str, value: float | str, *, minimum: float,
                  kind: type = int) -> int | float:
    """``value`` as ``kind`` (int or float), at least ``minimum``; ``UsageError`` otherwise."""
    try:
        number = kind(value)
    except (TypeError, ValueError):
        raise UsageError(f"store option {name}={value!r} is not a number",
                         f"give {name} as a {'whole ' if kind is int else ''}number") from None
    if number < minimum:
        raise UsageError(f"store option {name}={value!r} is below {minimum:g}")
    return number


def shown_url(url: str) -> str:
    """``url`` as it may appear in a message: without its query, where a mistaken secret
    (``?secret_key=...``) would otherwise be echoed to the terminal and logs."""
    return url.split("?", 1)[0].split("#", 1)[0]
