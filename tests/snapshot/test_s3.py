"""s3:// against a real moto S3 server on loopback, driven by boto3 (the real client)."""

from __future__ import annotations

import contextlib
import json

import pytest

from tests.snapshot.fakes.moto_s3 import serve_moto_s3
from tether import secrets
from tether.errors import (
    AuthError,
    ConnectError,
    NotFoundError,
    PeerError,
    RateLimitedError,
    UsageError,
)
from tether.snapshot.stores import open_store
from tether.snapshot.stores import s3 as s3store

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def moto():
    with serve_moto_s3() as server:
        yield server


@pytest.fixture
def creds(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_PROFILE", "TETHER_S3_ENDPOINT_URL", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def bucket(moto, creds, request):
    name = "b-" + request.node.name.lower().replace("_", "-")[:40].strip("-[]")
    name = "".join(c if c.isalnum() or c == "-" else "-" for c in name)
    moto.client().create_bucket(Bucket=name)
    return name


@pytest.mark.parametrize(("url", "bucket", "prefix", "query"), [
    pytest.param("s3://bkt", "bkt", "", {}, id="bucket-only"),
    pytest.param("s3://bkt/", "bkt", "", {}, id="trailing-slash"),
    pytest.param("s3://bkt/team/repo", "bkt", "team/repo/", {}, id="prefix"),
    pytest.param("s3://bkt/p?endpoint=http://127.0.0.1:9000&region=auto", "bkt", "p/",
                 {"endpoint": "http://127.0.0.1:9000", "region": "auto"}, id="query-options"),
    pytest.param("s3://my.bucket-1/x?addressing=virtual", "my.bucket-1", "x/",
                 {"addressing": "virtual"}, id="dotted-bucket"),
])
def test_parse_url(url, bucket, prefix, query):
    assert s3store.parse_url(url) == (bucket, prefix, query)


@pytest.mark.parametrize("url", [
    pytest.param("s3:///prefix", id="no-bucket"),
    pytest.param("s3://ab/x", id="bucket-too-short"),
    pytest.param("s3://bkt/../etc", id="dotdot-prefix"),
    pytest.param("s3://bkt/x?secret_key=abc", id="secret-in-url-refused"),
    pytest.param("s3://bad bucket/x", id="space"),
])
def test_bad_urls_are_usage_errors(url):
    with pytest.raises(UsageError):
        s3store.parse_url(url)


def test_endpoint_from_url_query_and_round_trip(moto, bucket):
    store = open_store(f"s3://{bucket}/repo?endpoint={moto.endpoint}&region=us-east-1")
    store.put("config", b"cfg")
    assert store.get("config") == b"cfg"
    # The prefix is where objects really land, as other S3 tools see them.
    keys = [o["Key"] for o in moto.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert keys == ["repo/config"]


def test_endpoint_from_environment(moto, bucket, monkeypatch):
    monkeypatch.setenv("TETHER_S3_ENDPOINT_URL", moto.endpoint)
    store = open_store(f"s3://{bucket}/p")
    store.put("k", b"v")
    assert moto.client().get_object(Bucket=bucket, Key="p/k")["Body"].read() == b"v"


def test_list_is_scoped_to_prefix(moto, bucket):
    moto.client().put_object(Bucket=bucket, Key="other/config", Body=b"x")
    moto.client().put_object(Bucket=bucket, Key="repo-2/config", Body=b"x")
    store = s3store.open(f"s3://{bucket}/repo", endpoint=moto.endpoint)
    store.put("snapshots/b", b"2")
    store.put("snapshots/a", b"1")
    assert store.list() == ["snapshots/a", "snapshots/b"]
    assert store.list("snap") == ["snapshots/a", "snapshots/b"]


def test_big_put_file_uses_multipart(moto, bucket, tmp_path):
    store = s3store.open(f"s3://{bucket}/r", endpoint=moto.endpoint,
                         multipart_threshold=8 * MiB, multipart_chunksize=5 * MiB)
    data = bytes(range(256)) * (36 * 1024 + 7)  # ~9 MiB, not a multiple of the part size
    path = tmp_path / "pack"
    path.write_bytes(data)
    store.put_file("packs/ab/big", path)
    head = moto.client().head_object(Bucket=bucket, Key="r/packs/ab/big")
    assert head["ETag"].strip('"').endswith("-2")  # S3's multipart ETag: md5-of-md5s "-parts"
    assert store.get("packs/ab/big") == data
    store.put("packs/ab/big2", data)
    assert moto.client().head_object(Bucket=bucket, Key="r/packs/ab/big2")["ETag"].strip(
        '"').endswith("-2")


def test_missing_bucket_is_not_found_with_hint(moto, creds):
    store = s3store.open("s3://no-such-bucket-here/r", endpoint=moto.endpoint)
    with pytest.raises(NotFoundError) as info:
        store.put("config", b"x")
    assert "bucket" in info.value.message and info.value.hint


def test_unreachable_endpoint_is_connect_error(creds):
    from tests.conftest import free_port
    store = s3store.open(f"s3://bkt/r?endpoint=http://127.0.0.1:{free_port()}")
    with pytest.raises(ConnectError):
        store.get("config")


def test_no_credentials_is_auth_error(moto, monkeypatch, isolated):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE",
                 "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(isolated.home / "nope"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(isolated.home / "nope"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    store = s3store.open("s3://bkt/r", endpoint=moto.endpoint, region="us-east-1")
    with pytest.raises(AuthError) as info:
        store.get("config")
    assert "store:s3:<bucket>:access_key" in info.value.hint


@pytest.fixture
def iam_user(moto, creds, request):
    """An IAM user allowed to use S3; with auth switched on, moto checks keys and policies."""
    iam = _iam(moto)
    user = "u-" + request.node.name[-50:]
    iam.create_user(UserName=user)
    iam.put_user_policy(UserName=user, PolicyName="s3", PolicyDocument=json.dumps({
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName=user)["AccessKey"]
    with contextlib.suppress(Exception):   # shared by the tests of this module
        moto.client().create_bucket(Bucket="authbucket")
    return key["AccessKeyId"], key["SecretAccessKey"]


def _iam(moto):
    import boto3
    return boto3.client("iam", endpoint_url=moto.endpoint, region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def test_credentials_from_tether_secrets_and_auth_errors(moto, iam_user, isolated, monkeypatch):
    from moto import settings
    access, secret = iam_user
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)

    with pytest.raises(AuthError):  # the ambient (wrong) keys are refused
        s3store.open("s3://authbucket/r", endpoint=moto.endpoint).put("config", b"x")

    secrets.set_secret("store:s3:authbucket:access_key", access)
    secrets.set_secret("store:s3:authbucket:secret_key", secret)
    store = s3store.open("s3://authbucket/r", endpoint=moto.endpoint)
    store.put("config", b"x")
    assert store.get("config") == b"x"

    secrets.set_secret("store:s3:authbucket:secret_key", "not-the-secret")
    with pytest.raises(AuthError):
        s3store.open("s3://authbucket/r", endpoint=moto.endpoint).get("config")


def _client_error(code: str, status: int, headers: dict | None = None):
    from botocore.exceptions import ClientError
    return ClientError({"Error": {"Code": code, "Message": f"{code} happened"},
                        "ResponseMetadata": {"HTTPStatusCode": status,
                                             "HTTPHeaders": headers or {}}}, "GetObject")


@pytest.mark.parametrize(("exc", "expected"), [
    pytest.param(_client_error("NoSuchKey", 404), NotFoundError, id="no-such-key"),
    pytest.param(_client_error("404", 404), NotFoundError, id="head-404"),
    pytest.param(_client_error("NoSuchBucket", 404), NotFoundError, id="no-such-bucket"),
    pytest.param(_client_error("AccessDenied", 403), AuthError, id="access-denied"),
    pytest.param(_client_error("InvalidAccessKeyId", 403), AuthError, id="bad-key-id"),
    pytest.param(_client_error("SignatureDoesNotMatch", 403), AuthError, id="bad-secret"),
    pytest.param(_client_error("ExpiredToken", 400), AuthError, id="expired-token"),
    pytest.param(_client_error("SlowDown", 503), RateLimitedError, id="slow-down"),
    pytest.param(_client_error("ThrottlingException", 400), RateLimitedError, id="throttling"),
    pytest.param(_client_error("TooManyRequests", 429, {"retry-after": "3"}), RateLimitedError,
                 id="429"),
    pytest.param(_client_error("InternalError", 500), PeerError, id="internal-error"),
])
def test_botocore_errors_are_translated(exc, expected):
    translated = s3store._translate(exc, "get config")
    assert type(translated) is expected
    assert translated.message.startswith("get config")


def test_retry_after_is_carried():
    err = s3store._translate(_client_error("TooManyRequests", 429, {"retry-after": "3"}), "x")
    assert err.retry_after == 3.0


def test_transport_errors_are_connect_errors():
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
    for exc in (EndpointConnectionError(endpoint_url="http://x"),
                ReadTimeoutError(endpoint_url="http://x")):
        assert isinstance(s3store._translate(exc, "get"), ConnectError)


def test_unknown_option_is_usage_error():
    with pytest.raises(UsageError):
        s3store.open("s3://bkt/r", access_key="AKIA")


def test_custom_endpoints_skip_default_checksum_trailers(moto, creds):
    # R2 and many gateways reject boto3's default aws-chunked CRC32 trailers.
    custom = s3store.open("s3://bkt/r", endpoint=moto.endpoint)._client.meta.config
    assert custom.request_checksum_calculation == "when_required"
    assert custom.response_checksum_validation == "when_required"
    aws = s3store.open("s3://bkt/r", region="us-east-1")._client.meta.config
    assert aws.request_checksum_calculation == "when_supported"


def test_credentials_from_an_aws_profile(moto, iam_user, tmp_path, monkeypatch):
    from moto import settings
    access, secret = iam_user
    (tmp_path / "credentials").write_text(
        f"[backup]\naws_access_key_id = {access}\naws_secret_access_key = {secret}\n")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAWRONGWRONGWRONG0")   # the profile wins
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    store = open_store(f"s3://authbucket/p?profile=backup&endpoint={moto.endpoint}")
    store.put("config", b"via profile")
    assert store.get("config") == b"via profile"
    with pytest.raises(UsageError):
        s3store.open("s3://authbucket/p?profile=nope", endpoint=moto.endpoint)


@pytest.mark.parametrize("query", ["multipart_threshold=lots", "multipart_chunksize=1024",
                                   "addressing=sideways"])
def test_bad_option_values_are_usage_errors(query, creds):
    with pytest.raises(UsageError):
        open_store(f"s3://bkt/r?{query}")


def test_a_mistaken_secret_in_the_url_is_refused_and_not_echoed(creds):
    with pytest.raises(UsageError) as info:
        open_store("s3://bkt/r?secret_key=wJalrXUtnFEMI")
    assert "wJalrXUtnFEMI" not in info.value.message + (info.value.hint or "")
