"""Webhook delivery: the process behind ``dq webhooks``. No Flask, no torch.

The job store writes each event into a per-job outbox in the same atomic step as the state
it describes (``jobs/store.py``, ``emit``); this package drains it:

``ssrf.py``     which URLs may be called (http(s), no internal addresses) and the vetted IP
``signing.py``  Standard Webhooks headers (``webhook-id``, ``-timestamp``, ``-signature``)
``policy.py``   what an HTTP outcome means: delivered, failed, gone, or retry on the schedule
``outbox.py``   the Redis side: claim due jobs, settle attempts, redeliver, read attempts
``deliver.py``  the delivery loop: a thread pool over claimed jobs, one HTTP pool manager
"""
