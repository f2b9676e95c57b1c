"""Celery workers: one process per accelerator group, one warm pipeline per process."""
