"""How the API is served, in one place (``gunicorn -c api/gunicorn_conf.py 'api:create_app()'``):
used by ``dq up``, the benchmarks, the Dockerfile and docker-compose.

gevent workers: a request waiting for a job (an SSE stream, ``?wait=N``, ``Prefer: wait``)
is a greenlet, not a thread, so a thousand of them cost one event hub subscription and a
thousand greenlets, and submits are not starved (measured: docs/benchmarks.md, waiters).
The application itself is unchanged: redis-py, urllib3 and boto3 run on gevent's patched
sockets. Worker count and bind address come from the command line or ``GUNICORN_CMD_ARGS``.
"""

import os
import tempfile
from pathlib import Path
from typing import Any

worker_class = "gevent"
worker_connections = 4000  # concurrent requests (greenlets) per worker process
workers = 2
graceful_timeout = 10
backlog = 2048
keepalive = 5

# Prometheus: every worker process counts its own requests into files in one directory, which
# GET /metrics sums (prometheus-client's multiprocess mode). The variable must be set before
# the app (and prometheus-client) is imported in the workers: here, in the master. A fresh
# directory per master start, unless the operator names one (then emptied at start).
_MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
if not os.environ.get(_MULTIPROC_ENV):
    os.environ[_MULTIPROC_ENV] = tempfile.mkdtemp(prefix="dq-prometheus-")


def on_starting(server: object) -> None:
    for stale in Path(os.environ[_MULTIPROC_ENV]).glob("*.db"):
        stale.unlink()


def child_exit(server: object, worker: Any) -> None:
    """A dead worker's live gauges leave the sums (its counters stay: they were counted)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)
