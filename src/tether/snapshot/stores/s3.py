"""``s3://bucket/prefix``: a repository in an S3-compatible bucket (AWS, Cloudflare R2, MinIO,
Hugging Face storage buckets through their S3 gateway), through boto3.

Options come from the URL query or keyword arguments (keywords win):
``endpoint`` (or env ``TETHER_S3_ENDPOINT_URL``, then boto3's own ``AWS_ENDPOINT_URL_S3``),
``region``, ``profile`` (an AWS shared-config profile), ``addressing`` (``path`` or
``virtual``; path-style is the default for a custom endpoint, which MinIO and most gateways
need), ``multipart_threshold`` and ``multipart_chunksize`` (bytes).

Credentials, first match wins: a named ``profile``; tether secrets
``store:s3:<bucket>:access_key`` + ``store:s3:<bucket>:secret_key`` (+ optional
``:session_token``); boto3's default chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``,
``AWS_PROFILE``, shared files, instance roles). Never argv.

Every S3 write of one object is atomic (a reader sees the old object, the new one or none) and
listing is strongly consistent on AWS, R2 and MinIO, so this store is not batched. botocore's
own retries are off: ``RetryingStore`` is the one retry layer, so attempts do not multiply.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from tether import secrets
from tether.errors import (
    AuthError,
    ConnectError,
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
# S3 caps one object at 5 TiB (multipart); R2 and MinIO accept at least as much.
CAPABILITIES = StoreCapabilities(atomic_put=True, consistent_list=True, batched=False,
                                 max_object_size=5 * 1024 * 1024 * MiB)
_OPTIONS = {"endpoint", "region", "profile", "addressing", "multipart_threshold",
            "multipart_chunksize"}

_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
               "InvalidToken", "TokenRefreshRequired", "AllAccessDisabled", "AccountProblem",
               "InvalidClientTokenId", "UnrecognizedClientException", "Forbidden", "403"}
_THROTTLE_CODES = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded",
                   "TooManyRequests", "TooManyRequestsException", "RequestThrottled",
                   "ProvisionedThroughputExceededException", "429"}
_MISSING_CODES = {"NoSuchKey", "NotFound", "404"}


def open(url: str, **options: Any) -> S3Store:
    """Open ``s3://bucket[/prefix][?endpoint=...&region=...]``."""
    bucket, prefix, query = parse_url(url)
    return S3Store(bucket, prefix, **merge_options("s3", query, options, _OPTIONS))


def parse_url(url: str) -> tuple[str, str, dict[str, str]]:
    """``s3://bucket/a/b?region=x`` -> ("bucket", "a/b/", {"region": "x"}). Pure."""
    parts = urlsplit(url)
    if parts.scheme != "s3" or not parts.netloc:
        raise UsageError(f"not an s3 store URL: {shown_url(url)!r}", "use s3://BUCKET/PREFIX")
    bucket = parts.netloc
    if not (3 <= len(bucket) <= 63) or not all(c.isalnum() or c in ".-_" for c in bucket):
        raise UsageError(f"invalid bucket name {bucket!r}",
                         "bucket names are 3-63 letters, digits, '.', '-' or '_'")
    prefix = unquote(parts.path).strip("/")
    if prefix:
        check_key(prefix)
        prefix += "/"
    return bucket, prefix, query_options("s3", parts.query, _OPTIONS)


