"""All three remote store servers at once, and the credentials their tests use, for the suites
that run on every remote kind (conformance, repository, push/pull)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.snapshot.fakes.hf_hub_fake import serve_fake_hub
from tests.snapshot.fakes.kaggle_api_fake import serve_fake_kaggle
from tests.snapshot.fakes.moto_s3 import serve_moto_s3


@contextlib.contextmanager
def serve_remotes(bucket: str) -> Iterator[dict]:
    """moto S3 with ``bucket``, the fake Hub and the fake Kaggle, keyed "s3", "hf", "kaggle".
    Kaggle versions are READY at once here (ready_after=0); test_kaggle.py covers the waiting."""
    with serve_moto_s3() as moto, serve_fake_hub() as hub, \
            serve_fake_kaggle(ready_after=0) as kaggle:
        moto.client().create_bucket(Bucket=bucket)
        yield {"s3": moto, "hf": hub, "kaggle": kaggle}


def set_credentials(kind: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The test user's credentials for ``kind``'s server, through the environment (where a
    user would put them), with no saved login of the real user's found."""
    if kind == "s3":
        monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
        monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    elif kind == "hf":
        monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
        monkeypatch.setenv("HF_TOKEN", "hf_test_token")
        monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    elif kind == "kaggle":
        monkeypatch.setenv("KAGGLE_USERNAME", "alice")
        monkeypatch.setenv("KAGGLE_KEY", "alice-key")
        monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle"))
