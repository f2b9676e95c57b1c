"""Child processes and ports: what every service starter and the local stack share.

Free ports on 127.0.0.1, waiting for a condition, stopping a process for sure, the process
tree below a pid, and the environment a child inherits.
"""

from __future__ import annotations

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


def spawn_service(cmd: list[str], stdout: IO[bytes] | int | None) -> subprocess.Popen[bytes]:
    """A service process in a session of its own (a Ctrl-C to the parent does not reach it)."""
    return subprocess.Popen(cmd, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)


def answers(port: int, probe: bytes, prefix: bytes) -> Callable[[], bool]:
    """A readiness check: ``probe`` sent to 127.0.0.1:``port`` is answered with ``prefix``."""

    def check() -> bool:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as conn:
            conn.sendall(probe)
            return conn.recv(len(prefix)).startswith(prefix)

    return check


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


def venv_bin(name: str) -> str | None:
    """``name`` next to this interpreter (a venv's ``bin/``), else on PATH."""
    candidate = Path(sys.executable).parent / name
    return str(candidate) if candidate.exists() else shutil.which(name)


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


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env
