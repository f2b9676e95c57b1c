"""A real HTTP webhook receiver for the tests: ``ThreadingHTTPServer`` on 127.0.0.1 in a thread.

It verifies every request's signature with ``standardwebhooks`` and records it. What it
answers is set by ``mode``: ``"ok"`` (204), ``"error"`` (500), ``"hang"`` (never answers
within the deliverer's timeout) or an int status; ``script`` holds replies used first, one
per request (``Reply.delay_s`` makes one slow). ``stop()`` closes the port (connections are
refused) and ``start()`` opens it again on the same port.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

HANG_S = 3.0
SECRET = "whsec_MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="  # the tests' signing secret


@dataclass
class Received:
    path: str
    headers: dict[str, str]  # lower-case names
    body: bytes
    verified: bool
    answered: int | None  # the status we answered; None: we hung up without answering
    at: float = field(default_factory=time.time)
    peer_pid: int | None = None  # the process that sent it (with ``track_peers``)

    @property
    def webhook_id(self) -> str:
        return self.headers.get("webhook-id", "")

    def json(self) -> dict[str, Any]:
        parsed: dict[str, Any] = json.loads(self.body)
        return parsed


@dataclass
class Reply:
    status: int | None  # None: hang
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    delay_s: float = 0.0  # answer this much later (a slow receiver, within the timeout)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    receiver: Receiver

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # the deliverer hanging up on a slow answer is part of the tests


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_POST(self) -> None:
        receiver = self.server.receiver
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        reply = receiver.next_reply()
        peer = peer_pid(self.client_address[1], receiver.port) if receiver.track_peers else None
        receiver.record(Received(self.path, headers, body, receiver.verify(body, headers), reply.status, peer_pid=peer))
        if reply.status is None:
            receiver.release.wait(HANG_S)
            self.close_connection = True
            return
        if reply.delay_s:
            time.sleep(reply.delay_s)
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


def peer_pid(peer_port: int, our_port: int) -> int | None:
    """The pid owning the local end of a loopback TCP connection (``/proc/net/tcp`` inode, then
    the process with that socket among its file descriptors)."""
    inode = None
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local, remote = fields[1], fields[2]
            if int(local.rsplit(":", 1)[1], 16) == peer_port and int(remote.rsplit(":", 1)[1], 16) == our_port:
                inode = fields[9]
    if inode is None:
        return None
    wanted = f"socket:[{inode}]"
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if any(os.readlink(fd) == wanted for fd in (proc / "fd").iterdir()):
                return int(proc.name)
        except OSError:
            continue
    return None


class Receiver:
    def __init__(self, secret: str, host: str = "127.0.0.1", track_peers: bool = False) -> None:
        self.webhook = Webhook(secret)
        self.track_peers = track_peers
        self.host = host
        self.port = 0
        self.mode: str | int = "ok"
        self.script: list[Reply] = []
        self.received: list[Received] = []
        self.release = threading.Event()
        self._lock = threading.Lock()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> Receiver:
        server = _Server((self.host, self.port), _Handler)
        server.receiver = self
        self.port = int(server.server_address[1])
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    def close(self) -> None:
        self.release.set()
        self.stop()

    # -- what it answers and records -------------------------------------------------
    def next_reply(self) -> Reply:
        with self._lock:
            if self.script:
                return self.script.pop(0)
            mode = self.mode
        if mode == "ok":
            return Reply(204)
        if mode == "error":
            return Reply(500, body=b"receiver is down for maintenance")
        if mode == "hang":
            return Reply(None)
        return Reply(int(mode))

    def verify(self, body: bytes, headers: dict[str, str]) -> bool:
        try:
            self.webhook.verify(body, headers)
        except WebhookVerificationError:
            return False
        return True

    def record(self, item: Received) -> None:
        with self._lock:
            self.received.append(item)

    def snapshot(self) -> list[Received]:
        with self._lock:
            return list(self.received)

    def delivered(self) -> list[Received]:
        """Requests we answered with 2xx, in arrival order."""
        return [r for r in self.snapshot() if r.answered is not None and 200 <= r.answered < 300]

    def delivered_for(self, job_id: str) -> list[dict[str, Any]]:
        return [r.json() for r in self.delivered() if r.json()["data"]["id"] == job_id]

    def wait_until(self, check: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if check():
                return
            time.sleep(0.05)
        raise AssertionError(
            f"receiver: {what} not seen after {timeout_s:.0f} s; got {len(self.snapshot())} request(s)"
        )
