"""`tether keys ...`: SSH keys, tether's blocks in ~/.ssh/config, and resets."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer(help="SSH keys in ~/.ssh and tether's blocks in ~/.ssh/config.",
                  add_completion=False,
                  no_args_is_help=True)
config_app = typer.Typer(help="tether-managed Host blocks in ~/.ssh/config.",
                         no_args_is_help=True)
app.add_typer(config_app, name="config")

PASSPHRASE_ENV = "TETHER_KEY_PASSPHRASE"
DirOption = Annotated[Optional[Path], typer.Option(
    "--dir", help="Key directory (default ~/.ssh).", show_default=False)]
ConfigOption = Annotated[Optional[Path], typer.Option(
    "--config", help="ssh config file (default ~/.ssh/config).", show_default=False)]


def _passphrase(file: Path | None, ask: bool) -> str | None:
    """File, then $TETHER_KEY_PASSPHRASE, then a prompt (on a terminal or when asked)."""
    from tether.secrets import SecretSource, read_secret

    if file is not None:
        return read_secret(SecretSource("key passphrase", file=file))
    if os.environ.get(PASSPHRASE_ENV):
        return os.environ[PASSPHRASE_ENV]
    if ask:
        return read_secret(SecretSource("key passphrase", env=PASSPHRASE_ENV))
    if sys.stdin is not None and sys.stdin.isatty():
        import getpass

        first = getpass.getpass("key passphrase (empty for none): ")
        if first and getpass.getpass("same passphrase again: ") != first:
            from tether.errors import UsageError

            raise UsageError("the passphrases differ", "run the command again")
        return first or None
    return None


def _table(o: Output, columns: list[str], rows: list, whole: tuple[str, ...] = ()) -> None:
    """A table whose ``whole`` columns (fingerprints, paths) are never cut to fit the width."""
    from rich.table import Table

    table = Table(show_edge=False, pad_edge=False, box=None, header_style="bold")
    for col in columns:
        width = max([len(col)] + [len(str(r[columns.index(col)])) for r in rows])
        table.add_column(col, min_width=width if col in whole else None,
                         no_wrap=col in whole)
    for row in rows:
        table.add_row(*("" if v is None else str(v) for v in row))
    o.out.print(table)


def _key_row(k) -> list:
    return [k.name, k.type, k.bits, k.fingerprint, k.comment, "yes" if k.encrypted else "no"]


_KEY_COLUMNS = ["name", "type", "bits", "fingerprint", "comment", "encrypted"]


@app.command()
def generate(
    name: Annotated[str, typer.Argument(help="File name in ~/.ssh, e.g. id_ed25519.")],
    type: Annotated[str, typer.Option("--type", "-t", help="ed25519, rsa or ecdsa.")]
    = "ed25519",
    bits: Annotated[Optional[int], typer.Option(
        "--bits", "-b", help="rsa: 2048/3072/4096; ecdsa: 256/384/521.", show_default=False)]
    = None,
    comment: Annotated[Optional[str], typer.Option(
        "--comment", "-C", help="Comment (default user@host).", show_default=False)] = None,
    passphrase_file: Annotated[Optional[Path], typer.Option(
        "--passphrase-file", help="Read the passphrase from this file ('-' for stdin).",
        show_default=False)] = None,
    ask_passphrase: Annotated[bool, typer.Option(
        "--ask-passphrase", help="Prompt for a passphrase (needs a terminal).")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing key.")]
    = False,
    directory: DirOption = None,
    json: JsonOption = False,
) -> None:
    """Generate a key pair (passphrase: --passphrase-file, $TETHER_KEY_PASSPHRASE or prompt)."""
    from tether.ssh.keys import check_new_key, generate_key

    out = Output(json)
    # Bad input (and an existing key) fails before any passphrase prompt.
    check_new_key(name, type=type, bits=bits, comment=comment, directory=directory,
                  overwrite=overwrite)
    info = generate_key(name, type=type, bits=bits, comment=comment,
                        passphrase=_passphrase(passphrase_file, ask_passphrase),
                        directory=directory, overwrite=overwrite)
    out.result(info.to_dict(), f"generated {info.type} {info.bits} key {info.path}\n"
               f"fingerprint {info.fingerprint}\npublic key  {info.public_path}")


@app.command("list")
def list_(directory: DirOption = None, json: JsonOption = False) -> None:
    """List key pairs: name, type, bits, SHA256 fingerprint, comment, encrypted."""
    from tether.ssh.keys import list_keys

    out = Output(json)
    keys = list_keys(directory)

    def human(o: Output) -> None:
        if not keys:
            o.out.print("no keys (create one: tether keys generate id_ed25519)", markup=False)
        else:
            _table(o, _KEY_COLUMNS, [_key_row(k) for k in keys],
                   whole=(*_KEY_COLUMNS[:4], "encrypted"))

    out.result([k.to_dict() for k in keys], human)


@app.command()
def show(name: str, directory: DirOption = None, json: JsonOption = False) -> None:
    """Print the public key, ready to paste."""
    from tether.ssh.keys import get_key

    out = Output(json)
    info = get_key(name, directory)
    line = info.public_path.read_text().strip()
    out.result(info.to_dict() | {"public_key": line}, line)


@app.command()
def delete(
    name: str,
    force: Annotated[bool, typer.Option("--force", help="Delete even if the ssh config uses it.")]
    = False,
    directory: DirOption = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Delete both files of a key (refused while the ssh config names it, unless --force)."""
    from tether.ssh.keys import delete_key, get_key

    out = Output(json)
    info = get_key(name, directory)
    delete_key(name, force=force, directory=directory, config_path=config)
    out.result({"deleted": name, "path": str(info.path)}, f"deleted {info.path} and .pub")


