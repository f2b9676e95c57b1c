"""Celery as the transport — of wake-up tokens, not of jobs.

A model's Celery queue holds *tokens*: a token (``dq.work(model)``) wakes one idle worker,
which then picks jobs from the scheduler (``JobStore.pick``: "which job next", decided in one
Lua step) and runs them until nothing is pending, then acknowledges the token. The store's
scripts write tokens themselves, in the same atomic step that makes a job pending: at most
two wait in the list (``TOKENS``), and one is always there while jobs are pending and no
worker is draining, so an idle worker never misses work; the reconciler restores one if a
token is lost (a worker killed holding it, a deleted message). A duplicate token is harmless:
it only makes a worker look for work.

The message is exactly what ``Celery.send_task(WORK_TASK, args=[model],
queue=celery_queue(model))`` publishes on kombu's Redis transport at priority 0: a JSON
envelope whose base64 body is task protocol 2 ``[args, kwargs, embed]``; it is LPUSHed to
the list named after the queue and the worker BRPOPs it (FIFO).
``tests/test_transport.py`` checks the two stay identical in shape.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid

from celery import Celery

from jobs.keys import celery_queue
from jobs.settings import Settings

WORK_TASK = "dq.work"
TOKENS = 2  # tokens at most waiting in a model's queue (each wakes one idle worker)
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def make_celery(settings: Settings) -> Celery:
    """The workers' Celery app. Task events and remote control are off unless
    ``DQ_CELERY_EVENTS`` turns both on, for Flower (``docs/operations.md``, "Flower")."""
    app = Celery("diffusion_queue", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Longer than any fetch-to-ack; the job's own lease decides retries (docs/reliability.md).
        broker_transport_options={"visibility_timeout": 3600, "socket_keepalive": True},
        worker_hijack_root_logger=False,
        worker_send_task_events=settings.celery_events,
        task_send_sent_event=False,
        worker_enable_remote_control=settings.celery_events,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def work_message(model: str) -> str:
    """A token: the broker message that runs ``dq.work(model)`` on the model's queue."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[model], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": WORK_TASK,
            "id": task_id,
            "shadow": None,
            "eta": None,
            "expires": None,
            "group": None,
            "group_index": None,
            "retries": 0,
            "timelimit": [None, None],
            "root_id": task_id,
            "parent_id": None,
            "argsrepr": repr([model]),
            "kwargsrepr": "{}",
            "origin": _ORIGIN,
            "ignore_result": True,
            "replaced_task_nesting": 0,
            "stamped_headers": None,
            "stamps": {},
        },
        "properties": {
            "correlation_id": task_id,
            "delivery_mode": 2,
            "delivery_info": {"exchange": "", "routing_key": celery_queue(model)},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        },
    }
    return json.dumps(envelope)
