"""``kaggle://OWNER/SLUG``: a repository kept as a private Kaggle dataset.

Kaggle datasets are versioned, and **a new version replaces the whole file set** (the API has
no "add a file" call). So this store keeps one rule: *every version is a complete repository*.
Puts and deletes are buffered (spooled to a temp dir); ``flush`` waits until no version is
being processed, reads the latest version's file list, downloads the objects it must carry
over, uploads the full set, looks at the list once more (carrying over what a version made
meanwhile added) and creates one new version (the first flush creates the dataset), then
waits until Kaggle reports it READY, so a new store object reads it. A reader always sees
one whole version: old or new, never a mix.

The price: each flush uploads the whole repository, and a push makes 2 to 4 versions
(docs/snapshot-stores.md, "Cost"). Kaggle suits small repositories (a few GB).

Object names: a key's "/" becomes "~" (``packs/ab/<id>`` -> ``packs~ab~<id>``): Kaggle keeps
files flat unless uploads describe directories, and "~" never occurs in a key (``check_key``)
and needs no URL escaping. Names starting with "~" are the store's own (``~empty`` keeps a
version valid when every object was deleted: Kaggle refuses a version without files).

Wire: Kaggle's RPC API (``POST {endpoint}/v1/{service}/{method}``, JSON in camelCase, the
calls and fields kagglesdk makes), through httpx. The kaggle package is not used because its
endpoint can only be one of Kaggle's own hosts; this store's is an option, for tests and
proxies. Options (URL query or keywords): ``endpoint`` (else ``TETHER_KAGGLE_ENDPOINT``, else
``https://api.kaggle.com``), ``title`` (6-50 characters, default the slug), ``license``
(default ``unknown``), ``ready_timeout`` (seconds to wait for a version, default 900).

Credentials, first match: tether secrets ``store:kaggle:token`` (an API token, sent as
Bearer) or ``store:kaggle:username`` + ``store:kaggle:key``; env ``KAGGLE_API_TOKEN``; env
``KAGGLE_USERNAME`` + ``KAGGLE_KEY``; ``kaggle.json`` in ``KAGGLE_CONFIG_DIR`` or
``~/.kaggle``. Never argv.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import ssl
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from tether import secrets
from tether.errors import (
    AuthError,
    ConnectError,
    DeadlineError,
    LocalIOError,
    NotFoundError,
    PeerError,
    ProtocolError,
    RateLimitedError,
    UsageError,
)
from tether.snapshot.stores._options import (
    merge_options,
    number_option,
    query_options,
    shown_url,
)
from tether.snapshot.stores.base import StoreCapabilities, check_key, check_prefix

GB = 1000 * 1000 * 1000
# consistent_list is False: a version becomes readable only once Kaggle has processed it, and
# a concurrent writer's version replaces the file set (see docs/snapshot-stores.md).
CAPABILITIES = StoreCapabilities(atomic_put=True, consistent_list=False, batched=True,
                                 max_object_size=100 * GB)
DEFAULT_ENDPOINT = "https://api.kaggle.com"
EMPTY_MARKER = "~empty"
_OPTIONS = {"endpoint", "title", "license", "ready_timeout"}
# Rounds of "list, upload what is new, list again" before a version is made anyway: each
# round is needed only when another writer made a version while we were uploading.
SETTLE_ROUNDS = 3
_SLUG = re.compile(r"[a-z0-9]+(?:-[a-z0-9]+)*")
_OWNER = re.compile(r"[a-z0-9]+(?:[_-][a-z0-9]+)*")
_DATASETS = "datasets.DatasetApiService"
_BLOBS = "blobs.BlobApiService"


def check_slug(slug: str) -> str:
    """Kaggle's dataset slug rule (the kaggle CLI's own check): 6-50 characters of lowercase
    letters, digits and single inner hyphens. Pure."""
    if not 6 <= len(slug) <= 50:
        raise UsageError(f"the Kaggle dataset slug {slug!r} has {len(slug)} characters",
                         "a slug is 6 to 50 characters long")
    if not _SLUG.fullmatch(slug):
        raise UsageError(f"invalid Kaggle dataset slug {slug!r}",
                         "use lowercase letters, digits and single hyphens, not at either end")
    return slug


def parse_url(url: str) -> tuple[str, str, dict[str, str]]:
    """``kaggle://alice/my-workspace?title=...`` -> ("alice", "my-workspace", {...}). Pure."""
    parts = urlsplit(url)
    if parts.scheme != "kaggle" or not parts.netloc:
        raise UsageError(f"not a Kaggle store URL: {shown_url(url)!r}", "use kaggle://OWNER/SLUG")
    segments = [s for s in parts.path.split("/") if s]
    if len(segments) != 1:
        raise UsageError(f"not a Kaggle dataset URL: {shown_url(url)!r}", "use kaggle://OWNER/SLUG")
    owner, slug = parts.netloc, segments[0]
    if not _OWNER.fullmatch(owner):
        raise UsageError(f"invalid Kaggle user name {owner!r}",
                         "user names are lowercase letters, digits, '-' and '_'")
    check_slug(slug)
    return owner, slug, query_options("kaggle", parts.query, _OPTIONS)


