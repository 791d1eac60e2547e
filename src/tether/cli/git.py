"""`tether git ...`: git identity and GitHub / GitLab / Bitbucket accounts, keys and SSH."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from tether.cli.output import JsonOption, Output

app = typer.Typer(help="Git identity, and SSH access to GitHub, GitLab and Bitbucket.",
                  add_completion=False,
                  no_args_is_help=True)
keys_app = typer.Typer(help="SSH keys registered on a forge account.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")

ProviderArg = Annotated[str, typer.Argument(help="github, gitlab or bitbucket.")]
BaseUrlOption = Annotated[Optional[str], typer.Option(
    "--base-url", help="API root (GitHub Enterprise: https://HOST/api/v3) or GitLab instance "
    "URL; default from login or the public service.", show_default=False)]
SshHostOption = Annotated[Optional[str], typer.Option(
    "--ssh-host", help="Connect to this host instead (HostName).", show_default=False)]
SshPortOption = Annotated[Optional[int], typer.Option("--ssh-port", show_default=False)]
SshUserOption = Annotated[Optional[str], typer.Option(
    "--ssh-user", help="SSH login user (default: the config block's, else git).",
    show_default=False)]
KnownHostsOption = Annotated[Optional[Path], typer.Option(
    "--known-hosts", help="known_hosts file to pin to and check against (default "
    "~/.ssh/known_hosts).", show_default=False)]


def _provider(name: str):
    from tether.forges.base import parse_provider

    return parse_provider(name)


def _target(provider, base_url, ssh_host, ssh_port, ssh_user, known_hosts):
    from tether.forges.accounts import resolve_base_url
    from tether.forges.setup import default_target

    return default_target(provider, resolve_base_url(provider, base_url),
                          ssh_host=ssh_host, ssh_port=ssh_port, ssh_user=ssh_user,
                          known_hosts=known_hosts)


@app.command()
def identity(
    name: Annotated[str, typer.Option("--name", help="user.name")],
    email: Annotated[str, typer.Option("--email", help="user.email")],
    scope: Annotated[str, typer.Option("--scope", help="global or local (this repository).")]
    = "global",
    json: JsonOption = False,
) -> None:
    """Set git's user.name and user.email."""
    from tether.errors import UsageError
    from tether.git_identity import GitScope, set_git_identity

    out = Output(json)
    try:
        git_scope = GitScope(scope)
    except ValueError:
        raise UsageError(f"unknown scope {scope!r}", "use global or local") from None
    result = set_git_identity(name, email, scope=git_scope)
    out.result(result, f"git {result['scope']} identity: {result['name']} <{result['email']}>")


@app.command()
def login(
    provider: ProviderArg,
    token_file: Annotated[Optional[Path], typer.Option(
        "--token-file", help="Read the token from this file ('-' for stdin).",
        show_default=False)] = None,
    email: Annotated[Optional[str], typer.Option(
        "--email", help="Bitbucket: your Atlassian account email.", show_default=False)] = None,
    base_url: BaseUrlOption = None,
    json: JsonOption = False,
) -> None:
    """Check a token and store it (token: --token-file, $GITHUB_TOKEN/... or a prompt)."""
    from tether.forges.accounts import BITBUCKET_EMAIL_ENV, login as do_login
    from tether.forges.base import SPECS, Provider
    from tether.secrets import SecretSource, read_secret

    out = Output(json)
    p = _provider(provider)
    spec = SPECS[p]
    if p is Provider.BITBUCKET and not email:
        import os

        email = os.environ.get(BITBUCKET_EMAIL_ENV)
        if not email and sys.stdin is not None and sys.stdin.isatty():
            email = input("Atlassian account email: ").strip()
    what = "API token" if p is Provider.BITBUCKET else "token"
    token = read_secret(SecretSource(f"{spec.display} {what}", file=token_file,
                                     env=spec.token_env))
    user = do_login(p, token, email=email, base_url=base_url)
    out.result({"provider": p.value, **user.to_dict()},
               f"logged in to {spec.display} as {user.login}"
               + (f" ({user.name})" if user.name else ""))


@app.command()
def logout(provider: ProviderArg, json: JsonOption = False) -> None:
    """Forget the stored token."""
    from tether.forges.accounts import logout as do_logout

    out = Output(json)
    p = _provider(provider)
    removed = do_logout(p)
    out.result({"provider": p.value, "logged_out": removed},
               f"logged out of {p.value}" if removed else f"was not logged in to {p.value}")


