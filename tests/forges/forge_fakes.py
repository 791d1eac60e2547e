"""Local HTTP servers that follow the documented forge APIs (tether cannot reach the real ones).

Each fake keeps accounts (token -> user + scopes) and their SSH keys in memory and answers
the endpoints, status codes, auth headers and error bodies the forges document:

- GitHub REST (2022-11-28): ``Authorization: Bearer``; ``/user``, ``/user/keys`` (Link
  pagination); 401 "Bad credentials"; a classic token without the scope gets 404 with
  ``X-Accepted-OAuth-Scopes`` / ``X-OAuth-Scopes``; a fine-grained one 403 with
  ``X-Accepted-GitHub-Permissions``; 422 "key is already in use"; rate limit 403 with
  ``X-RateLimit-Remaining: 0`` + ``X-RateLimit-Reset``.
- GitLab v4: ``PRIVATE-TOKEN``; ``/api/v4/user``, ``/api/v4/user/keys`` (``X-Next-Page``);
  403 ``insufficient_scope``; 400 "has already been taken"; 429 + ``Retry-After``.
- Bitbucket 2.0: basic auth email:API token; ``/2.0/user``, ``/2.0/users/{uuid}/ssh-keys``
  (``next`` in the body); 403 with ``detail.required`` scopes; 429.

``on_key_added`` lets a test make an uploaded key work over SSH (the sshd fixture), like the
real forge does.
"""

from __future__ import annotations

import base64
import json
import re
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

from tether.forges.base import Provider

Response = tuple[int, dict[str, str], object]


@dataclass
class Account:
    login: str
    scopes: set[str]
    id: int = 1
    name: str = "Octo Cat"
    email: str = "octo@example.com"
    uuid: str = "{11111111-2222-3333-4444-555555555555}"


@dataclass
class FakeForge:
    """State shared by all fakes; subclasses route requests."""

    accounts: dict[str, Account] = field(default_factory=dict)  # credential -> account
    keys: list[dict] = field(default_factory=list)
    rate_limited: bool = False
    override: Response | None = None  # answer every request with this (status, headers, body)
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    on_key_added: Callable[[str], None] | None = None
    per_page_max: int = 100
    _next_id: int = 100
    _server: ThreadingHTTPServer | None = None

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> FakeForge:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = "<invalid json>"
                fake.requests.append((self.command, self.path, dict(self.headers)))
                if fake.override is not None:  # a broken proxy / an outage, whatever was asked
                    status, headers, payload = fake.override
                else:
                    status, headers, payload = fake.handle(self.command, self.path,
                                                           dict(self.headers), body)
                data = (b"" if payload is None else payload if isinstance(payload, bytes)
                        else json.dumps(payload).encode())
                self.send_response(status)
                if payload is not None:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for k, v in headers.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = _serve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    # -- helpers --------------------------------------------------------------------------
    def new_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def key_blob(self, line: str) -> str | None:
        parts = line.split()
        if len(parts) < 2 or not parts[0].startswith(("ssh-", "ecdsa-")):
            return None
        try:
            base64.b64decode(parts[1], validate=True)
        except ValueError:
            return None
        return parts[1]

    def find_duplicate(self, line: str) -> dict | None:
        blob = self.key_blob(line)
        return next((k for k in self.keys if self.key_blob(k["key"]) == blob), None)

    def added(self, line: str) -> None:
        if self.on_key_added is not None:
            self.on_key_added(line)

    def handle(self, method: str, path: str, headers: dict, body) -> Response:
        raise NotImplementedError


def _header(headers: dict, name: str) -> str | None:
    for k, v in headers.items():
        if k.lower() == name.lower():
            return v
    return None


