"""Parsing of store options that arrive as strings from a URL query (pure)."""

from __future__ import annotations

from tether.errors import UsageError


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