@app.command()
def whoami(provider: ProviderArg, base_url: BaseUrlOption = None,
           json: JsonOption = False) -> None:
    """Show the account the token belongs to."""
    from tether.forges.accounts import whoami as do_whoami

    out = Output(json)
    p = _provider(provider)
    user = do_whoami(p, base_url)
    out.result({"provider": p.value, **user.to_dict()},
               f"{user.login}" + (f" ({user.name})" if user.name else "") + f" on {p.value}")


@keys_app.command("add")
def keys_add(
    provider: ProviderArg,
    title: Annotated[str, typer.Option("--title", help="Label shown on the forge.")],
    key: Annotated[str, typer.Option("--key", help="Key name in ~/.ssh or a path.")]
    = "id_ed25519",
    base_url: BaseUrlOption = None,
    json: JsonOption = False,
) -> None:
    """Register a public key on the forge account."""
    from tether.forges.accounts import add_remote_key

    out = Output(json)
    p = _provider(provider)
    added = add_remote_key(p, key, title, base_url)
    out.result({"provider": p.value, **added.to_dict()},
               f"added {added.title!r} (id {added.id}, {added.fingerprint}) to {p.value}")


@keys_app.command("list")
def keys_list(provider: ProviderArg, base_url: BaseUrlOption = None,
              json: JsonOption = False) -> None:
    """List the SSH keys registered on the forge account."""
    from tether.forges.accounts import list_remote_keys

    out = Output(json)
    p = _provider(provider)
    keys = list_remote_keys(p, base_url)

    def human(o: Output) -> None:
        if not keys:
            o.out.print(f"no SSH keys on your {p.value} account", markup=False)
        else:
            o.table(["id", "title", "fingerprint", "created"],
                    [(k.id, k.title, k.fingerprint, k.created_at) for k in keys])

    out.result([k.to_dict() for k in keys], human)


@keys_app.command("delete")
def keys_delete(provider: ProviderArg, key_id: Annotated[str, typer.Argument(metavar="ID")],
                base_url: BaseUrlOption = None, json: JsonOption = False) -> None:
    """Remove a key from the forge account (ID from `tether git keys list`)."""
    from tether.forges.accounts import delete_remote_key

    out = Output(json)
    p = _provider(provider)
    delete_remote_key(p, key_id, base_url)
    out.result({"provider": p.value, "deleted": key_id}, f"deleted key {key_id} from {p.value}")


@app.command("test")
def test_(
    provider: ProviderArg,
    key: Annotated[Optional[str], typer.Option(
        "--key", help="Key name or path (default: the config block's).", show_default=False)]
    = None,
    ssh_host: SshHostOption = None,
    ssh_port: SshPortOption = None,
    ssh_user: SshUserOption = None,
    known_hosts: KnownHostsOption = None,
    base_url: BaseUrlOption = None,
    json: JsonOption = False,
) -> None:
    """`ssh -T git@HOST`: check that the forge accepts your key."""
    from tether.forges.setup import test_connection
    from tether.ssh.keys import resolve_key_path

    out = Output(json)
    p = _provider(provider)
    target = _target(p, base_url, ssh_host, ssh_port, ssh_user, known_hosts)
    identity_path = resolve_key_path(key) if key else None
    result = test_connection(target, identity=identity_path)
    out.result({"provider": p.value, **result.to_dict()},
               f"ok: {result.message}")


@app.command()
def setup(
    provider: ProviderArg,
    key: Annotated[str, typer.Option("--key", help="Key name in ~/.ssh (made if missing).")]
    = "id_ed25519",
    title: Annotated[Optional[str], typer.Option(
        "--title", help="Label on the forge (default tether@HOSTNAME).", show_default=False)]
    = None,
    base_url: BaseUrlOption = None,
    ssh_host: SshHostOption = None,
    ssh_port: SshPortOption = None,
    ssh_user: SshUserOption = None,
    known_hosts: KnownHostsOption = None,
    no_test: Annotated[bool, typer.Option("--no-test", help="Skip the ssh -T check.")] = False,
    json: JsonOption = False,
) -> None:
    """All in one: key if missing, host key pin, config block, upload, test, next steps."""
    from tether.forges.setup import setup as do_setup

    out = Output(json)
    p = _provider(provider)
    target = _target(p, base_url, ssh_host, ssh_port, ssh_user, known_hosts)
    report = do_setup(p, key_name=key, title=title, base_url=base_url, target=target,
                      run_test=not no_test)

    def human(o: Output) -> None:
        o.table(["step", "status", "detail"], [(s.name, s.status, s.detail)
                                               for s in report.steps])
        if report.next_steps:
            o.out.print("\nnext:", markup=False)
            for step in report.next_steps:
                o.out.print(f"  {step}", markup=False)

    out.result(report.to_dict(), human)
    if not report.ok:
        raise typer.Exit(1)
