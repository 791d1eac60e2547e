"""``hf://datasets/OWNER/NAME[/PREFIX]``: a repository in a private Hugging Face dataset repo.

Each store key is one file in the repo (``packs/ab/<id>`` stays ``packs/ab/<id>``, so packs
are already sharded into folders of at most 256 per level and no folder nears the Hub's
10k-entries-per-folder guidance). Writes are git commits, which are expensive and rate
limited, so puts are *batched*: ``put`` spools the bytes to a local temp dir and ``flush``
commits them in put order, several commits for a big push, each bounded by
``commit_bytes`` and ``commit_files``. The repository writes the snapshot object last and
flushes, so the snapshot always lands in the last commit: a push killed between commits
leaves packs without a snapshot (garbage ``prune`` removes), never a snapshot without packs.
A commit is atomic on the Hub: all its files appear together or none do.

Reads go to the resolve endpoint (``/datasets/OWNER/NAME/resolve/REV/PATH``) with HTTP
ranges for ``get_range``; this store object also sees its own not-yet-flushed puts and
deletes. The repo is created private on the first flush if it does not exist.

Options (URL query or keywords): ``endpoint`` (else ``HF_ENDPOINT``, else huggingface.co),
``revision`` (branch, default ``main``), ``commit_bytes``, ``commit_files``.
Token, first match: tether secret ``store:hf:token``, then what huggingface_hub finds itself
(``HF_TOKEN``, the token saved by ``hf auth login``). Never argv.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tether import secrets
from tether.errors import (
    AuthError,
    ConnectError,
    LocalIOError,
    NotFoundError,
    PeerError,
    RateLimitedError,
    TetherError,
    UsageError,
)
from tether.snapshot.stores._options import (
    merge_options,
    number_option,
    query_options,
    shown_url,
)
from tether.snapshot.stores.base import StoreCapabilities, check_key, check_prefix

MiB = 1024 * 1024
# The Hub refuses single files above 50 GB.
CAPABILITIES = StoreCapabilities(atomic_put=True, consistent_list=True, batched=True,
                                 max_object_size=50 * 1000 * 1000 * 1000)
_OPTIONS = {"endpoint", "revision", "commit_bytes", "commit_files"}
_NAME_OK = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.")


@dataclass(frozen=True)
class HfLocation:
    repo_id: str      # "OWNER/NAME"
    prefix: str       # "" or "sub/dir/"
    options: dict[str, str]


def parse_url(url: str) -> HfLocation:
    """``hf://datasets/alice/ws/sub?revision=main`` -> HfLocation. Pure."""
    parts = urlsplit(url)
    if parts.scheme != "hf":
        raise UsageError(f"not a Hugging Face store URL: {shown_url(url)!r}", "use hf://datasets/OWNER/NAME")
    segments = [s for s in (parts.netloc + unquote(parts.path)).split("/") if s]
    if len(segments) < 3 or segments[0] != "datasets":
        raise UsageError(f"not a Hugging Face dataset URL: {shown_url(url)!r}",
                         "use hf://datasets/OWNER/NAME (snapshots live in dataset repos)")
    owner, name = segments[1], segments[2]
    for part in (owner, name):
        if not part or set(part) - _NAME_OK or part[0] in "-." or part.endswith((".", "-")) \
                or ".." in part or "--" in part or len(part) > 96:
            raise UsageError(f"invalid Hugging Face repo id {owner}/{name!r}",
                             "names are letters, digits, '-', '_' and '.', at most 96 long, "
                             "not starting or ending with '-' or '.'")
    prefix = "/".join(segments[3:])
    if prefix:
        check_key(prefix)
        prefix += "/"
    return HfLocation(f"{owner}/{name}", prefix, query_options("hf", parts.query, _OPTIONS))


def open(url: str, **options: Any) -> HfStore:
    loc = parse_url(url)
    return HfStore(loc.repo_id, loc.prefix, **merge_options("hf", loc.options, options, _OPTIONS))


def plan_commits(sizes: list[tuple[str, int]], max_bytes: int, max_files: int
                 ) -> list[list[str]]:
    """Split (key, size) in put order into batches of at most ``max_files`` keys and
    ``max_bytes`` bytes (a single bigger object gets a batch of its own). Pure."""
    batches: list[list[str]] = []
    current: list[str] = []
    used = 0
    for key, size in sizes:
        if current and (len(current) >= max_files or used + size > max_bytes):
            batches.append(current)
            current, used = [], 0
        current.append(key)
        used += size
    if current:
        batches.append(current)
    return batches