class S3Store:
    capabilities = CAPABILITIES

    def __init__(self, bucket: str, prefix: str = "", *, endpoint: str | None = None,
                 region: str | None = None, profile: str | None = None,
                 addressing: str | None = None, multipart_threshold: int | str = 64 * MiB,
                 multipart_chunksize: int | str = 16 * MiB) -> None:
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config

        self.bucket = bucket
        self.prefix = prefix
        endpoint = endpoint or os.environ.get("TETHER_S3_ENDPOINT_URL") or None
        self.url = f"s3://{bucket}/{prefix}".rstrip("/")
        if addressing not in (None, "path", "virtual", "auto"):
            raise UsageError(f"invalid addressing {addressing!r}", "use path or virtual")
        style = addressing or ("path" if endpoint else "auto")
        # boto3 >= 1.36 adds CRC32 checksums as aws-chunked trailers by default, which R2,
        # older MinIO and other gateways reject (often as a misleading 401/403): with a custom
        # endpoint, checksums are sent and checked only where the API requires them.
        checksums = "when_required" if endpoint else "when_supported"
        config = Config(retries={"mode": "standard", "total_max_attempts": 1},
                        connect_timeout=10, read_timeout=60, max_pool_connections=16,
                        s3={"addressing_style": style},
                        request_checksum_calculation=checksums,
                        response_checksum_validation=checksums)
        # S3 refuses parts under 5 MiB (but the last).
        self._transfer = TransferConfig(
            multipart_threshold=number_option("multipart_threshold", multipart_threshold,
                                              minimum=5 * MiB),
            multipart_chunksize=number_option("multipart_chunksize", multipart_chunksize,
                                              minimum=5 * MiB),
            max_concurrency=4)
        try:
            self._client = _session(profile).client(
                "s3", endpoint_url=endpoint, region_name=region, config=config,
                **_secret_credentials(bucket, profile))
        except Exception as exc:
            raise _translate(exc, f"s3 store {self.url}") from exc

    # -- helpers ---------------------------------------------------------------------------
    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as exc:
            raise _translate(exc, what) from exc

    # -- Store -----------------------------------------------------------------------------
    def put(self, key: str, data: bytes) -> None:
        name = self._key(key)
        if len(data) < self._transfer.multipart_threshold:
            self._call(f"put {key}", self._client.put_object, Bucket=self.bucket, Key=name,
                       Body=bytes(data))
            return
        import io
        self._call(f"put {key}", self._client.upload_fileobj, io.BytesIO(data), self.bucket,
                   name, Config=self._transfer)

    def put_file(self, key: str, path: Path) -> None:
        name = self._key(key)
        if not Path(path).is_file():
            raise UsageError(f"not a file: {path}")
        # upload_file switches to multipart above the threshold and aborts it on failure,
        # so no half-assembled object ever appears under the key.
        self._call(f"put {key}", self._client.upload_file, str(path), self.bucket, name,
                   Config=self._transfer)

    def get(self, key: str) -> bytes:
        response = self._call(f"get {key}", self._client.get_object, Bucket=self.bucket,
                              Key=self._key(key))
        return self._call(f"get {key}", response["Body"].read)

    def get_range(self, key: str, offset: int, length: int) -> bytes:
        if length <= 0:
            if not self.exists(key):
                raise NotFoundError(f"{key} not found in {self.url}")
            return b""
        # A suffix range ("bytes=-N") reads the tail without knowing the size first.
        spec = f"bytes=-{-offset}" if offset < 0 else f"bytes={offset}-{offset + length - 1}"
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=self._key(key),
                                               Range=spec)
            data = response["Body"].read()
        except Exception as exc:
            if _code(exc) == "InvalidRange":  # offset at or past the end
                return b""
            raise _translate(exc, f"get {key}") from exc
        return data[:length]

    def exists(self, key: str) -> bool:
        try:
            self._client.head_object(Bucket=self.bucket, Key=self._key(key))
        except Exception as exc:
            if _code(exc) in _MISSING_CODES:
                return False
            raise _translate(exc, f"check {key}") from exc
        return True

    def list(self, prefix: str = "") -> list[str]:
        full = self.prefix + check_prefix(prefix)
        paginator = self._client.get_paginator("list_objects_v2")
        keys: list[str] = []
        try:
            for page in paginator.paginate(Bucket=self.bucket, Prefix=full):
                keys.extend(obj["Key"][len(self.prefix):] for obj in page.get("Contents", ()))
        except Exception as exc:
            raise _translate(exc, f"list {prefix or '/'}") from exc
        return sorted(keys)

    def delete(self, key: str) -> None:
        # S3 answers 204 for an absent key too: delete is idempotent without a HEAD first.
        self._call(f"delete {key}", self._client.delete_object, Bucket=self.bucket,
                   Key=self._key(key))

    def flush(self) -> None:
        return None  # every put is durable when it returns

    def close(self) -> None:
        self._client.close()


