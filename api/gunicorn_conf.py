"""How the API is served, in one place (``gunicorn -c api/gunicorn_conf.py 'api:create_app()'``):
used by ``dq up``, the benchmarks, the Dockerfile and docker-compose.

gevent workers: a request waiting for a job (an SSE stream, ``?wait=N``, ``Prefer: wait``)
is a greenlet, not a thread, so a thousand of them cost one event hub subscription and a
thousand greenlets, and submits are not starved (measured: docs/benchmarks.md, waiters).
The application itself is unchanged: redis-py, urllib3 and boto3 run on gevent's patched
sockets. Worker count and bind address come from the command line or ``GUNICORN_CMD_ARGS``.
"""

worker_class = "gevent"
worker_connections = 4000  # concurrent requests (greenlets) per worker process
workers = 2
graceful_timeout = 10
backlog = 2048
keepalive = 5