class HfStore:
    capabilities = CAPABILITIES

    def __init__(self, repo_id: str, prefix: str = "", *, endpoint: str | None = None,
                 revision: str = "main", commit_bytes: int | str = 512 * MiB,
                 commit_files: int | str = 200) -> None:
        from huggingface_hub import HfApi

        self.repo_id = repo_id
        self.prefix = prefix
        self.revision = revision
        self.url = f"hf://datasets/{repo_id}" + (f"/{prefix.rstrip('/')}" if prefix else "")
        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT")
                         or "https://huggingface.co").rstrip("/")
        self.commit_bytes = number_option("commit_bytes", commit_bytes, minimum=1)
        self.commit_files = number_option("commit_files", commit_files, minimum=1)
        self._token = secrets.get_secret("store:hf:token") or None
        self._api = HfApi(endpoint=self.endpoint, token=self._token)
        self._lock = threading.Lock()          # guards _pending and the spool
        self._commit_lock = threading.Lock()   # one commit sequence at a time
        self._spool: Path | None = None
        self._spool_seq = itertools.count()
        self._sizes: dict[str, int] = {}               # key -> spooled size, for batching
        self._pending_total = 0
        self._garbage: list[Path] = []                 # superseded spool files
        self._pending: dict[str, Path | None] = {}   # key -> spooled file, None = delete
        self._repo_ready = False
        self.commits_made = 0

    # -- helpers ---------------------------------------------------------------------------
    def _path(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _spool_file(self, key: str) -> Path:
        if self._spool is None:
            self._spool = Path(tempfile.mkdtemp(prefix="tether-hf-spool-"))
        # A fresh name per put: a commit in flight may still be reading the previous one.
        return self._spool / f"{next(self._spool_seq)}-{key.replace('/', '~')}"

    def _headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        from huggingface_hub.utils import build_hf_headers
        headers = build_hf_headers(token=self._token, library_name="tether")
        headers.update(extra or {})
        return headers

    def _resolve_url(self, key: str) -> str:
        from huggingface_hub import hf_hub_url
        return hf_hub_url(self.repo_id, self._path(key), repo_type="dataset",
                          revision=self.revision, endpoint=self.endpoint)

    def _request(self, method: str, key: str, headers: dict[str, str] | None = None) -> Any:
        from huggingface_hub.utils import get_session, hf_raise_for_status
        try:
            # huggingface_hub's shared session follows redirects (to the CDN for LFS/Xet).
            response = get_session().request(method, self._resolve_url(key),
                                             headers=self._headers(headers), timeout=60.0)
            if response.status_code == 416:
                return response
            hf_raise_for_status(response)
            return response
        except Exception as exc:
            raise _translate(exc, f"{method.lower()} {key}", self) from exc

    # -- Store -----------------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        self._path(key)
        with self._lock:
            target = self._spool_file(key)
            try:
                target.write_bytes(data)
            except OSError as exc:
                raise LocalIOError(f"could not spool {key}: {exc.strerror}") from exc
            self._set_pending(key, target)
        self._maybe_commit()

    def put_file(self, key: str, path: Path) -> None:
        self._path(key)
        with self._lock:
            target = self._spool_file(key)
            try:  # the caller may delete its file once put_file returns: keep our own copy
                shutil.copyfile(path, target)
            except OSError as exc:
                raise LocalIOError(f"could not spool {path}: {exc.strerror}") from exc
            self._set_pending(key, target)
        self._maybe_commit()

    def _set_pending(self, key: str, target: Path | None) -> None:
        old = self._pending.pop(key, None)   # re-insert: a re-put moves to the end of the order
        if old is not None:
            # A commit in flight may be reading it: removed once no commit runs.
            self._garbage.append(old)
            self._pending_total -= self._sizes.pop(key, 0)
        self._pending[key] = target
        if target is not None:
            self._sizes[key] = target.stat().st_size
            self._pending_total += self._sizes[key]

    def get(self, key: str) -> bytes:
        check_key(key)
        with self._lock:
            if key in self._pending:
                return self._pending_bytes(key)
        return self._request("GET", key).content

    def _pending_bytes(self, key: str) -> bytes:
        spooled = self._pending[key]
        if spooled is None:
            raise NotFoundError(f"{key} not found in {self.url} (deleted, not yet flushed)")
        return spooled.read_bytes()

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        check_key(key)
        with self._lock:
            if key in self._pending:
                data = self._pending_bytes(key)
                start = max(0, len(data) + offset) if offset < 0 else offset
                return data[start:start + max(0, length)]
        if length <= 0:
            if not self.exists(key):
                raise NotFoundError(f"{key} not found in {self.url}")
            return b""
        spec = f"bytes=-{-offset}" if offset < 0 else f"bytes={offset}-{offset + length - 1}"
        response = self._request("GET", key, {"Range": spec})
        if response.status_code == 416:
            return b""
        data = response.content
        if response.status_code == 200:  # a server that ignores Range sends everything
            start = max(0, len(data) + offset) if offset < 0 else offset
            data = data[start:]
        return data[:length]

    def exists(self, key: str) -> bool:
        check_key(key)
        with self._lock:
            if key in self._pending:
                return self._pending[key] is not None
        try:
            self._request("HEAD", key)
        except NotFoundError:
            return False
        return True

    def list(self, prefix: str = "") -> list[str]:
        check_prefix(prefix)
        keys = set(self._remote_list(prefix))
        with self._lock:
            for key, spooled in self._pending.items():
                if key.startswith(prefix):
                    if spooled is None:
                        keys.discard(key)
                    else:
                        keys.add(key)
        return sorted(keys)

    def _remote_list(self, prefix: str) -> list[str]:
        from huggingface_hub.hf_api import RepoFile
        full = self.prefix + prefix
        folder = full.rsplit("/", 1)[0] if "/" in full else ""
        try:
            entries = self._api.list_repo_tree(self.repo_id, path_in_repo=folder or None,
                                               recursive=True, repo_type="dataset",
                                               revision=self.revision)
            paths = [e.path for e in entries if isinstance(e, RepoFile)]
        except Exception as exc:
            err = _translate(exc, f"list {prefix or '/'}", self)
            if isinstance(err, NotFoundError):  # no repo or no such folder yet: empty
                return []
            raise err from exc
        # Files the Hub adds itself (.gitattributes) are not keys: keep valid key names only.
        return [p[len(self.prefix):] for p in paths
                if p.startswith(full) and _is_key(p[len(self.prefix):])]

    def delete(self, key: str) -> None:
        self._path(key)
        with self._lock:
            self._set_pending(key, None)
        self._maybe_commit()

    def flush(self) -> None:
        self._commit_pending(everything=True)

    def close(self) -> None:
        with self._lock:
            if self._spool is not None:
                shutil.rmtree(self._spool, ignore_errors=True)
                self._spool = None
            self._pending.clear()
            self._sizes.clear()
            self._garbage.clear()
            self._pending_total = 0

    # -- commits ---------------------------------------------------------------------------
    def _maybe_commit(self) -> None:
        with self._lock:
            full = (len(self._pending) >= self.commit_files
                    or self._pending_total >= self.commit_bytes)
        if full:
            self._commit_pending(everything=False)

    def _pending_sizes(self) -> list[tuple[str, int]]:
        return [(k, self._sizes.get(k, 0)) for k in self._pending]

    def _commit_pending(self, everything: bool) -> None:
        """Commit pending operations in put order; without ``everything``, only full batches
        (the tail waits for more puts or ``flush``)."""
        with self._commit_lock:
            try:
                self._commit_pending_locked(everything)
            finally:
                with self._lock:
                    garbage, self._garbage = self._garbage, []
                for path in garbage:
                    path.unlink(missing_ok=True)

    def _commit_pending_locked(self, everything: bool) -> None:
        with self._lock:
            batches = plan_commits(self._pending_sizes(), self.commit_bytes, self.commit_files)
            snapshot = {k: self._pending[k] for batch in batches for k in batch}
        if not batches:
            return
        if not everything:
            batches = batches[:-1]
        self._ensure_repo()
        for batch in batches:
            self._commit_batch([(k, snapshot[k]) for k in batch])
            with self._lock:
                for key in batch:
                    # A newer put or delete of the same key stays pending.
                    if self._pending.get(key, "gone") is snapshot[key]:
                        del self._pending[key]
                        self._pending_total -= self._sizes.pop(key, 0)
                        if snapshot[key] is not None:
                            snapshot[key].unlink(missing_ok=True)

    def _ensure_repo(self) -> None:
        if self._repo_ready:
            return
        try:
            self._api.create_repo(self.repo_id, repo_type="dataset", private=True,
                                  exist_ok=True)
        except Exception as exc:
            raise _translate(exc, f"create {self.repo_id}", self) from exc
        self._repo_ready = True

    def _commit_batch(self, ops: list[tuple[str, Path | None]]) -> None:
        from huggingface_hub import CommitOperationAdd, CommitOperationDelete

        deletes = [k for k, p in ops if p is None]
        # Deleting an absent path fails the whole commit on the Hub: drop those first, so
        # delete stays idempotent (and a retried flush after a lost answer still commits).
        present = set(self._remote_list("")) if deletes else set()
        operations: list[Any] = [
            CommitOperationAdd(path_in_repo=self._path(k), path_or_fileobj=str(p))
            for k, p in ops if p is not None]
        operations += [CommitOperationDelete(path_in_repo=self._path(k))
                       for k in deletes if k in present]
        if not operations:
            return
        adds = len(operations) - sum(1 for k in deletes if k in present)
        message = f"tether: {adds} object(s) added, {len(operations) - adds} deleted"
        try:
            self._api.create_commit(self.repo_id, operations=operations,
                                    commit_message=message, repo_type="dataset",
                                    revision=self.revision)
        except Exception as exc:
            raise _translate(exc, f"commit to {self.repo_id}", self) from exc
        self.commits_made += 1


def _is_transport_error(exc: BaseException) -> bool:
    """A connection-level failure of whichever HTTP client this huggingface_hub uses
    (httpx2 in 2.x, httpx in 1.x, requests before)."""
    clients = ("httpx", "httpx2", "httpcore", "requests", "urllib3")
    names = ("TransportError", "ConnectionError", "Timeout", "TimeoutException")
    return any(c.__module__.split(".")[0] in clients and c.__name__ in names
               for c in type(exc).__mro__)


def _is_key(name: str) -> bool:
    try:
        check_key(name)
    except UsageError:
        return False
    return True


def _translate(exc: BaseException, what: str, store: HfStore | None = None) -> TetherError:
    """Map huggingface_hub and HTTP-client exceptions to the tether error tree."""
    from huggingface_hub import errors as hfe

    if isinstance(exc, TetherError):
        return exc
    token_hint = "set HF_TOKEN, run `hf auth login`, or store the tether secret store:hf:token"
    if isinstance(exc, hfe.OfflineModeIsEnabled):
        return ConnectError(f"{what}: huggingface_hub is in offline mode",
                            "unset HF_HUB_OFFLINE to reach the Hub")
    if isinstance(exc, hfe.LocalTokenNotFoundError):
        return AuthError(f"{what}: no Hugging Face token", token_hint)
    if isinstance(exc, hfe.HfHubHTTPError):
        response = exc.response
        status = response.status_code if response is not None else 0
        if status == 429:
            retry_after = response.headers.get("Retry-After") if response is not None else None
            return RateLimitedError(f"{what}: the Hub asks to slow down (429)",
                                    retry_after=_seconds(retry_after))
        if status in (401, 403) or isinstance(exc, hfe.GatedRepoError):
            return AuthError(f"{what}: the Hub refused the credentials ({status})", token_hint)
        if status == 404 or isinstance(exc, (hfe.RepositoryNotFoundError,
                                             hfe.RemoteEntryNotFoundError,
                                             hfe.RevisionNotFoundError)):
            return NotFoundError(f"{what}: not found on {store.url if store else 'the Hub'}")
        if status == 412:
            return PeerError(f"{what}: another commit landed meanwhile (412)")
        return PeerError(f"{what}: Hub error {status}: {exc.server_message or exc}")
    if _is_transport_error(exc):
        return ConnectError(f"{what}: {exc}", "check the network and HF_ENDPOINT")
    if isinstance(exc, OSError):
        return LocalIOError(f"{what}: {exc}")
    return PeerError(f"{what}: unexpected {type(exc).__name__}: {exc}")


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
