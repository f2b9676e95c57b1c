"""A job's events, read and awaited: no polling needed.

Every transition records its event in the job's history (``dq:wh:events:<id>``, by event id
``msg_<job>_<n>``, ``n`` counting from 1 — the same ids webhooks carry as ``webhook-id``) and
announces ``<job id> <event id> <type>`` on the ``dq:events`` pub/sub channel, in the same
Lua step (``jobs/scripts.py`` ``emit``).

``EventHub`` is one subscriber per process that wakes whoever waits for a job: the SSE stream
(``GET /v1/jobs/<id>/events``), long polls (``?wait=N``) and ``Prefer: wait``. A waiter holds
a ``threading.Event``, not a thread of its own: under gevent (the API's serving model, see
docs/api.md) a waiting request is a greenlet, so a thousand waiters cost a thousand
greenlets and one Redis subscription. If the subscription is down, waiters wake every
``fallback_s`` and re-read, so nothing is missed — only later.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import redis

from jobs.connections import as_text
from jobs.keys import Keys

log = logging.getLogger("dq.events")
TERMINAL_EVENTS = ("job.succeeded", "job.failed", "job.canceled")


@dataclass(frozen=True)
class Event:
    id: str  # msg_<job>_<n>: the webhook-id, and the SSE id
    seq: int
    type: str
    raw: dict[str, Any]  # {id, type, timestamp, job: snapshot} as recorded

    @property
    def terminal(self) -> bool:
        return self.type in TERMINAL_EVENTS


def event_seq(event_id: str) -> int:
    """``n`` of ``msg_<job>_<n>`` (0 for anything else: start from the beginning)."""
    _, _, tail = event_id.rpartition("_")
    return int(tail) if tail.isdigit() else 0


class EventLog:
    """The recorded events of jobs (read-only)."""

    def __init__(self, client: redis.Redis, keys: Keys) -> None:
        self.redis = client
        self.keys = keys

    def since(self, job_id: str, after: int = 0) -> list[Event]:
        """The job's events after number ``after``, in order."""
        count = int(self.redis.hget(self.keys.job(job_id), "event_seq") or 0)  # type: ignore[arg-type]
        if count <= after:
            return []
        ids = [f"msg_{job_id}_{n}" for n in range(after + 1, count + 1)]
        raw: Any = self.redis.hmget(self.keys.webhook_events(job_id), ids)
        events = []
        for n, (event_id, value) in enumerate(zip(ids, raw, strict=True), start=after + 1):
            if value is not None:  # past retention: skipped
                parsed = json.loads(value)
                events.append(Event(event_id, n, parsed["type"], parsed))
        return events


class EventHub:
    """Wakes waiters when their job has a new event; one pub/sub connection per process,
    started on first use (nothing connects at import or construction)."""

    def __init__(self, client: redis.Redis, keys: Keys, fallback_s: float = 1.0) -> None:
        self.client = client
        self.channel = keys.events_channel()
        self.fallback_s = fallback_s
        self._lock = threading.Lock()
        self._waiters: dict[str, set[threading.Event]] = {}
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def watch(self, job_id: str) -> Watch:
        """A registration: ``wait()`` returns when the job has a new event (or after the fallback)."""
        self._ensure_running()
        return Watch(self, job_id)

    def _add(self, job_id: str, event: threading.Event) -> None:
        with self._lock:
            self._waiters.setdefault(job_id, set()).add(event)

    def _remove(self, job_id: str, event: threading.Event) -> None:
        with self._lock:
            waiting = self._waiters.get(job_id)
            if waiting is not None:
                waiting.discard(event)
                if not waiting:
                    del self._waiters[job_id]

    def _notify(self, job_id: str) -> None:
        with self._lock:
            waiting = list(self._waiters.get(job_id, ()))
        for event in waiting:
            event.set()

    def _ensure_running(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._listen, name="dq-event-hub", daemon=True)
                self._thread.start()

    def _listen(self) -> None:
        while not self._stopping.is_set():
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                for message in pubsub.listen():
                    if self._stopping.is_set():
                        return
                    if message.get("type") == "message":
                        self._notify(as_text(message["data"]).split(" ", 1)[0])
            except redis.RedisError as exc:
                log.warning("event hub: %s; resubscribing", exc)
                self._stopping.wait(self.fallback_s)
            finally:
                pubsub.close()

    def stop(self) -> None:
        self._stopping.set()


class Watch:
    """One waiter on one job; use as a context manager so it is always unregistered."""

    def __init__(self, hub: EventHub, job_id: str) -> None:
        self.hub = hub
        self.job_id = job_id
        self.event = threading.Event()

    def __enter__(self) -> Watch:
        self.hub._add(self.job_id, self.event)
        return self

    def __exit__(self, *exc: object) -> None:
        self.hub._remove(self.job_id, self.event)

    def wait(self, timeout_s: float) -> bool:
        """Until the job has news, ``timeout_s`` or the fallback interval passes; True on news."""
        woke = self.event.wait(min(timeout_s, self.hub.fallback_s))
        self.event.clear()
        return woke


def follow(
    events: EventLog, hub: EventHub, job_id: str, after: int = 0, keepalive_s: float = 15.0
) -> Iterator[Event | None]:
    """The job's events after number ``after``, then new ones as they happen, until the
    terminal one; ``None`` after ``keepalive_s`` without news (for a keep-alive comment)."""
    with hub.watch(job_id) as watch:  # registered before the first read: nothing slips between
        last_sent = time.monotonic()
        while True:
            for event in events.since(job_id, after):
                yield event
                after, last_sent = event.seq, time.monotonic()
                if event.terminal:
                    return
            if time.monotonic() - last_sent >= keepalive_s:
                yield None
                last_sent = time.monotonic()
            watch.wait(keepalive_s)