class FakeGitHub(FakeForge):
    SCOPES_READ = {"read:public_key", "write:public_key", "admin:public_key"}
    SCOPES_WRITE = {"write:public_key", "admin:public_key"}
    SCOPES_DELETE = {"admin:public_key"}

    def handle(self, method, path, headers, body) -> Response:
        auth = _header(headers, "Authorization") or ""
        token = auth.removeprefix("Bearer ").removeprefix("token ").strip()
        account = self.accounts.get(token) if auth.startswith(("Bearer ", "token ")) else None
        base = {"X-GitHub-Media-Type": "github.v3"}
        if account is None:
            return 401, base, {"message": "Bad credentials",
                               "documentation_url": "https://docs.github.com/rest"}
        reset = str(int(time.time()) + 42)
        base |= {"X-RateLimit-Limit": "5000", "X-RateLimit-Reset": reset,
                 "X-RateLimit-Remaining": "0" if self.rate_limited else "4999"}
        fine_grained = token.startswith("github_pat_")
        if not fine_grained:
            base["X-OAuth-Scopes"] = ", ".join(sorted(account.scopes))
        if self.rate_limited:
            return 403, base, {"message": "API rate limit exceeded for user ID 1."}
        url = urlsplit(path)
        if url.path == "/user" and method == "GET":
            return 200, base, {"login": account.login, "id": account.id, "name": account.name,
                               "email": account.email}
        m = re.fullmatch(r"/user/keys(?:/(\d+))?", url.path)
        if not m:
            return 404, base, {"message": "Not Found"}
        needed = {"GET": self.SCOPES_READ, "POST": self.SCOPES_WRITE,
                  "DELETE": self.SCOPES_DELETE}[method]
        if not needed & account.scopes:
            if fine_grained:
                return 403, base | {"X-Accepted-GitHub-Permissions": "git_ssh_keys=write"}, {
                    "message": "Resource not accessible by personal access token"}
            return 404, base | {"X-Accepted-OAuth-Scopes": ", ".join(sorted(needed))}, {
                "message": "Not Found"}
        if method == "GET" and m.group(1) is None:
            return self._list(url, base)
        if method == "POST":
            return self._add(body, base)
        if method == "DELETE" and m.group(1):
            before = len(self.keys)
            self.keys = [k for k in self.keys if str(k["id"]) != m.group(1)]
            return (204, base, None) if len(self.keys) < before else (404, base, {
                "message": "Not Found"})
        return 404, base, {"message": "Not Found"}

    def _list(self, url, base) -> Response:
        q = parse_qs(url.query)
        per_page = min(int(q.get("per_page", ["30"])[0]), self.per_page_max)
        page = int(q.get("page", ["1"])[0])
        chunk = self.keys[(page - 1) * per_page: page * per_page]
        headers = dict(base)
        if page * per_page < len(self.keys):
            headers["Link"] = (f'<{self.url}/user/keys?per_page={per_page}&page={page + 1}>; '
                               'rel="next"')
        return 200, headers, [{k: v for k, v in key.items()} for key in chunk]

    def _add(self, body, base) -> Response:
        if not isinstance(body, dict) or not body.get("key") or self.key_blob(body["key"]) is None:
            return 422, base, {"message": "Validation Failed", "errors": [
                {"resource": "PublicKey", "code": "custom", "field": "key",
                 "message": "key is invalid. You must supply a key in OpenSSH public key format"}]}
        if self.find_duplicate(body["key"]):
            return 422, base, {"message": "Validation Failed", "errors": [
                {"resource": "PublicKey", "code": "custom", "field": "key",
                 "message": "key is already in use"}]}
        parts = body["key"].split()
        key = {"id": self.new_id(), "key": f"{parts[0]} {parts[1]}",
               "title": body.get("title", ""), "verified": True, "read_only": False,
               "created_at": "2026-11-21T12:00:00Z"}
        key["url"] = f"{self.url}/user/keys/{key['id']}"
        self.keys.append(key)
        self.added(body["key"])
        return 201, base, key


