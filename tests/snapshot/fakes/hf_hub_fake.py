"""A small local Hugging Face Hub that answers the HTTP calls huggingface_hub really makes.

Endpoints (as called by huggingface_hub 1.x/2.x ``HfApi``; paths and payloads follow
https://huggingface.co/docs/hub/api and the client source):

- ``POST /api/repos/create`` JSON ``{name, organization, type, visibility|private}``
  -> 200 ``{url, name, id}``; 409 if it exists; 403 outside the token's namespace.
- ``GET /api/{type}s/{ns}/{name}[/revision/{rev}]`` -> repo info ``{id, sha, private,
  siblings}``.
- ``POST /api/{type}s/{ns}/{name}/preupload/{rev}`` JSON ``{files: [{path, sample, size}]}``
  -> ``{files: [{path, uploadMode, shouldIgnore, oid}]}``. This fake implements no LFS/Xet
  transfer, so it answers ``"regular"`` for every file: the client then sends the bytes
  base64-encoded inside the commit, which it supports for any size. ``oid`` is the git blob
  sha1 of the file already at that path (the client skips unchanged files with it).
- ``POST /api/{type}s/{ns}/{name}/commit/{rev}`` NDJSON: a ``header`` line
  ``{summary, description, parentCommit?}`` then ``file`` (base64), ``deletedFile``,
  ``deletedFolder`` lines -> ``{commitUrl, commitOid, pullRequestUrl}``. A stale
  ``parentCommit`` is 412; deleting an absent file is 404 ``EntryNotFound``.
- ``GET /api/{type}s/{ns}/{name}/tree/{rev}[/{path}]?recursive=&cursor=`` -> a page of
  ``{type: file|directory, oid, size, path}``, 1000 per page, next page in a
  ``Link: <...>; rel="next"`` header (cursor pagination, like the Hub).
- ``GET|HEAD /{type}s/{ns}/{name}/resolve/{rev}/{path}`` (models without the type prefix)
  -> the bytes with ``ETag``, ``X-Repo-Commit``, ``Content-Length``, ``Accept-Ranges``;
  ``Range: bytes=a-b`` / ``bytes=-n`` -> 206 with ``Content-Range``; 416 past the end.
  With ``hub.cdn_over`` set, bigger files answer 302 to ``/cdn/{oid}`` on another origin
  (``localhost``), as the Hub does for LFS/Xet files, with ``X-Linked-Size``/``X-Linked-Etag``.

Errors carry ``X-Error-Code`` (RepoNotFound, RevisionNotFound, EntryNotFound) and
``X-Error-Message`` like the Hub. Without a valid ``Authorization: Bearer`` token a private
repo answers 401 RepoNotFound (the Hub does not reveal that it exists); writes need a token.

Test hooks: ``hub.fail_next(status, count=1, path_contains=..., headers=...)`` injects
failures; ``hub.on_commit`` runs callables when a commit request arrives;
``hub.commits(repo_id)`` and ``hub.files(repo_id)`` inspect state.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, unquote, urlsplit

from tests.snapshot.fakes._http import FakeHandler, serve

PAGE_SIZE = 1000


def git_blob_oid(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Commit:
    oid: str
    summary: str
    files: dict[str, bytes]          # full tree after this commit
    added: list[str]
    deleted: list[str]


@dataclass
class Repo:
    repo_id: str
    repo_type: str
    private: bool
    commits: list[Commit] = field(default_factory=list)

    @property
    def head(self) -> Commit:
        return self.commits[-1]


@dataclass
class Failure:
    status: int
    path_contains: str
    method: str | None
    headers: dict[str, str]
    remaining: int


class FakeHub:
    def __init__(self, tokens: dict[str, str]) -> None:
        self.tokens = dict(tokens)            # token -> user name
        self.repos: dict[tuple[str, str], Repo] = {}
        self.requests: list[tuple[str, str]] = []
        self.failures: list[Failure] = []
        self.lock = threading.Lock()
        self.url = ""
        self.bytes_sent = 0         # response body bytes, for benchmarks
        self.cdn_over: int | None = None   # files above this size resolve via a CDN redirect
        self.cdn_blobs: dict[str, bytes] = {}
        self.cdn_auth_seen: list[str | None] = []
        self.on_commit: list = []   # callables run (outside the lock) before a commit is read

    # -- test hooks ------------------------------------------------------------------------
    def fail_next(self, status: int, *, count: int = 1, path_contains: str = "",
                  method: str | None = None, headers: dict[str, str] | None = None) -> None:
        with self.lock:
            self.failures.append(Failure(status, path_contains, method, headers or {}, count))

    def repo(self, repo_id: str, repo_type: str = "dataset") -> Repo:
        return self.repos[(repo_type, repo_id)]

    def commits(self, repo_id: str, repo_type: str = "dataset") -> list[Commit]:
        return list(self.repo(repo_id, repo_type).commits)

    def files(self, repo_id: str, repo_type: str = "dataset") -> dict[str, bytes]:
        return dict(self.repo(repo_id, repo_type).head.files)

    def _take_failure(self, method: str, path: str) -> Failure | None:
        with self.lock:
            for failure in self.failures:
                if failure.path_contains in path and failure.method in (None, method):
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self.failures.remove(failure)
                    return failure
        return None

    # -- model -----------------------------------------------------------------------------
    def create_repo(self, repo_id: str, repo_type: str, private: bool) -> Repo:
        repo = Repo(repo_id, repo_type, private)
        repo.commits.append(Commit(_oid(repo_id, "init"), "initial commit",
                                   {".gitattributes": b"*.bin filter=lfs\n"}, [], []))
        self.repos[(repo_type, repo_id)] = repo
        return repo


class HubError(Exception):
    def __init__(self, status: int, code: str | None, message: str,
                 extra: dict | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.extra = extra or {}


_API_REPO = re.compile(r"^/api/(models|datasets|spaces)/([^/]+/[^/]+)(?:/(.*))?$")
_RESOLVE = re.compile(r"^/(?:(datasets|spaces)/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")


def _oid(*parts: str) -> str:
    return hashlib.sha1("\0".join(parts + (str(time.time_ns()),)).encode()).hexdigest()


class Handler(FakeHandler):
    hub: FakeHub

    # -- plumbing --------------------------------------------------------------------------
    def _error(self, err: HubError) -> None:
        headers = {"X-Error-Message": err.message}
        if err.code:
            headers["X-Error-Code"] = err.code
        self._json(err.status, {"error": err.message, **err.extra}, headers)

    def _user(self) -> str | None:
        auth = self.headers.get("Authorization") or ""
        if not auth.startswith("Bearer "):
            return None
        user = self.hub.tokens.get(auth[7:])
        if user is None:
            raise HubError(401, None, "Invalid credentials in Authorization header")
        return user

    def _repo(self, repo_type: str, repo_id: str, *, write: bool = False) -> Repo:
        user = self._user()
        repo = self.hub.repos.get((repo_type, repo_id))
        visible = repo is not None and (not repo.private or user == repo_id.split("/")[0])
        if not visible:
            status = 401 if user is None else 404
            raise HubError(status, "RepoNotFound", "Repository not found")
        if write and user != repo_id.split("/")[0]:
            raise HubError(403 if user else 401, None,
                           "You don't have the rights to write to this repository")
        return repo

    def _revision(self, repo: Repo, rev: str) -> Commit:
        rev = unquote(rev)
        if rev == "main":
            return repo.head
        for commit in repo.commits:
            if commit.oid == rev:
                return commit
        raise HubError(404, "RevisionNotFound", f"Invalid rev id: {rev}")

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        path, query = parts.path, parse_qs(parts.query)
        self.hub.requests.append((self.command, path))
        failure = self.hub._take_failure(self.command, path)
        if failure is not None:
            self._body()
            self._json(failure.status, {"error": f"injected {failure.status}"}, failure.headers)
            return
        if "/commit/" in path:
            for hook in list(self.hub.on_commit):
                hook()
        try:
            with self.hub.lock:
                self._route(path, query)
        except HubError as err:
            self._error(err)

    do_GET = do_POST = do_HEAD = do_PUT = do_DELETE = _dispatch

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        if self.command == "POST" and path == "/api/repos/create":
            return self._create_repo()
        if self.command == "GET" and path == "/api/whoami-v2":
            user = self._user()
            if user is None:
                raise HubError(401, None, "Invalid credentials")
            return self._json(200, {"type": "user", "name": user})
        match = _API_REPO.match(path)
        if match:
            repo_type, repo_id, rest = match.group(1)[:-1], match.group(2), match.group(3) or ""
            return self._api_repo(repo_type, repo_id, rest, query)
        if self.command in ("GET", "HEAD") and path.startswith("/cdn/"):
            return self._cdn(path[len("/cdn/"):])
        match = _RESOLVE.match(path)
        if match and self.command in ("GET", "HEAD"):
            repo_type = (match.group(1) or "models")[:-1]
            return self._resolve(repo_type, match.group(2), match.group(3),
                                 unquote(match.group(4)))
        raise HubError(404, None, f"no route for {self.command} {path}")

    # -- endpoints -------------------------------------------------------------------------
    def _create_repo(self) -> None:
        user = self._user()
        if user is None:
            raise HubError(401, None, "You must be authenticated to create a repo")
        payload = json.loads(self._body() or b"{}")
        namespace = payload.get("organization") or user
        if namespace != user:
            raise HubError(403, None, "You don't have the rights to create a repo under "
                                      f"the namespace {namespace!r}")
        repo_type = payload.get("type") or "model"
        repo_id = f"{namespace}/{payload['name']}"
        prefix = "" if repo_type == "model" else f"{repo_type}s/"
        url = f"{self.hub.url}/{prefix}{repo_id}"
        if (repo_type, repo_id) in self.hub.repos:  # the Hub's 409 body carries the url too
            raise HubError(409, None, f"You already created this {repo_type} repo",
                           {"url": url})
        private = payload.get("visibility", "private" if payload.get("private") else "public")
        self.hub.create_repo(repo_id, repo_type, private != "public")
        self._json(200, {"url": url, "name": repo_id, "id": repo_id})

    def _api_repo(self, repo_type: str, repo_id: str, rest: str,
                  query: dict[str, list[str]]) -> None:
        if self.command == "GET" and (rest == "" or rest.startswith("revision/")):
            repo = self._repo(repo_type, repo_id)
            commit = self._revision(repo, rest[len("revision/"):] if rest else "main")
            return self._json(200, {
                "id": repo_id, "author": repo_id.split("/")[0], "sha": commit.oid,
                "private": repo.private, "lastModified": "2026-01-01T00:00:00.000Z",
                "siblings": [{"rfilename": p} for p in sorted(commit.files)]})
        verb, _, tail = rest.partition("/")
        if self.command == "POST" and verb == "preupload":
            return self._preupload(self._repo(repo_type, repo_id, write=True), tail)
        if self.command == "POST" and verb == "commit":
            return self._commit(self._repo(repo_type, repo_id, write=True), tail)
        if self.command == "GET" and verb == "tree":
            return self._tree(self._repo(repo_type, repo_id), tail, query)
        raise HubError(404, None, f"no route for {self.command} {rest}")

    def _preupload(self, repo: Repo, rev: str) -> None:
        commit = self._revision(repo, rev)
        payload = json.loads(self._body())
        files = []
        for item in payload["files"]:
            existing = commit.files.get(item["path"])
            files.append({"path": item["path"], "uploadMode": "regular", "shouldIgnore": False,
                          "oid": git_blob_oid(existing) if existing is not None else None})
        self._json(200, {"files": files, "commitOid": commit.oid})

    def _commit(self, repo: Repo, rev: str) -> None:
        if unquote(rev) != "main":
            raise HubError(404, "RevisionNotFound", f"Invalid rev id: {unquote(rev)}")
        if "ndjson" not in (self.headers.get("Content-Type") or ""):
            raise HubError(400, None, "expected application/x-ndjson")
        lines = [json.loads(line) for line in self._body().splitlines() if line.strip()]
        if not lines or lines[0].get("key") != "header":
            raise HubError(400, None, "the first line must be the commit header")
        header = lines[0]["value"]
        parent = header.get("parentCommit")
        if parent is not None and parent != repo.head.oid:
            raise HubError(412, None, "A commit has happened since. Please refresh and try again.")
        files = dict(repo.head.files)
        added, deleted = [], []
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                if value.get("encoding") != "base64":
                    raise HubError(400, None, "unsupported encoding")
                files[value["path"]] = base64.b64decode(value["content"])
                added.append(value["path"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    raise HubError(404, "EntryNotFound",
                                   f"A file with this name doesn't exist: {value['path']}")
                del files[value["path"]]
                deleted.append(value["path"])
            elif key == "deletedFolder":
                folder = value["path"].rstrip("/") + "/"
                gone = [p for p in files if p.startswith(folder)]
                for p in gone:
                    del files[p]
                deleted.extend(gone)
            else:  # lfsFile: never requested, since preupload says "regular"
                raise HubError(400, None, f"unsupported commit operation {key!r}")
        if not added and not deleted:
            raise HubError(400, None, "No files have been modified since last commit")
        oid = _oid(repo.repo_id, header.get("summary", ""))
        repo.commits.append(Commit(oid, header.get("summary", ""), files, added, deleted))
        prefix = "" if repo.repo_type == "model" else f"{repo.repo_type}s/"
        self._json(200, {"commitUrl": f"{self.hub.url}/{prefix}{repo.repo_id}/commit/{oid}",
                         "commitOid": oid, "pullRequestUrl": None})

    def _tree(self, repo: Repo, tail: str, query: dict[str, list[str]]) -> None:
        rev, _, folder = tail.partition("/")
        commit = self._revision(repo, rev)
        folder = unquote(folder).strip("/")
        recursive = (query.get("recursive") or ["False"])[0].lower() in ("true", "1")
        base = folder + "/" if folder else ""
        if folder and not any(p.startswith(base) for p in commit.files):
            raise HubError(404, "EntryNotFound", f"{folder} does not exist on main")
        entries: dict[str, dict] = {}
        for path, data in commit.files.items():
            if not path.startswith(base):
                continue
            rest = path[len(base):]
            dirs = rest.split("/")[:-1]
            for depth in range(1, len(dirs) + 1):
                if depth > 1 and not recursive:
                    break
                dpath = base + "/".join(dirs[:depth])
                entries.setdefault(dpath, {"type": "directory", "oid": _oid(dpath)[:40],
                                           "size": 0, "path": dpath})
            if recursive or not dirs:
                entries[path] = {"type": "file", "oid": git_blob_oid(data), "size": len(data),
                                 "path": path}
        ordered = [entries[k] for k in sorted(entries)]
        start = int((query.get("cursor") or ["0"])[0])
        page = ordered[start:start + PAGE_SIZE]
        headers = {}
        if start + PAGE_SIZE < len(ordered):
            qs = f"recursive={recursive}&cursor={start + PAGE_SIZE}"
            url = f"{self.hub.url}{urlsplit(self.path).path}?{qs}"
            headers["Link"] = f'<{url}>; rel="next"'
        self._json(200, page, headers)

    def _resolve(self, repo_type: str, repo_id: str, rev: str, path: str) -> None:
        repo = self._repo(repo_type, repo_id)
        commit = self._revision(repo, rev)
        data = commit.files.get(path)
        if data is None:
            raise HubError(404, "EntryNotFound", f"{path} does not exist on {unquote(rev)}")
        headers = {"ETag": f'"{git_blob_oid(data)}"', "X-Repo-Commit": commit.oid,
                   "Accept-Ranges": "bytes"}
        if self.hub.cdn_over is not None and len(data) > self.hub.cdn_over:
            # Like LFS/Xet files on the Hub: a redirect to a CDN on another origin
            # ("localhost" vs "127.0.0.1"), with the size and hash in X-Linked-* headers.
            oid = git_blob_oid(data)
            self.hub.cdn_blobs[oid] = data
            port = self.server.server_address[1]
            headers.update({"Location": f"http://localhost:{port}/cdn/{oid}?sig=fake",
                            "X-Linked-Size": str(len(data)), "X-Linked-Etag": f'"{oid}"'})
            return self._send(302, b"", headers)
        self._send_bytes(data, headers)

    def _cdn(self, oid: str) -> None:
        self.hub.cdn_auth_seen.append(self.headers.get("Authorization"))
        data = self.hub.cdn_blobs.get(oid)
        if data is None:
            raise HubError(404, None, "no such blob")
        self._send_bytes(data, {"Accept-Ranges": "bytes"})

    def _send_bytes(self, data: bytes, headers: dict[str, str]) -> None:
        spec = self.headers.get("Range")
        if not spec:
            return self._send(200, data, headers, "application/octet-stream")
        match = re.fullmatch(r"bytes=(\d*)-(\d*)", spec.strip())
        if not match or (match.group(1) == "" and match.group(2) == ""):
            raise HubError(400, None, f"bad Range {spec!r}")
        size = len(data)
        if match.group(1) == "":
            start, end = max(0, size - int(match.group(2))), size - 1
        else:
            start = int(match.group(1))
            end = min(size - 1, int(match.group(2))) if match.group(2) else size - 1
        if start >= size or start > end:
            headers["Content-Range"] = f"bytes */{size}"
            return self._send(416, b"", headers)
        headers["Content-Range"] = f"bytes {start}-{end}/{size}"
        self._send(206, data[start:end + 1], headers, "application/octet-stream")


@contextlib.contextmanager
def serve_fake_hub(tokens: dict[str, str] | None = None) -> Iterator[FakeHub]:
    """Run a FakeHub on 127.0.0.1 (port 0) in a thread; yields it with ``.url`` set."""
    hub = FakeHub(tokens or {"hf_test_token": "alice"})
    with serve(hub, Handler, "hub") as url:
        hub.url = url
        yield hub


__all__ = ["FakeHub", "git_blob_oid", "quote", "serve_fake_hub"]
