"""S3 uploads against a real SeaweedFS: signed PUTs land with their content type and metadata,
errors are told apart (retry 5xx, not 4xx), presigned GETs serve the bytes."""

from __future__ import annotations

import datetime
import hashlib
import http.client
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, quote, urlsplit

import pytest
import urllib3
from botocore.auth import S3SigV4Auth, S3SigV4QueryAuth
from botocore.awsrequest import AWSRequest
from botocore.credentials import ReadOnlyCredentials

from dq.procs import Service
from jobs.settings import Settings
from jobs.sigv4 import Credentials, Signer
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


class FlakyS3:
    """A real HTTP front for SeaweedFS that answers the first ``failures`` PUTs with a 5xx (as S3
    does under load: 500 InternalError, 503 SlowDown) and forwards everything else unchanged
    (same Host header, so the SigV4 signature still verifies)."""

    def __init__(self, upstream: str, failures: list[int]) -> None:
        self.upstream = urlsplit(upstream)
        self.failures = list(failures)
        self.answered: list[int] = []
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_PUT(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if front.failures:
                    status = front.failures.pop(0)
                    reply = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"
                else:
                    conn = http.client.HTTPConnection(front.upstream.hostname, front.upstream.port, timeout=10)
                    conn.request("PUT", self.path, body=body, headers=dict(self.headers.items()))
                    answer = conn.getresponse()
                    status, reply = answer.status, answer.read()
                    conn.close()
                front.answered.append(status)
                self.send_response(status)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_an_s3_5xx_is_retried_until_the_upload_lands(s3_settings: Settings, s3_service: Service) -> None:
    front = FlakyS3(s3_service.url, [503, 500, 503])
    try:
        storage = S3Storage(s3_settings.with_(s3_endpoint_url=front.url, s3_upload_retry_s=30))
        stored = storage.put("outputs/m/job-5xx/0.png", b"\x89PNG after three 5xx", "png", {"job-id": "job-5xx"})
        assert front.answered == [503, 500, 503, 200] and stored.bytes == len(b"\x89PNG after three 5xx")
        direct = S3Storage(s3_settings)  # the object really is in the bucket
        body = direct.client.get_object(Bucket=s3_settings.s3_bucket, Key="outputs/m/job-5xx/0.png")["Body"].read()
        assert body == b"\x89PNG after three 5xx"
    finally:
        front.close()


def _botocore_time(stamp: str) -> datetime.datetime:
    return datetime.datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc)


@pytest.mark.parametrize("token", [None, "session/token+="])
def test_the_signer_agrees_with_botocore_on_presigned_gets_and_puts(token: str | None) -> None:
    creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", token)
    frozen = ReadOnlyCredentials(creds.access_key, creds.secret_key, token)
    signer = Signer("eu-west-1")
    url = "http://127.0.0.1:8333/dq-outputs/outputs/tiny-sd/" + quote("job a+b") + "/0.png"

    theirs = AWSRequest(method="GET", url=url)
    S3SigV4QueryAuth(frozen, "s3", "eu-west-1", expires=900).add_auth(theirs)
    stamp = parse_qs(urlsplit(theirs.url).query)["X-Amz-Date"][0]
    ours = signer.presign_get(creds, url, 900, now=_botocore_time(stamp))
    assert parse_qs(urlsplit(ours).query) == parse_qs(urlsplit(theirs.url).query)
    assert urlsplit(ours).path == urlsplit(theirs.url).path

    body = b"\x89PNG not really"
    digest = hashlib.sha256(body).hexdigest()
    sent = {"Content-Type": "image/png", "x-amz-meta-job-id": "job a", "x-amz-meta-seed": " 42  7 "}
    put = AWSRequest(method="PUT", url=url, data=body, headers={"X-Amz-Content-SHA256": digest, **sent})
    S3SigV4Auth(frozen, "s3", "eu-west-1").add_auth(put)
    headers = signer.put_headers(creds, url, digest, sent, now=_botocore_time(put.headers["X-Amz-Date"]))
    assert headers["Authorization"] == put.headers["Authorization"]
    assert headers.get("x-amz-security-token") == token


def test_seaweedfs_refuses_a_put_signed_with_the_wrong_secret(s3_settings: Settings, s3_service: Service) -> None:
    storage = S3Storage(s3_settings)
    right = storage._frozen()
    storage._frozen = lambda: Credentials(right.access_key, "not-the-secret")  # type: ignore[method-assign]
    with pytest.raises(UploadFailed) as refused:
        storage._put_object("outputs/x/forged/0.png", b"x", hashlib.sha256(b"x").hexdigest(), "image/png", {})
    assert refused.value.status == 403
    storage._frozen = lambda: right  # type: ignore[method-assign]
    storage._put_object("outputs/x/signed/0.png", b"x", hashlib.sha256(b"x").hexdigest(), "image/png", {})
    url = storage.presign(s3_settings.s3_bucket, "outputs/x/signed/0.png")
    assert url is not None and urllib3.PoolManager().request("GET", url).data == b"x"
    forged = url.replace(parse_qs(urlsplit(url).query)["X-Amz-Signature"][0], "0" * 64)
    assert urllib3.PoolManager().request("GET", forged).status == 403