def open(url: str, **options: Any) -> KaggleStore:
    owner, slug, query = parse_url(url)
    return KaggleStore(owner, slug, **merge_options("kaggle", query, options, _OPTIONS))


def key_to_name(key: str) -> str:
    return check_key(key).replace("/", "~")


def name_to_key(name: str) -> str | None:
    """The key a file name stands for; None for the store's own names and for files
    someone added by hand that no key could produce."""
    if name.startswith("~"):
        return None
    key = name.replace("~", "/")
    try:
        return check_key(key)
    except UsageError:
        return None


class KaggleStore:
    capabilities = CAPABILITIES

    def __init__(self, owner: str, slug: str, *, endpoint: str | None = None,
                 title: str | None = None, license: str = "unknown",
                 ready_timeout: float | str = 900.0, poll_interval: float = 0.5) -> None:
        self.owner, self.slug = owner, check_slug(slug)
        self.title = title or slug
        if not 6 <= len(self.title) <= 50:
            raise UsageError(f"the Kaggle dataset title {self.title!r} is not 6-50 characters")
        self.license = license
        self.url = f"kaggle://{owner}/{slug}"
        self.endpoint = (endpoint or os.environ.get("TETHER_KAGGLE_ENDPOINT")
                         or DEFAULT_ENDPOINT).rstrip("/")
        self.ready_timeout = number_option("ready_timeout", ready_timeout, minimum=0,
                                           kind=float)
        self.poll_interval = poll_interval
        timeout = httpx.Timeout(120.0, connect=10.0)
        tls = _tls_context()
        self._api = httpx.Client(timeout=timeout, headers={"User-Agent": "tether"}, verify=tls)
        # Signed storage URLs carry their own authorization: never send Kaggle credentials there.
        self._storage = httpx.Client(timeout=timeout, follow_redirects=True, verify=tls)
        self._auth: Any = None
        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._spool: Path | None = None
        self._spool_seq = itertools.count()
        self._garbage: list[Path] = []                  # superseded or carried-over files
        self._retained: dict[str, Path] = {}            # local copy of the last version written
        self._pending: dict[str, Path | None] = {}      # key -> spooled file, None = delete
        self._remote: dict[str, int] | None = None       # key -> size of the latest version
        self._dataset_exists: bool | None = None
        self.versions_made = 0

    # -- transport -------------------------------------------------------------------------
    def _credentials(self) -> Any:
        if self._auth is None:
            self._auth = _find_credentials()
        return self._auth

    def _rpc(self, service: str, method: str, body: dict, *, follow: bool = True) -> Any:
        what = f"kaggle {method} {self.owner}/{self.slug}"
        try:
            response = self._api.post(f"{self.endpoint}/v1/{service}/{method}", json=body,
                                      auth=self._credentials(), follow_redirects=False)
        except httpx.TransportError as exc:
            raise ConnectError(f"{what}: {exc}", "check the network and the endpoint") from exc
        _raise_for_status(response, what)
        if not follow:
            return response
        try:
            return response.json()
        except ValueError as exc:
            raise ProtocolError(f"{what}: the answer is not JSON") from exc

    def _download(self, key: str, range_header: str | None = None) -> Any:
        body = {"ownerSlug": self.owner, "datasetSlug": self.slug,
                "fileName": key_to_name(key), "raw": True}
        response = self._rpc(_DATASETS, "DownloadDataset", body, follow=False)
        if response.status_code in (301, 302, 303, 307, 308):
            location = urljoin(str(response.url), response.headers["Location"])
            headers = {"Range": range_header} if range_header else {}
            try:
                response = self._storage.get(location, headers=headers)
            except httpx.TransportError as exc:
                raise ConnectError(f"kaggle download {key}: {exc}") from exc
            if response.status_code != 416:
                _raise_for_status(response, f"kaggle download {key}")
        return response

    # -- remote state ----------------------------------------------------------------------
    def _list_remote(self) -> dict[str, int] | None:
        """Key -> size of the latest READY version; None when the dataset does not exist."""
        files: dict[str, int] = {}
        token: str | None = None
        while True:
            body: dict[str, Any] = {"ownerSlug": self.owner, "datasetSlug": self.slug,
                                    "pageSize": 200}
            if token:
                body["pageToken"] = token
            try:
                page = self._rpc(_DATASETS, "ListDatasetFiles", body)
            except NotFoundError:
                return None
            for item in page.get("datasetFiles") or []:
                key = name_to_key(item["name"])
                if key is not None:
                    files[key] = int(item.get("totalBytes") or 0)
            token = page.get("nextPageToken")
            if not token:
                return files

    def _remote_view(self, refresh: bool = False) -> dict[str, int]:
        if self._remote is None or refresh:
            remote = self._list_remote()
            self._dataset_exists = remote is not None
            self._remote = remote or {}
        return self._remote

    # -- Store -----------------------------------------------------------------------------
    def _spool_path(self, key: str) -> Path:
        if self._spool is None:
            self._spool = Path(tempfile.mkdtemp(prefix="tether-kaggle-spool-"))
        # A fresh name per put: a commit in flight may still be reading the previous one.
        return self._spool / f"{next(self._spool_seq)}-{key.replace('/', '~')}"

    def _set_pending(self, key: str, target: Path | None) -> None:
        old = self._pending.pop(key, None)
        if old is not None:   # a flush in flight may be reading it: removed after the flush
            self._garbage.append(old)
        self._pending[key] = target

    def put(self, key: str, data: bytes) -> None:
        check_key(key)
        with self._lock:
            target = self._spool_path(key)
            try:
                target.write_bytes(data)
            except OSError as exc:
                raise LocalIOError(f"could not spool {key}: {exc.strerror}") from exc
            self._set_pending(key, target)

    def put_file(self, key: str, path: Path) -> None:
        check_key(key)
        with self._lock:
            target = self._spool_path(key)
            try:
                shutil.copyfile(path, target)
            except OSError as exc:
                raise LocalIOError(f"could not spool {path}: {exc.strerror}") from exc
            self._set_pending(key, target)

    def _pending_data(self, key: str) -> bytes | None:
        """The buffered bytes of ``key``; None if not pending; NotFoundError if deleted."""
        with self._lock:
            if key not in self._pending:
                return None
            spooled = self._pending[key]
        if spooled is None:
            raise NotFoundError(f"{key} not found in {self.url} (deleted, not yet flushed)")
        return spooled.read_bytes()

    def get(self, key: str) -> bytes:
        check_key(key)
        data = self._pending_data(key)
        if data is not None:
            return data
        return self._download(key).content

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_key(key)
        data = self._pending_data(key)
        if data is not None:
            start = max(0, len(data) + offset) if offset < 0 else offset
            return data[start:start + max(0, length)]
        if length <= 0:
            if not self.exists(key):
                raise NotFoundError(f"{key} not found in {self.url}")
            return b""
        spec = f"bytes=-{-offset}" if offset < 0 else f"bytes={offset}-{offset + length - 1}"
        response = self._download(key, spec)
        if response.status_code == 416:
            return b""
        data = response.content
        if response.status_code == 200:   # storage that ignores Range sends everything
            start = max(0, len(data) + offset) if offset < 0 else offset
            data = data[start:]
        return data[:length]

    def exists(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            if key in self._pending:
                return self._pending[key] is not None
        return key in self._remote_view()

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        keys = {k for k in self._remote_view(refresh=True) if k.startswith(prefix)}
        with self._lock:
            for key, spooled in self._pending.items():
                if key.startswith(prefix):
                    (keys.discard if spooled is None else keys.add)(key)
        return sorted(keys)

    def delete(self, key: str) -> None:
        check_key(key)
        with self._lock:
            self._set_pending(key, None)

    def flush(self) -> None:
        with self._flush_lock:
            try:
                self._flush_locked()
            finally:
                with self._lock:
                    garbage, self._garbage = self._garbage, []
                for path in garbage:
                    path.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            if self._spool is not None:
                shutil.rmtree(self._spool, ignore_errors=True)
                self._spool = None
            self._pending.clear()
            self._garbage.clear()
            self._retained.clear()
        self._api.close()
        self._storage.close()

    # -- versions --------------------------------------------------------------------------
    def _flush_locked(self) -> None:
        with self._lock:
            pending = dict(self._pending)
        if not pending:
            return
        tokens: dict[tuple[str, Path], str] = {}   # (key, source) -> upload token
        carried: dict[str, Path] = {}              # key -> its copy, downloaded this flush

        def carry(key: str, size: int) -> Path:
            # a later round must not download again what an earlier one already has
            path = carried.get(key)
            if path is None or path.stat().st_size != size:
                path = carried[key] = self._carry_over(key, size)
            return path

        for _ in range(SETTLE_ROUNDS):
            # A version another writer made is listed only once Kaggle has processed it:
            # wait for that before reading the list, or ours would drop its objects.
            self._wait_processed()
            remote = self._remote_view(refresh=True)
            final = {k for k in remote if pending.get(k, "keep") is not None}
            final |= {k for k, p in pending.items() if p is not None}
            if final == set(remote) and not any(p is not None for p in pending.values()):
                self._forget(pending)   # only deletes of absent keys: nothing to write
                return
            sources = {key: pending.get(key) or carry(key, remote[key])
                       for key in sorted(final)}
            for key, source in sources.items():
                if (key, source) not in tokens:
                    tokens[key, source] = self._upload(key_to_name(key), source)
            # Uploading the whole repository takes a while: if another writer made a version
            # meanwhile, carry its objects over too (one more round uploads only those).
            # RACE: a version made between this last look and ours still drops what it
            # added; docs/snapshot-stores.md says how the repository layer copes.
            self._wait_processed()
            if (self._list_remote() or {}) == remote:
                break
        files = [{"token": tokens[key, source]} for key, source in sources.items()]
        if not final:
            files.append({"token": self._upload(EMPTY_MARKER, self._marker())})
        self._create_version(files, len(final))
        self._wait_ready()
        self.versions_made += 1
        self._remote = {k: p.stat().st_size for k, p in sources.items()}
        self._retain(sources)
        self._forget(pending, keep=set(sources.values()))

    def _retain(self, sources: dict[str, Path]) -> None:
        """Keep the local copy of the version just written, so the next flush of this store
        object re-uploads from disk instead of downloading it all again."""
        keep = set(sources.values())
        with self._lock:
            self._garbage = [p for p in self._garbage if p not in keep]
            self._garbage += [p for p in self._retained.values() if p not in keep]
            self._retained = dict(sources)

    def _forget(self, flushed: dict[str, Path | None], keep: set[Path] = frozenset()) -> None:
        with self._lock:
            for key, spooled in flushed.items():
                if self._pending.get(key, "gone") is spooled:   # not re-put meanwhile
                    del self._pending[key]
                    if spooled is not None and spooled not in keep:
                        spooled.unlink(missing_ok=True)

    def _carry_over(self, key: str, size: int) -> Path:
        cached = self._retained.get(key)
        # Keys are content-addressed or unique, so a same-sized local copy is the object.
        if cached is not None and cached.exists() and cached.stat().st_size == size:
            return cached
        target = self._spool_path("carry/" + key)
        with self._lock:
            self._garbage.append(target)
        target.write_bytes(self._download(key).content)
        return target

    def _marker(self) -> Path:
        target = self._spool_path("marker")
        with self._lock:
            self._garbage.append(target)
        target.write_bytes(b"tether: this repository version has no objects\n")
        return target

    def _upload(self, name: str, path: Path) -> str:
        size = path.stat().st_size
        start = self._rpc(_BLOBS, "StartBlobUpload", {
            "type": "DATASET", "name": name, "contentLength": size,
            "lastModifiedEpochSeconds": int(path.stat().st_mtime)})
        try:
            with path.open("rb") as fh:   # streamed: packs are tens of MB
                response = self._storage.put(start["createUrl"], content=fh,
                                             headers={"Content-Length": str(size)})
        except httpx.TransportError as exc:
            raise ConnectError(f"kaggle upload {name}: {exc}") from exc
        except KeyError as exc:
            raise ProtocolError("kaggle StartBlobUpload: no createUrl in the answer") from exc
        _raise_for_status(response, f"kaggle upload {name}")
        return start["token"]

    def _create_version(self, files: list[dict], count: int) -> None:
        if self._dataset_exists:
            answer = self._rpc(_DATASETS, "CreateDatasetVersion", {
                "ownerSlug": self.owner, "datasetSlug": self.slug,
                "body": {"versionNotes": f"tether: repository with {count} objects",
                         "deleteOldVersions": False, "files": files}})
        else:
            answer = self._rpc(_DATASETS, "CreateDataset", {
                "ownerSlug": self.owner, "slug": self.slug, "title": self.title,
                "licenseName": self.license, "isPrivate": True, "files": files})
        if (answer.get("status") or "ok").lower() != "ok" or answer.get("error"):
            error = answer.get("error") or answer.get("status")
            raise PeerError(f"kaggle refused the new version of {self.owner}/{self.slug}: {error}")
        self._dataset_exists = True

    def _wait_processed(self) -> None:
        """Wait until no version is being processed: another writer's version is listed
        (and so carried over) only once Kaggle has finished with it. A version that failed
        is never listed: nothing to wait for."""
        try:
            self._wait_status(("READY", "FAILED", "DELETED"))
        except NotFoundError:
            return   # no dataset yet

    def _wait_ready(self) -> None:
        status = self._wait_status(("READY", "FAILED", "DELETED"))
        if status != "READY":
            raise PeerError(f"kaggle could not process the new version ({status})",
                            "run the push again; the previous version is unchanged")

    def _wait_status(self, final: tuple[str, ...]) -> str:
        deadline = time.monotonic() + self.ready_timeout
        delay = self.poll_interval
        while True:
            status = self._rpc(_DATASETS, "GetDatasetStatus",
                               {"ownerSlug": self.owner, "datasetSlug": self.slug}).get("status")
            if status in final:
                return status
            if time.monotonic() + delay > deadline:
                raise DeadlineError(f"kaggle did not finish processing {self.url} in time",
                                    "the version may still appear; run the push again later")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)


