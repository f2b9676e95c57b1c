"""Celery as the transport: one app configuration shared by the API (publisher) and the
workers (consumers). The message is ``(job_id, model)`` as JSON; the job hash holds the rest.
"""

from __future__ import annotations

from celery import Celery

from jobs.keys import celery_queue
from jobs.settings import Settings

GENERATE_TASK = "dq.generate"


def make_celery(settings: Settings) -> Celery:
    app = Celery("diffusion_queue", broker=settings.redis_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_default_priority=9,  # lowest of the Redis priority steps; nothing jumps the queue
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        # Longer than any fetch-to-ack; the job's own lease decides redelivery (reliability docs).
        broker_transport_options={"visibility_timeout": 3600, "socket_keepalive": True},
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        task_send_sent_event=False,
        worker_enable_remote_control=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
    )
    return app


def enqueue(app: Celery, job_id: str, model: str) -> None:
    app.send_task(GENERATE_TASK, args=[job_id, model], queue=celery_queue(model), ignore_result=True)
