"""A small HTTP client for the API: submit, poll with a progress bar, download outputs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import IO, Any
from urllib.parse import urlencode

import urllib3

TERMINAL = {"succeeded", "failed", "canceled"}


class ApiError(RuntimeError):
    def __init__(self, status: int, body: Any) -> None:
        detail = body.get("detail") if isinstance(body, dict) else body
        super().__init__(f"HTTP {status}: {detail}")
        self.status = status
        self.body = body


class Client:
    def __init__(self, base_url: str, api_key: str = "", timeout_s: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.http = urllib3.PoolManager(timeout=urllib3.Timeout(total=timeout_s), retries=False)

    def request(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        hdrs = {"Content-Type": "application/json", **self.auth, **(headers or {})}
        reply = self.http.request(method, self.base_url + path, body=data, headers=hdrs)
        try:
            payload = json.loads(reply.data) if reply.data else None
        except ValueError:
            payload = reply.data.decode(errors="replace")
        return reply.status, payload

    def _ok(self, status: int, payload: Any) -> Any:
        if status >= 400:
            raise ApiError(status, payload)
        return payload

    def submit(self, job: dict[str, Any], idempotency_key: str | None = None) -> dict[str, Any]:
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._ok(*self.request("POST", "/v1/jobs", job, headers))  # type: ignore[no-any-return]

    def get(self, job_id: str) -> dict[str, Any]:
        return self._ok(*self.request("GET", f"/v1/jobs/{job_id}"))  # type: ignore[no-any-return]

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._ok(*self.request("POST", f"/v1/jobs/{job_id}/cancel"))  # type: ignore[no-any-return]

    def models(self) -> dict[str, Any]:
        return self._ok(*self.request("GET", "/v1/models"))  # type: ignore[no-any-return]

    def jobs(self, **query: str | int | None) -> dict[str, Any]:
        """A page of ``GET /v1/jobs`` (``status``, ``error_type``, ``limit``, ``cursor``, ``tenant``)."""
        given = {name: str(value) for name, value in query.items() if value is not None}
        path = "/v1/jobs" + (f"?{urlencode(given)}" if given else "")
        return self._ok(*self.request("GET", path))  # type: ignore[no-any-return]

    def workers(self) -> dict[str, Any]:
        return self._ok(*self.request("GET", "/v1/workers"))  # type: ignore[no-any-return]

    def wait(self, job_id: str, timeout_s: float = 600, out: IO[str] | None = None) -> dict[str, Any]:
        """The job once it is terminal, following its event stream (a progress bar on ``out``)."""

        def show(state: dict[str, Any]) -> None:
            if out is not None:
                out.write("\r" + progress_line(state))
                out.flush()

        job = self.get(job_id)
        show(job)
        deadline = time.monotonic() + timeout_s
        while job["status"] not in TERMINAL:
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} still {job['status']} after {timeout_s}s")
            for event in self.events(job_id, timeout_s=deadline - time.monotonic()):
                show(event["data"])
            job = self.get(job_id)  # the stream ended (terminal, or cut): read the job as it is now
        show(job)
        if out is not None:
            out.write("\n")
        return job

    def events(self, job_id: str, timeout_s: float = 600) -> Iterator[dict[str, Any]]:
        """The job's Server-Sent Events (``GET /v1/jobs/<id>/events``), parsed, until the stream ends."""
        reply = self.http.request(
            "GET",
            f"{self.base_url}/v1/jobs/{job_id}/events",
            headers={**self.auth, "Accept": "text/event-stream"},
            preload_content=False,
            timeout=urllib3.Timeout(connect=10.0, read=timeout_s),
        )
        if reply.status != 200:
            raise ApiError(reply.status, reply.data[:200].decode(errors="replace"))
        data: list[str] = []
        try:
            for raw in reply:  # lines
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data: "):
                    data.append(line[6:])
                elif not line and data:
                    yield json.loads("\n".join(data))
                    data = []
        finally:
            reply.release_conn()

    def download(self, url: str) -> bytes:
        """An output: a presigned S3 URL (no API key sent) or an API route (the key sent)."""
        headers = self.auth if url.startswith(self.base_url) else {}
        reply = self.http.request("GET", url, headers=headers)
        if reply.status != 200:
            raise ApiError(reply.status, reply.data[:200].decode(errors="replace"))
        return bytes(reply.data)


def progress_line(job: dict[str, Any], width: int = 30) -> str:
    step, total = job["progress"]["step"], job["progress"]["total"] or 1
    if job["status"] == "succeeded":
        step = total
    filled = int(width * min(step, total) / total)
    bar = "#" * filled + "-" * (width - filled)
    where = f" (queue position {job['queue_position']})" if job.get("queue_position") is not None else ""
    return f"[{bar}] {step:>3}/{total:<3} {job['status']:<9}{where}   "


def print_json(data: Any, out: IO[str] | None = None) -> None:
    # sys.stdout read at the call, not bound at import (a test's capture may have replaced it)
    (out or sys.stdout).write(json.dumps(data, indent=2) + "\n")