_LOADER: list[Any] = []
_LOADER_LOCK = threading.Lock()


def _session(profile: str | None) -> Any:
    """A new boto3 session (credentials are resolved afresh) sharing one botocore data
    loader: loading the service models costs ~0.5 s per session, once with a shared loader."""
    import boto3
    import botocore.loaders
    import botocore.session

    with _LOADER_LOCK:
        if not _LOADER:
            _LOADER.append(botocore.loaders.create_loader())
    core = botocore.session.get_session()
    core.register_component("data_loader", _LOADER[0])
    return boto3.Session(botocore_session=core, profile_name=profile)


def _secret_credentials(bucket: str, profile: str | None) -> dict[str, str]:
    if profile:
        return {}
    access = secrets.get_secret(f"store:s3:{bucket}:access_key")
    secret = secrets.get_secret(f"store:s3:{bucket}:secret_key")
    if not (access and secret):
        return {}
    creds = {"aws_access_key_id": access, "aws_secret_access_key": secret}
    token = secrets.get_secret(f"store:s3:{bucket}:session_token")
    if token:
        creds["aws_session_token"] = token
    return creds


def _code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        error = response.get("Error") or {}
        code = str(error.get("Code") or "")
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        return code or (str(status) if status else "")
    return ""


def _translate(exc: BaseException, what: str) -> TetherError:
    """Map a boto3/botocore exception to the tether error tree (one table, one place)."""
    from boto3.exceptions import S3UploadFailedError
    from botocore import exceptions as bex

    if isinstance(exc, TetherError):
        return exc
    if isinstance(exc, S3UploadFailedError) and isinstance(exc.__context__, bex.ClientError):
        exc = exc.__context__  # the transfer manager wraps the real ClientError
    if isinstance(exc, (bex.NoCredentialsError, bex.PartialCredentialsError)):
        return AuthError(f"{what}: no S3 credentials found",
                         "set AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or the "
                         "tether secrets store:s3:<bucket>:access_key and :secret_key")
    if isinstance(exc, bex.ProfileNotFound):
        return UsageError(f"{what}: {exc}", "check the profile name in ~/.aws/config")
    if isinstance(exc, (bex.EndpointConnectionError, bex.ConnectionClosedError,
                        bex.ConnectTimeoutError, bex.ReadTimeoutError,
                        bex.ResponseStreamingError)):
        return ConnectError(f"{what}: {exc}", "check the endpoint URL and the network")
    if isinstance(exc, bex.ParamValidationError):
        return UsageError(f"{what}: {exc}")
    if isinstance(exc, bex.ClientError):
        code = _code(exc)
        message = exc.response.get("Error", {}).get("Message") or code
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code == "NoSuchBucket":
            return NotFoundError(f"{what}: the bucket does not exist",
                                 "create it first (aws s3 mb, the R2 dashboard, mc mb)")
        if code in _MISSING_CODES:
            return NotFoundError(f"{what}: not found")
        if code in _AUTH_CODES or status in (401, 403):
            return AuthError(f"{what}: access denied ({code})",
                             "check the S3 credentials and the bucket policy")
        if code in _THROTTLE_CODES or status == 429:
            retry_after = exc.response.get("ResponseMetadata", {}).get(
                "HTTPHeaders", {}).get("retry-after")
            return RateLimitedError(f"{what}: the service asks to slow down ({code})",
                                    retry_after=_seconds(retry_after))
        return PeerError(f"{what}: S3 error {code} ({status}): {message}")
    if isinstance(exc, bex.BotoCoreError):
        return PeerError(f"{what}: {exc}")
    if isinstance(exc, OSError):
        from tether.errors import LocalIOError
        return LocalIOError(f"{what}: {exc}")
    return PeerError(f"{what}: unexpected {type(exc).__name__}: {exc}")


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None
