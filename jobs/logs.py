"""Logging for every process: one format chosen by ``DQ_LOG_FORMAT``.

``text`` (default): ``<time> <level> <logger>: <message>``. ``json``: one JSON object per line
for log shippers (``ts``, ``level``, ``logger``, ``msg``, and the structured fields a line
carries, e.g. a job transition's ``job_id``, ``event``, ``model``, ``worker``, ``tenant`` and
timings). ``log_transition`` writes the one line per job transition (logger ``dq.jobs``).
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from jobs.settings import Settings

LOG_FORMATS = ("text", "json")
TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
FIELDS_ATTR = "dq"  # a record's structured fields (``extra={"dq": {...}}``)
jobs_log = logging.getLogger("dq.jobs")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with its structured fields at the top level."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        line.update(getattr(record, FIELDS_ATTR, None) or {})
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, separators=(",", ":"), default=str)


def formatter(log_format: str) -> logging.Formatter:
    if log_format not in LOG_FORMATS:
        raise ValueError(f"DQ_LOG_FORMAT: {log_format!r} is not one of {', '.join(LOG_FORMATS)}")
    return JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)


def configure_logging(settings: Settings, level: int = logging.INFO) -> None:
    """Give the root logger one stderr handler in the configured format at ``level``, and ours
    (``dq.*``) INFO at least, unless the root has a handler already (a host application's or
    pytest's configuration wins)."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler()
    handler.setFormatter(formatter(settings.log_format))
    root.addHandler(handler)
    root.setLevel(level)
    logging.getLogger("dq").setLevel(min(level, logging.INFO))


def log_transition(event: str, job_id: str, model: str, **fields: Any) -> None:
    """One line for a job's transition: ``job <id> <event> model=… worker=… tenant=… …_s=…``;
    fields that are None are left out."""
    if not jobs_log.isEnabledFor(logging.INFO):
        return
    present = {name: value for name, value in fields.items() if value is not None and value != ""}
    text = " ".join(f"{name}={_short(value)}" for name, value in present.items())
    structured = {"event": event, "job_id": job_id, "model": model, **present}
    jobs_log.info("job %s %s model=%s %s", job_id, event, model, text, extra={FIELDS_ATTR: structured})


def _short(value: Any) -> str:
    return f"{value:.4f}".rstrip("0").rstrip(".") if isinstance(value, float) else str(value)
