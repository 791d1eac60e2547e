"""An ngrok HTTP tunnel via pyngrok (HTTP endpoints need no verified card; TCP ones do).

The authtoken comes from ``NGROK_AUTHTOKEN`` or tether's secrets (``ngrok:authtoken``, written
by `tether host ngrok-token`: `store_token`) and reaches the ngrok agent through its
environment, never its argv.
"""

from __future__ import annotations

import os
import re

from tether import secrets
from tether.errors import AuthError, ConnectError, SystemDependencyError, UsageError

SECRET_KEY = "ngrok:authtoken"
TOKEN_ENV = "NGROK_AUTHTOKEN"
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{20,256}$")


def resolve_token(environ: dict[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    token = env.get(TOKEN_ENV) or secrets.get_secret(SECRET_KEY)
    if not token:
        raise AuthError("ngrok needs an authtoken",
                        "store it once with `tether host ngrok-token` (from "
                        "https://dashboard.ngrok.com), or set NGROK_AUTHTOKEN, or use "
                        "--tunnel cloudflared / --tunnel local")
    return token


def check_token(token: str) -> str:
    """``token`` stripped, if it looks like an ngrok authtoken; UsageError (not echoing it)."""
    token = token.strip()
    if not _TOKEN_RE.match(token):
        raise UsageError("that does not look like an ngrok authtoken (20-256 letters, digits, "
                         "'_' or '-')",
                         "copy it from https://dashboard.ngrok.com/get-started/your-authtoken")
    return token


def store_token(token: str) -> None:
    """Keep ``token`` in tether's secrets for later `tether up --tunnel ngrok`."""
    secrets.set_secret(SECRET_KEY, check_token(token))


def clear_token() -> bool:
    """Forget the stored token; False when none was stored."""
    return secrets.delete_secret(SECRET_KEY)


class NgrokTunnel:
    kind = "ngrok"

    def __init__(self, local_port: int) -> None:
        self.local_port = local_port
        self._tunnel = None
        self._config = None

    def start(self) -> str:
        token = resolve_token()
        try:
            from pyngrok import conf, ngrok
            from pyngrok.exception import PyngrokError
        except ImportError as exc:
            raise SystemDependencyError("pyngrok is not installed",
                                        "pip install pyngrok") from exc
        # pyngrok would put a configured token on the agent's argv; the agent reads
        # NGROK_AUTHTOKEN from its environment instead, which `ps` does not show.
        os.environ[TOKEN_ENV] = token
        self._config = conf.PyngrokConfig(auth_token=None, monitor_thread=False)
        if not os.path.exists(self._config.ngrok_path):
            raise SystemDependencyError(
                f"the ngrok agent is not installed at {self._config.ngrok_path}",
                "run `python -c 'from pyngrok import installer, conf; "
                "installer.install_ngrok(conf.get_default().ngrok_path)'` with internet access")
        try:
            self._tunnel = ngrok.connect(str(self.local_port), "http",
                                         pyngrok_config=self._config)
        except PyngrokError as exc:
            raise ConnectError(f"ngrok could not open a tunnel: {exc}") from exc
        url = self._tunnel.public_url
        return url.replace("http://", "https://", 1) if url.startswith("http://") else url

    def is_alive(self) -> bool:
        if self._config is None:
            return False
        from pyngrok import process

        return self._tunnel is not None and process.is_process_running(self._config.ngrok_path)

    def stop(self) -> None:
        if self._config is None:
            return
        from pyngrok import ngrok

        try:
            ngrok.kill(self._config)
        finally:
            self._tunnel = None
