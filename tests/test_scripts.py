"""Every Lua script touches only the keys it declares (Redis Cluster's rule), checked against
what each really does: a scenario runs every script under MONITOR, and ``COMMAND GETKEYS``
names the keys of each command the scripts ran."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from jobs import scripts
from jobs.connections import as_text
from jobs.keys import Keys
from jobs.lua import BoundScript, Script
from jobs.reconciler import LEAD, Reconciler
from jobs.scripts import STORE_SCRIPTS
from jobs.store import ANY_TENANT, ClaimOutcome, JobStore, Limits, Owner, ProgressAnswer, RequeueOutcome
from webhooks.outbox import OUTBOX_SCRIPTS, Outbox, PendingMessage

OWNER = Owner("t1", "k1")

ALL_SCRIPTS: tuple[Script, ...] = (*STORE_SCRIPTS, *OUTBOX_SCRIPTS, LEAD)
INPUT = {"prompt": "p", "num_inference_steps": 4, "seed": 1}
QUOTED = re.compile(rb'"((?:[^"\\]|\\.)*)"')


def _unquote(raw: bytes) -> bytes:
    return re.sub(rb"\\x([0-9a-f]{2})|\\(.)", lambda m: bytes.fromhex(m[1].decode()) if m[1] else m[2], raw)


class Recorder:
    """MONITOR on its own connection: each EVALSHA with the keys it declared and the commands
    its script ran (they follow it in the stream: a script runs atomically)."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client  # kept: its pool owns the MONITOR connection
        self.monitor = client.monitor()
        self.conn = self.monitor.__enter__()
        self.lines: list[bytes] = []
        self.stopping = False
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while not self.stopping:
            try:
                self.lines.append(self.conn.connection.read_response())
            except (redis.ConnectionError, OSError, ValueError):
                return

    def runs(self) -> Iterator[tuple[str, list[bytes], list[list[bytes]]]]:
        """(sha, declared keys, [command args, …]) for each script run."""
        current: tuple[str, list[bytes], list[list[bytes]]] | None = None
        for line in self.lines:
            args = [_unquote(a) for a in QUOTED.findall(line)]
            if not args:
                continue
            if b" lua]" in line.split(b'"', 1)[0]:
                if current is not None:
                    current[2].append(args)
                continue
            if current is not None:
                yield current
                current = None
            if args[0].upper() == b"EVALSHA":
                numkeys = int(args[2])
                current = (args[1].decode(), args[3 : 3 + numkeys], [])
        if current is not None:
            yield current


def _keys_of(client: redis.Redis, command: list[bytes]) -> set[str]:
    try:
        keys: Any = client.command_getkeys(*command)
    except redis.ResponseError:  # a command without keys (PUBLISH has a channel, not a key)
        return set()
    return {as_text(k) for k in keys}


def _exercise_every_script(client: redis.Redis) -> None:
    keys = Keys()
    store = JobStore(client, keys, retention_s=60, progress_event_interval_s=0.0)
    hook = {"webhook": "http://127.0.0.1:9/hook", "webhook_events_filter": ["started", "progress", "succeeded"]}
    assert store.create("a", "m", INPUT, owner=OWNER, idempotency_key="k", request_hash="h", **hook).created  # type: ignore[arg-type]
    assert not store.create("b", "m", INPUT, owner=OWNER, idempotency_key="k", request_hash="h").created
    store.create("c", "m", INPUT, owner=OWNER)
    assert store.get_with_position("c", tenant=ANY_TENANT)[1] == 1
    assert store.start("a", "m", "w", lease_s=30).status is ClaimOutcome.STARTED
    assert store.progress("a", 1, 2, lease_s=30) is ProgressAnswer.OK
    assert store.renew("a", 1, lease_s=30)
    assert store.succeed("a", "m", 1, [{"key": "k"}], generation_seconds=0.1)
    store.cancel("c", "m", tenant=OWNER.tenant)
    store.create("d", "m", INPUT, owner=OWNER, limits=Limits(10.0, 5, 100))
    assert store.get("d", tenant="someone-else") is None and store.page(tenant=OWNER.tenant).jobs
    store.start("d", "m", "w", lease_s=0.01)
    time.sleep(0.05)
    assert store.requeue_if_lease_expired("d", "m") is RequeueOutcome.REQUEUED
    assert store.start("d", "m", "w", lease_s=30, max_attempts=1).status is ClaimOutcome.MAX_ATTEMPTS
    assert Reconciler(store, owner="r").lead()
    # the scheduler: a batch pick, a pick never started (restored), aging, a lost token
    for job_id in ("e", "f", "g"):
        store.create(job_id, "m", INPUT, owner=OWNER, priority="low", batch_class="c1")
    picked = store.pick("m", batch_max=2, pick_timeout_s=0)
    assert len(picked.ids) == 2 and picked.pending == 1
    assert store.restore_picked("m", now=time.time() + 1) == picked.ids
    assert store.promote_aged("m", aging_s=0, now=time.time() + 1)
    client.delete("gen.m")
    assert store.wake("m") and client.llen("gen.m") == 1

    outbox = Outbox(client, keys, retention_s=60)
    assert outbox.claim(time.time() + 1, 30, 10) == ["a"]
    head = outbox.head("a")
    assert isinstance(head, PendingMessage)
    outbox.settle(head, {"attempt": 1}, final=False, now=time.time(), next_due=time.time())
    now = time.time()
    outbox.settle(head, {"outcome": "delivered"}, final=True, now=now, keep_claim_until=now + 30, delivery_s=0.5)
    outbox.release("a", time.time())
    assert outbox.redeliver("a", head.msg_id, time.time())


def test_every_script_touches_only_the_keys_it_declares(redis_client: redis.Redis) -> None:
    where = redis_client.connection_pool.connection_kwargs
    recorder = Recorder(redis.Redis(host=where["host"], port=where["port"]))  # a connection of its own
    time.sleep(0.1)
    _exercise_every_script(redis_client)
    time.sleep(0.3)
    recorder.stopping = True
    recorder.monitor.__exit__()
    names = {BoundScript(redis_client, s)._call.sha: s.name for s in ALL_SCRIPTS}
    seen: set[str] = set()
    for sha, declared, commands in recorder.runs():
        for command in commands:
            undeclared = _keys_of(redis_client, command) - {as_text(k) for k in declared}
            assert not undeclared, f"script {names.get(sha, sha)} touched {undeclared} in {command}"
        if commands:
            seen.add(names.get(sha, sha))
    assert seen == {s.name for s in ALL_SCRIPTS}


def test_a_script_is_called_with_exactly_its_names(redis_client: redis.Redis) -> None:
    renew = BoundScript(redis_client, scripts.RENEW)
    assert renew.script.name == "renew"
    with pytest.raises(TypeError, match="missing"):
        renew({"job": "dq:job:x"}, {"attempt": 1})
    with pytest.raises(TypeError, match="unknown"):
        renew({"job": "dq:job:x", "other": "k"}, {"attempt": 1, "lease_until": 1.0})
    assert renew({"job": "dq:job:x"}, {"attempt": 1, "lease_until": 1.0}) == 0


def test_each_script_source_names_its_keys_and_args() -> None:
    for script in ALL_SCRIPTS:
        source = script.source()
        assert not re.search(r"(KEYS|ARGV)\[\d", script.body), script.name  # named, or past VARKEYS_AT/VARARGS_AT
        for i, name in enumerate(script.keys, 1):
            assert f"-- KEYS[{i}] {name}" in source
        for i, name in enumerate(script.args, 1):
            assert f"-- ARGV[{i}] {name}" in source