@app.command()
def reset(
    ssh_config: Annotated[bool, typer.Option("--ssh-config", help="Empty ~/.ssh/config.")]
    = False,
    known_hosts: Annotated[bool, typer.Option("--known-hosts",
                                              help="Empty ~/.ssh/known_hosts.")] = False,
    managed_only: Annotated[bool, typer.Option(
        "--managed-only", help="Remove only what tether wrote: its blocks in the ssh config, "
        "its pins (lines marked tether-pin) in known_hosts.")] = False,
    config: ConfigOption = None,
    known_hosts_file: Annotated[Optional[Path], typer.Option(
        "--known-hosts-file", help="known_hosts file (default ~/.ssh/known_hosts).",
        show_default=False)] = None,
    json: JsonOption = False,
) -> None:
    """Reset the ssh config and/or known_hosts; each keeps a timestamped backup."""
    from tether.errors import UsageError
    from tether.ssh.config import reset_config
    from tether.ssh.known_hosts import reset_known_hosts

    out = Output(json)
    if not (ssh_config or known_hosts):
        raise UsageError("say what to reset", "pass --ssh-config and/or --known-hosts")
    result: dict = {}
    if ssh_config:
        backup = reset_config(config, managed_only=managed_only)
        result["ssh_config"] = {"backup": str(backup) if backup else None,
                                "managed_only": managed_only}
    if known_hosts:
        backup = reset_known_hosts(known_hosts_file, managed_only=managed_only)
        result["known_hosts"] = {"backup": str(backup) if backup else None,
                                 "managed_only": managed_only}

    def human(o: Output) -> None:
        for what, info in result.items():
            backup = info["backup"]
            only = ", tether's entries only" if info["managed_only"] else ""
            o.out.print(f"reset {what.replace('_', ' ')}{only}" +
                        (f" (backup: {backup})" if backup else " (there was no file)"),
                        markup=False)

    out.result(result, human)


# -- tether keys config ... ------------------------------------------------------------------


@config_app.command("add")
def config_add(
    name: Annotated[str, typer.Argument(help="Block id, e.g. laptop.")],
    host: Annotated[str, typer.Option("--host", help="Host pattern users type (alias).")],
    hostname: Annotated[Optional[str], typer.Option("--hostname", show_default=False)] = None,
    user: Annotated[Optional[str], typer.Option("--user", show_default=False)] = None,
    port: Annotated[Optional[int], typer.Option("--port", show_default=False)] = None,
    identity: Annotated[Optional[str], typer.Option(
        "--identity", help="Key name in ~/.ssh or a path.", show_default=False)] = None,
    option: Annotated[Optional[list[str]], typer.Option(
        "--option", "-o", help="Extra Key=Value (repeatable).", show_default=False)] = None,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Add or update a managed Host block (bytes outside it are kept; backup in config.bak)."""
    from tether.errors import UsageError
    from tether.ssh.config import ManagedBlock, config_path, upsert_block
    from tether.ssh.keys import resolve_key_path

    out = Output(json)
    options: list[tuple[str, str]] = []
    if hostname:
        options.append(("HostName", hostname))
    if user:
        options.append(("User", user))
    if port is not None:
        if not 0 < port < 65536:
            raise UsageError(f"port {port} is out of range", "give a port from 1 to 65535")
        options.append(("Port", str(port)))
    if identity:
        options += [("IdentityFile", str(resolve_key_path(identity))), ("IdentitiesOnly", "yes")]
    for item in option or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UsageError(f"--option {item!r} is not Key=Value",
                             "write it as -o Key=Value, e.g. -o ServerAliveInterval=30")
        options.append((key.strip(), value.strip()))
    block = ManagedBlock(name, host, tuple(options))
    backup = upsert_block(block, config)
    path = config or config_path()
    out.result(block.to_dict() | {"config": str(path), "backup": str(backup) if backup else None},
               f"block {name} (Host {host}) written to {path}" +
               (f"; backup {backup}" if backup else ""))


@config_app.command("remove")
def config_remove(name: str, config: ConfigOption = None, json: JsonOption = False) -> None:
    """Remove a managed block (the rest of the file is untouched)."""
    from tether.errors import NotFoundError
    from tether.ssh.config import remove_block

    out = Output(json)
    if not remove_block(name, config):
        raise NotFoundError(f"no tether block named {name!r} in the ssh config",
                            "see `tether keys config list`")
    out.result({"removed": name}, f"removed block {name}")


@config_app.command("list")
def config_list(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List tether's blocks in the ssh config."""
    from tether.ssh.config import list_blocks

    out = Output(json)
    blocks = list_blocks(config)

    def human(o: Output) -> None:
        if not blocks:
            o.out.print("no tether blocks in the ssh config", markup=False)
            return
        o.table(["name", "host", "options"],
                [(b.name, b.host, ", ".join(f"{k}={v}" for k, v in b.options)) for b in blocks])

    out.result([b.to_dict() for b in blocks], human)
