"""Small helpers the integration tests share: submit through the Flask client, wait for a
job, list what S3 holds for it."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import boto3
from flask.testing import FlaskClient

from dq.procs import Service

TERMINAL = ("succeeded", "failed", "canceled")


def submit(client: FlaskClient, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json={"prompt": "a pig with wings", **body})
    assert response.status_code == 202, response.get_data(as_text=True)
    job: dict[str, Any] = response.get_json()
    return job


def wait_until_job(
    client: FlaskClient, job_id: str, predicate: Callable[[dict[str, Any]], bool], timeout_s: float = 60
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}").get_json()
        if predicate(job):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} did not get there in {timeout_s}s: {job}")


def wait_for(client: FlaskClient, job_id: str, timeout_s: float = 60) -> dict[str, Any]:
    """The job once it is terminal."""
    return wait_until_job(client, job_id, lambda job: job["status"] in TERMINAL, timeout_s)


def s3_keys(s3: Service, bucket: str, prefix: str) -> list[str]:
    client = boto3.client(
        "s3",
        endpoint_url=s3.url,
        aws_access_key_id=s3.extra["access_key"],
        aws_secret_access_key=s3.extra["secret_key"],
        region_name="us-east-1",
    )
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix=prefix).get("Contents", [])]
