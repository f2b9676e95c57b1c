"""S3 output storage: one long-lived boto3 client per process, deterministic keys.

Presigned GET URLs are minted when a job is read, never stored. Credentials come from
boto3's standard chain; ``DQ_S3_ENDPOINT_URL`` points at SeaweedFS / MinIO locally.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from jobs.models import OUTPUT_CONTENT_TYPES, output_extension
from jobs.settings import Settings

log = logging.getLogger(__name__)


def output_key(prefix: str, model: str, job_id: str, index: int, output_format: str) -> str:
    """Deterministic: a retried upload overwrites rather than duplicates."""
    return f"{prefix.strip('/')}/{model}/{job_id}/{index}.{output_extension(output_format)}"


@dataclass(frozen=True)
class StoredObject:
    bucket: str
    key: str
    content_type: str
    bytes: int
    sha256: str


class S3Storage:
    def __init__(self, settings: Settings) -> None:
        self.bucket = settings.s3_bucket
        self.prefix = settings.s3_prefix
        self.presign_ttl_s = settings.s3_presign_ttl_s
        self.upload_retry_s = settings.s3_upload_retry_s
        config = Config(
            signature_version="s3v4",
            s3={"addressing_style": "path"},
            retries={"max_attempts": 2, "mode": "standard"},
            connect_timeout=5,
            read_timeout=30,
            max_pool_connections=16,
        )
        self.client: Any = boto3.client(
            "s3", endpoint_url=settings.s3_endpoint_url or None, region_name=settings.s3_region, config=config
        )
        public = settings.s3_public_endpoint_url
        # Presigning is local computation; a second client signs for the address clients reach.
        self.signer: Any = (
            boto3.client("s3", endpoint_url=public, region_name=settings.s3_region, config=config)
            if public and public != settings.s3_endpoint_url
            else self.client
        )

    def ensure_bucket(self) -> None:
        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            self.client.create_bucket(Bucket=self.bucket)

    def put(self, key: str, body: bytes, output_format: str, metadata: dict[str, str]) -> StoredObject:
        """Upload, retrying with backoff for up to ``s3_upload_retry_s`` (S3 restarting, throttling)
        inside the caller — never through Celery's retry, which drops the message when Redis is down."""
        content_type = OUTPUT_CONTENT_TYPES[output_format]
        deadline = time.monotonic() + self.upload_retry_s
        delay_s = 0.2
        attempt = 0
        while True:
            attempt += 1
            try:
                self.client.put_object(
                    Bucket=self.bucket, Key=key, Body=body, ContentType=content_type, Metadata=metadata
                )
                break
            except (BotoCoreError, ClientError) as exc:
                if time.monotonic() + delay_s > deadline or not _retryable(exc):
                    raise
                log.warning("upload of %s failed (attempt %d): %s; retrying in %.1fs", key, attempt, exc, delay_s)
                time.sleep(delay_s)
                delay_s = min(delay_s * 2, 5.0)
        return StoredObject(self.bucket, key, content_type, len(body), hashlib.sha256(body).hexdigest())

    def presign(self, bucket: str, key: str) -> str | None:
        """A GET URL for one output; None (logged) when signing is impossible, e.g. no credentials:
        reading a job must not fail because its links can't be minted."""
        try:
            url: str = self.signer.generate_presigned_url(
                "get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=self.presign_ttl_s
            )
        except BotoCoreError as exc:
            log.error("cannot presign s3://%s/%s: %s", bucket, key, exc)
            return None
        return url


def _retryable(exc: Exception) -> bool:
    """Network errors, throttling and 5xx are worth retrying; access or bucket errors are not."""
    if isinstance(exc, ClientError):
        code = exc.response.get("Error", {}).get("Code", "")
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        return status >= 500 or status in (408, 429) or code in ("SlowDown", "RequestTimeout", "InternalError")
    return True
