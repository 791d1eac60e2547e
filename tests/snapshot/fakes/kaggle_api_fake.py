"""A small local Kaggle API that answers the calls the official client (kagglesdk) makes.

Kaggle's public API is RPC over HTTP: ``POST {base}/v1/{service}/{method}`` with a JSON body
in camelCase, auth by HTTP Basic (username + API key) or ``Bearer`` (API token); the
production base is ``https://api.kaggle.com`` and non-production ones add ``/api``, so both
``/v1/...`` and ``/api/v1/...`` are served. Implemented (request/response field names as in
kagglesdk's ``blobs``/``datasets`` types):

- ``blobs.BlobApiService/StartBlobUpload`` ``{type: "DATASET", name, contentLength,
  lastModifiedEpochSeconds}`` -> ``{token, createUrl}``; then ``PUT createUrl`` with the
  bytes (a resumable-upload URL on Kaggle's storage; here ``/upload/{token}``).
- ``datasets.DatasetApiService/CreateDataset`` ``{ownerSlug, slug, title, licenseName,
  isPrivate, files: [{token}]}`` -> ``{ref, url, status: "ok"|"error", error}``.
- ``.../CreateDatasetVersion`` ``{ownerSlug, datasetSlug, body: {versionNotes, files}}``:
  the new version holds exactly the uploaded files (Kaggle versions replace the file set).
- ``.../GetDatasetStatus`` -> ``{status: "READY"|...}``; a new version is processed for
  ``ready_after`` status polls before it is READY and readable.
- ``.../ListDatasetFiles`` ``{ownerSlug, datasetSlug, pageToken, pageSize}`` ->
  ``{datasetFiles: [{ref, name, totalBytes, creationDate}], nextPageToken}`` of the latest
  READY version.
- ``.../DownloadDataset`` ``{ownerSlug, datasetSlug, fileName, raw}`` -> 302 to a signed
  storage URL (``/storage/...``; GET with ``Range`` support, no auth needed, like GCS).

Errors: HTTP status plus ``{"code": N, "message": ...}`` (what kagglesdk checks); creation
problems come back as ``status: "error"`` with a message, as the CLI expects.
Test hooks: ``fail_next(status, ...)``, ``versions(ref)``, ``ready_after``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

from tests.snapshot.fakes._http import FakeHandler, serve

SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")


@dataclass
class Version:
    number: int
    notes: str
    files: dict[str, str]        # file name -> blob id
    polls_left: int

    @property
    def ready(self) -> bool:
        return self.polls_left <= 0


@dataclass
class Dataset:
    owner: str
    slug: str
    title: str
    private: bool
    versions: list[Version] = field(default_factory=list)

    def latest_ready(self) -> Version | None:
        ready = [v for v in self.versions if v.ready]
        return ready[-1] if ready else None


@dataclass
class Failure:
    status: int
    path_contains: str
    headers: dict[str, str]
    remaining: int


class FakeKaggle:
    def __init__(self, users: dict[str, str], *, ready_after: int = 1) -> None:
        self.users = dict(users)                 # username -> API key
        self.tokens: dict[str, str] = {}         # bearer token -> username
        self.ready_after = ready_after
        self.datasets: dict[str, Dataset] = {}
        self.blobs: dict[str, bytes] = {}
        self.uploads: dict[str, dict] = {}       # upload token -> {name, length, user, blob}
        self.requests: list[str] = []
        self.failures: list[Failure] = []
        self.lock = threading.Lock()
        self.url = ""
        self.storage_auth_seen: list[str | None] = []   # Authorization on upload/storage URLs
        self.bytes_sent = 0         # response body bytes, for benchmarks

    def fail_next(self, status: int, *, count: int = 1, path_contains: str = "",
                  headers: dict[str, str] | None = None) -> None:
        with self.lock:
            self.failures.append(Failure(status, path_contains, headers or {}, count))

    def versions(self, ref: str) -> list[Version]:
        return list(self.datasets[ref].versions)

    def files(self, ref: str, version: int | None = None) -> dict[str, bytes]:
        ds = self.datasets[ref]
        v = ds.versions[-1] if version is None else ds.versions[version - 1]
        return {name: self.blobs[blob] for name, blob in v.files.items()}

    def _take_failure(self, path: str) -> Failure | None:
        with self.lock:
            for failure in self.failures:
                if failure.path_contains in path:
                    failure.remaining -= 1
                    if failure.remaining <= 0:
                        self.failures.remove(failure)
                    return failure
        return None


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


_RPC = re.compile(r"^(?:/api)?/v1/([A-Za-z.]+)/([A-Za-z]+)$")


class Handler(FakeHandler):
    api: FakeKaggle

    def _user(self) -> str:
        auth = self.headers.get("Authorization") or ""
        if auth.startswith("Basic "):
            try:
                user, _, key = base64.b64decode(auth[6:]).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                user, key = "", ""
            if user and self.api.users.get(user) == key:
                return user
        elif auth.startswith("Bearer ") and auth[7:] in self.api.tokens:
            return self.api.tokens[auth[7:]]
        raise ApiError(401, "Unauthenticated: missing or invalid credentials")

    def _dispatch(self) -> None:
        parts = urlsplit(self.path)
        self.api.requests.append(f"{self.command} {parts.path}")
        failure = self.api._take_failure(parts.path)
        if failure is not None:
            self._body()
            self._json(failure.status, {"code": failure.status,
                                        "message": f"injected {failure.status}"},
                       failure.headers)
            return
        try:
            with self.api.lock:
                self._route(parts.path, parse_qs(parts.query))
        except ApiError as err:
            self._json(err.status, {"code": err.status, "message": err.message})

    do_GET = do_POST = do_PUT = do_HEAD = _dispatch

    def _route(self, path: str, query: dict[str, list[str]]) -> None:
        if self.command == "PUT" and path.startswith("/upload/"):
            return self._upload(path[len("/upload/"):])
        if self.command in ("GET", "HEAD") and path.startswith("/storage/"):
            return self._storage(path[len("/storage/"):].split("/")[0], query)
        match = _RPC.match(path)
        if self.command != "POST" or not match:
            raise ApiError(404, f"no route for {self.command} {path}")
        user = self._user()
        try:
            request = json.loads(self._body() or b"{}")
        except json.JSONDecodeError as exc:
            raise ApiError(400, "the body is not JSON") from exc
        handler = getattr(self, f"_rpc_{match.group(2)}", None)
        if handler is None:
            raise ApiError(404, f"unknown method {match.group(1)}/{match.group(2)}")
        handler(user, request)

    # -- blobs -----------------------------------------------------------------------------
    def _rpc_StartBlobUpload(self, user: str, req: dict) -> None:
        if req.get("type") != "DATASET" or not req.get("name"):
            raise ApiError(400, "type DATASET and a name are required")
        token = secrets.token_urlsafe(16)
        self.api.uploads[token] = {"name": req["name"], "length": int(req.get("contentLength", 0)),
                                   "user": user, "blob": None}
        self._json(200, {"token": token, "createUrl": f"{self.api.url}/upload/{token}"})

    def _upload(self, token: str) -> None:
        self.api.storage_auth_seen.append(self.headers.get("Authorization"))
        upload = self.api.uploads.get(token)
        if upload is None:
            raise ApiError(404, "upload session expired or unknown")
        data = self._body()
        if len(data) != upload["length"]:
            raise ApiError(400, f"expected {upload['length']} bytes, got {len(data)}")
        blob = hashlib.sha256(data).hexdigest()[:32] + secrets.token_hex(4)
        self.api.blobs[blob] = data
        upload["blob"] = blob
        self._json(200, {})

    def _files_from_tokens(self, user: str, files: list[dict]) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in files:
            upload = self.api.uploads.pop(item.get("token", ""), None)
            if upload is None or upload["blob"] is None or upload["user"] != user:
                raise ApiError(400, "invalid or unfinished upload token")
            if upload["name"] in out:
                raise ApiError(400, f"duplicate file name {upload['name']}")
            out[upload["name"]] = upload["blob"]
        return out

    # -- datasets --------------------------------------------------------------------------
    def _dataset(self, user: str, req: dict, slug_field: str = "datasetSlug") -> Dataset:
        ref = f"{req.get('ownerSlug', '')}/{req.get(slug_field, '')}"
        ds = self.api.datasets.get(ref)
        if ds is None or (ds.private and ds.owner != user):
            raise ApiError(404, f"Dataset {ref} not found")
        return ds

    def _rpc_CreateDataset(self, user: str, req: dict) -> None:
        owner, slug, title = req.get("ownerSlug") or user, req.get("slug", ""), req.get("title", "")
        ref = f"{owner}/{slug}"
        error = None
        if owner != user:
            error = f"You cannot create datasets for {owner}"
        elif not (6 <= len(slug) <= 50) or not SLUG.match(slug):
            error = "The dataset slug must be between 6 and 50 characters"
        elif not (6 <= len(title) <= 50):
            error = "The dataset title must be between 6 and 50 characters"
        elif ref in self.api.datasets:
            error = f'The requested title "{title}" is already in use by a dataset.'
        if error:
            return self._json(200, {"status": "error", "error": error})
        files = self._files_from_tokens(user, req.get("files", []))
        ds = Dataset(owner, slug, title, bool(req.get("isPrivate", False)))
        ds.versions.append(Version(1, "Initial release", files, self.api.ready_after))
        self.api.datasets[ref] = ds
        self._json(200, {"ref": ref, "url": f"{self.api.url}/datasets/{ref}", "status": "ok",
                         "error": ""})

    def _rpc_CreateDatasetVersion(self, user: str, req: dict) -> None:
        ds = self._dataset(user, req)
        if ds.owner != user:
            raise ApiError(403, "You do not have permission to update this dataset")
        body = req.get("body") or {}
        files = self._files_from_tokens(user, body.get("files", []))
        ds.versions.append(Version(len(ds.versions) + 1, body.get("versionNotes", ""), files,
                                   self.api.ready_after))
        ref = f"{ds.owner}/{ds.slug}"
        self._json(200, {"ref": ref, "url": f"{self.api.url}/datasets/{ref}", "status": "ok",
                         "error": ""})

    def _rpc_GetDatasetStatus(self, user: str, req: dict) -> None:
        ds = self._dataset(user, req)
        latest = ds.versions[-1]
        if not latest.ready:
            latest.polls_left -= 1
            return self._json(200, {"status": "BLOBS_RECEIVED"})
        self._json(200, {"status": "READY"})

    def _rpc_ListDatasetFiles(self, user: str, req: dict) -> None:
        ds = self._dataset(user, req)
        version = ds.latest_ready()
        names = sorted(version.files) if version else []
        start = int(req.get("pageToken") or 0)
        size = min(int(req.get("pageSize") or 20), 200)
        page = names[start:start + size]
        ref = f"{ds.owner}/{ds.slug}"
        out: dict = {"datasetFiles": [
            {"ref": f"{ref}/{n}", "datasetRef": ref, "ownerRef": ds.owner, "name": n,
             "creationDate": "2026-01-01T00:00:00Z",
             "totalBytes": len(self.api.blobs[version.files[n]])} for n in page]}
        if start + size < len(names):
            out["nextPageToken"] = str(start + size)
        self._json(200, out)

    def _rpc_DownloadDataset(self, user: str, req: dict) -> None:
        ds = self._dataset(user, req)
        version = ds.latest_ready()
        name = req.get("fileName")
        if version is None or not name or name not in version.files:
            raise ApiError(404, f"File {name} not found in {ds.owner}/{ds.slug}")
        blob = version.files[name]
        self._send(302, b"", {"Location": f"{self.api.url}/storage/{blob}/{name}?sig=fake"})

    def _storage(self, blob: str, query: dict) -> None:
        self.api.storage_auth_seen.append(self.headers.get("Authorization"))
        data = self.api.blobs.get(blob)
        if data is None or query.get("sig") != ["fake"]:
            raise ApiError(404, "no such object")
        spec = self.headers.get("Range")
        if not spec:
            return self._send(200, data, {"Accept-Ranges": "bytes"}, "application/octet-stream")
        m = re.fullmatch(r"bytes=(\d*)-(\d*)", spec.strip())
        size = len(data)
        if not m or m.group(1) == m.group(2) == "":
            raise ApiError(400, "bad range")
        if m.group(1) == "":
            start, end = max(0, size - int(m.group(2))), size - 1
        else:
            start = int(m.group(1))
            end = min(size - 1, int(m.group(2))) if m.group(2) else size - 1
        if start >= size or start > end:
            return self._send(416, b"", {"Content-Range": f"bytes */{size}"})
        self._send(206, data[start:end + 1], {"Content-Range": f"bytes {start}-{end}/{size}"},
                   "application/octet-stream")


@contextlib.contextmanager
def serve_fake_kaggle(users: dict[str, str] | None = None, *,
                      ready_after: int = 1) -> Iterator[FakeKaggle]:
    """Run a FakeKaggle on 127.0.0.1 (port 0) in a thread; yields it with ``.url`` set."""
    api = FakeKaggle(users or {"alice": "alice-key"}, ready_after=ready_after)
    with serve(api, Handler, "api") as url:
        api.url = url
        yield api