def _raise_for_status(response: Any, what: str) -> None:
    status = response.status_code
    message = ""
    if "json" in response.headers.get("Content-Type", ""):
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            message = str(body.get("message") or "")
            if isinstance(body.get("code"), int) and body["code"] >= 400:
                status = body["code"]
    if status < 400:
        return
    detail = f"{what}: {message or response.reason_phrase} ({status})"
    if status == 401:
        raise AuthError(detail, "check KAGGLE_USERNAME/KAGGLE_KEY, kaggle.json or the tether "
                                "secrets store:kaggle:username and store:kaggle:key")
    if status == 403:
        raise AuthError(detail, "the account lacks access to this dataset")
    if status == 404:
        raise NotFoundError(detail)
    if status == 429:
        raise RateLimitedError(detail, retry_after=_seconds(response.headers.get("Retry-After")))
    raise PeerError(detail)


_TLS: list[ssl.SSLContext] = []


def _tls_context() -> ssl.SSLContext:
    """One verifying TLS context for every client: building one (loading the CA bundle)
    costs ~0.15 s, which httpx would otherwise pay per client."""
    if not _TLS:
        import certifi
        cafile = os.environ.get("SSL_CERT_FILE") or certifi.where()
        _TLS.append(ssl.create_default_context(cafile=cafile))
    return _TLS[0]


