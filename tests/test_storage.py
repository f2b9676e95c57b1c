"""S3 uploads against a real SeaweedFS: signed PUTs land with their content type and metadata,
errors are told apart (retry 5xx, not 4xx), presigned GETs serve the bytes."""

from __future__ import annotations

import hashlib
import time

import pytest
import urllib3

from dq.procs import Service
from jobs.settings import Settings
from jobs.storage import S3Storage, UploadFailed, output_key


def test_put_stores_bytes_content_type_and_metadata(s3_settings: Settings, s3_service: Service) -> None:
    storage = S3Storage(s3_settings)
    key = output_key("outputs", "tiny-sd", "job-a", 0, "webp")
    assert key == "outputs/tiny-sd/job-a/0.webp"
    body = b"RIFF....WEBPVP8 " + bytes(range(256)) * 4
    stored = storage.put(key, body, "webp", {"job-id": "job-a", "seed": "42", "model": "tiny-sd"})
    assert (stored.bucket, stored.key, stored.bytes) == (s3_settings.s3_bucket, key, len(body))
    assert stored.sha256 == hashlib.sha256(body).hexdigest() and stored.content_type == "image/webp"
    head = storage.client.head_object(Bucket=s3_settings.s3_bucket, Key=key)
    assert head["ContentType"] == "image/webp" and head["ContentLength"] == len(body)
    assert head["Metadata"] == {"job-id": "job-a", "seed": "42", "model": "tiny-sd"}
    url = storage.presign(s3_settings.s3_bucket, key)
    assert url is not None
    assert urllib3.PoolManager().request("GET", url).data == body
    storage.put(key, b"again", "webp", {})  # deterministic key: a retry overwrites
    assert storage.client.get_object(Bucket=s3_settings.s3_bucket, Key=key)["Body"].read() == b"again"


def test_a_client_error_fails_at_once_instead_of_retrying(
    s3_settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wrong")
    storage = S3Storage(s3_settings.with_(s3_upload_retry_s=30))
    started = time.monotonic()
    with pytest.raises(UploadFailed) as info:
        storage.put("k", b"x", "png", {})
    assert info.value.status == 403 and time.monotonic() - started < 5  # a 4xx is not retried