class FakeGitLab(FakeForge):
    def handle(self, method, path, headers, body) -> Response:
        account = self.accounts.get(_header(headers, "PRIVATE-TOKEN") or "")
        if account is None:
            return 401, {}, {"message": "401 Unauthorized"}
        if self.rate_limited:
            return 429, {"Retry-After": "30", "RateLimit-Reset": str(int(time.time()) + 30)}, {
                "message": "Retry later"}
        url = urlsplit(path)
        if url.path == "/api/v4/user" and method == "GET":
            return 200, {}, {"id": account.id, "username": account.login, "name": account.name,
                             "email": account.email, "state": "active"}
        m = re.fullmatch(r"/api/v4/user/keys(?:/(\d+))?", url.path)
        if not m:
            return 404, {}, {"message": "404 Not found"}
        needed = {"api"} if method != "GET" else {"api", "read_api"}
        if not needed & account.scopes:
            return 403, {}, {"error": "insufficient_scope",
                             "error_description": "The request requires higher privileges "
                                                  "than provided by the access token.",
                             "scope": "api"}
        if method == "GET":
            q = parse_qs(url.query)
            per_page = min(int(q.get("per_page", ["20"])[0]), self.per_page_max)
            page = int(q.get("page", ["1"])[0])
            chunk = self.keys[(page - 1) * per_page: page * per_page]
            more = page * per_page < len(self.keys)
            return 200, {"X-Page": str(page), "X-Next-Page": str(page + 1) if more else "",
                         "X-Total": str(len(self.keys))}, chunk
        if method == "POST":
            if not isinstance(body, dict) or self.key_blob(body.get("key") or "") is None:
                return 400, {}, {"message": {"key": ["is invalid"]}}
            if not body.get("title"):
                return 400, {}, {"error": "title is missing"}
            if self.find_duplicate(body["key"]):
                return 400, {}, {"message": {"key": ["has already been taken"],
                                             "fingerprint_sha256": ["has already been taken"]}}
            key = {"id": self.new_id(), "title": body["title"], "key": body["key"].strip(),
                   "created_at": "2026-11-21T12:00:00.000Z", "expires_at": None,
                   "usage_type": "auth_and_signing"}
            self.keys.append(key)
            self.added(body["key"])
            return 201, {}, key
        if method == "DELETE" and m.group(1):
            before = len(self.keys)
            self.keys = [k for k in self.keys if str(k["id"]) != m.group(1)]
            return (204, {}, None) if len(self.keys) < before else (404, {}, {
                "message": "404 Key Not Found"})
        return 405, {}, {"message": "405 Method Not Allowed"}


class FakeBitbucket(FakeForge):
    def _account(self, headers) -> Account | None:
        auth = _header(headers, "Authorization") or ""
        if not auth.startswith("Basic "):
            return None
        try:
            cred = base64.b64decode(auth[6:]).decode()
        except ValueError:
            return None
        return self.accounts.get(cred)  # "email:token"

    @staticmethod
    def _error(status: int, message: str, **extra) -> Response:
        return status, {}, {"type": "error", "error": {"message": message, **extra}}

    def _scope(self, account: Account, scope: str) -> Response | None:
        if scope in account.scopes:
            return None
        return self._error(403, "Your credentials lack one or more required privilege scopes.",
                           detail={"required": [scope], "granted": sorted(account.scopes)})

    def handle(self, method, path, headers, body) -> Response:
        account = self._account(headers)
        if account is None:
            return self._error(401, "Token is invalid, expired, or not supported for this "
                                    "endpoint.")
        if self.rate_limited:
            return self._error(429, "Rate limit for this resource has been exceeded")
        url = urlsplit(path)
        if url.path == "/2.0/user" and method == "GET":
            return self._scope(account, "read:user:bitbucket") or (200, {}, {
                "type": "user", "uuid": account.uuid, "username": account.login,
                "display_name": account.name, "account_id": "5b10a2844c20165700ede21g"})
        m = re.fullmatch(r"/2\.0/users/([^/]+)/ssh-keys(?:/([^/]+))?", url.path)
        if not m:
            return self._error(404, "Resource not found")
        if unquote(m.group(1)) != account.uuid:
            return self._error(403, "You may not access another user's keys")
        key_id = unquote(m.group(2)) if m.group(2) else None
        if method == "GET" and key_id is None:
            return self._scope(account, "read:ssh-key:bitbucket") or self._list(url, account)
        if method == "POST":
            return self._scope(account, "write:ssh-key:bitbucket") or self._add(body, account)
        if method == "DELETE" and key_id:
            denied = self._scope(account, "delete:ssh-key:bitbucket")
            if denied:
                return denied
            before = len(self.keys)
            self.keys = [k for k in self.keys if k["uuid"] != key_id]
            return (204, {}, None) if len(self.keys) < before else self._error(
                404, "SSH key not found")
        return self._error(405, "Method not allowed")

    def _list(self, url, account) -> Response:
        q = parse_qs(url.query)
        pagelen = min(int(q.get("pagelen", ["10"])[0]), self.per_page_max)
        page = int(q.get("page", ["1"])[0])
        chunk = self.keys[(page - 1) * pagelen: page * pagelen]
        data: dict = {"pagelen": pagelen, "page": page, "size": len(self.keys), "values": chunk}
        if page * pagelen < len(self.keys):
            data["next"] = (f"{self.url}/2.0/users/{account.uuid}/ssh-keys"
                            f"?pagelen={pagelen}&page={page + 1}")
        return 200, {}, data

    def _add(self, body, account) -> Response:
        if not isinstance(body, dict) or self.key_blob(body.get("key") or "") is None:
            return self._error(400, "Bad request", fields={"key": ["Invalid SSH key"]})
        if self.find_duplicate(body["key"]):
            return self._error(400, "Bad request",
                               fields={"key": ["Someone has already added that SSH key."]})
        parts = body["key"].split()
        key = {"type": "ssh_key", "uuid": "{%08d-0000-0000-0000-000000000000}" % self.new_id(),
               "key": f"{parts[0]} {parts[1]}", "comment": " ".join(parts[2:]),
               "label": body.get("label", ""), "created_on": "2026-11-21T12:00:00.000000+00:00",
               "last_used": None, "owner": {"uuid": account.uuid}}
        self.keys.append(key)
        self.added(body["key"])
        return 201, {}, key