def _find_credentials() -> Any:
    token = secrets.get_secret("store:kaggle:token")
    user, key = secrets.get_secret("store:kaggle:username"), secrets.get_secret("store:kaggle:key")
    if token:
        return _Bearer(token)
    if user and key:
        return httpx.BasicAuth(user, key)
    if os.environ.get("KAGGLE_API_TOKEN"):
        return _Bearer(os.environ["KAGGLE_API_TOKEN"])
    if os.environ.get("KAGGLE_USERNAME") and os.environ.get("KAGGLE_KEY"):
        return httpx.BasicAuth(os.environ["KAGGLE_USERNAME"], os.environ["KAGGLE_KEY"])
    folder = Path(os.environ.get("KAGGLE_CONFIG_DIR") or Path.home() / ".kaggle")
    try:
        data = json.loads((folder / "kaggle.json").read_text())
        return httpx.BasicAuth(data["username"], data["key"])
    except FileNotFoundError:
        pass
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AuthError(f"could not read {folder / 'kaggle.json'}: {exc}",
                        "it must be JSON with \"username\" and \"key\"") from exc
    raise AuthError("no Kaggle credentials found",
                    "set KAGGLE_USERNAME and KAGGLE_KEY, put kaggle.json in ~/.kaggle, or store "
                    "the tether secrets store:kaggle:username and store:kaggle:key")


class _Bearer(httpx.Auth):
    """httpx auth flow for a Kaggle API token."""

    def __init__(self, token: str) -> None:
        self._token = token

    def auth_flow(self, request: Any) -> Any:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


