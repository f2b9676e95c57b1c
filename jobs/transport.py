"""Celery as the transport. The API and the reconciler never talk to Celery: they write the
task message into the model's broker list themselves, inside the same Lua script that creates
(or re-queues) the job, so a job and its message exist together or not at all. The workers
consume that list with an ordinary Celery worker (kombu's Redis transport).

The message is exactly what ``Celery.send_task(GENERATE_TASK, args=[job_id, model],
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

GENERATE_TASK = "dq.generate"
_ORIGIN = f"gen{os.getpid()}@{socket.gethostname()}"


def make_celery(settings: Settings) -> Celery:
    """The workers' Celery app."""
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
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_enable_remote_control=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def task_message(job_id: str, model: str) -> str:
    """The broker message that runs ``dq.generate(job_id, model)`` on the model's queue."""
    task_id = str(uuid.uuid4())
    body = json.dumps([[job_id, model], {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}])
    envelope = {
        "body": base64.b64encode(body.encode()).decode(),
        "content-encoding": "utf-8",
        "content-type": "application/json",
        "headers": {
            "lang": "py",
            "task": GENERATE_TASK,
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
            "argsrepr": repr([job_id, model]),
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