# -- the SSH side: the sshd fixture answering like a forge ---------------------------------

GREETINGS = {
    Provider.GITHUB: ("Hi octocat! You've successfully authenticated, but GitHub does not "
                      "provide shell access.", 1),
    Provider.GITLAB: ("Welcome to GitLab, @octocat!", 0),
    Provider.BITBUCKET: ("authenticated via ssh key.\n\nYou can use git to connect to "
                         "Bitbucket. Shell access is disabled.", 0),
}

# A forge's SSH login: no shell; greets and exits like the forge, or runs git's pack commands.
FORGE_SHELL = """#!/bin/sh
if [ -z "$SSH_ORIGINAL_COMMAND" ]; then
  printf '%s\\n' {greeting} >&2
  exit {code}
fi
case "$SSH_ORIGINAL_COMMAND" in
  "git-upload-pack "*|"git-receive-pack "*) exec sh -c "$SSH_ORIGINAL_COMMAND" ;;
  *) echo "Invalid command: shell access is disabled" >&2; exit 128 ;;
esac
"""


@dataclass
class ForgeSsh:
    """The session sshd dressed up as a forge's git SSH endpoint."""

    server: object  # tests.conftest.SshServer
    shell: Path
    known_hosts: Path  # pins the sshd's host key as [127.0.0.1]:port

    def authorize(self, public_line: str) -> None:
        """What the forge does when a key is uploaded: accept it, without a shell."""
        self.server.authorize(f'command="{self.shell}",no-pty,no-port-forwarding '
                              f"{public_line.strip()}")

    def target_args(self) -> list[str]:
        return ["--ssh-host", self.server.host, "--ssh-port", str(self.server.port),
                "--ssh-user", self.server.user, "--known-hosts", str(self.known_hosts)]


def make_forge_ssh(sshd_server, directory: Path, provider: Provider) -> ForgeSsh:
    import shlex

    greeting, code = GREETINGS[provider]
    shell = directory / f"forge-shell-{provider.value}.sh"
    shell.write_text(FORGE_SHELL.format(greeting=shlex.quote(greeting), code=code))
    shell.chmod(0o755)
    known_hosts = directory / "forge_known_hosts"
    shutil.copy(sshd_server.known_hosts, known_hosts)
    return ForgeSsh(sshd_server, shell, known_hosts)
