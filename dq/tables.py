"""What ``dq models``, ``dq jobs``, ``dq workers`` and ``dq status`` print for people: aligned
plain-text tables built from the API's JSON (``--json`` prints that JSON instead).

Plain functions of the API's answers (and of ``now`` where an age is shown), so they are
tested without a server. No colours, no box drawing: the output pastes into an issue or a
terminal of any width and greps cleanly.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

PROMPT_WIDTH = 48
NONE = "-"
METRICS = ("queue_seconds", "generation_seconds", "total_seconds")


def render_table(headers: Sequence[str], rows: Sequence[Sequence[object]], right: Sequence[int] = ()) -> str:
    """Columns padded to their widest cell, two spaces apart; column indexes in ``right`` are
    right-aligned (numbers). Trailing spaces are trimmed."""
    cells = [[str(h) for h in headers]] + [[NONE if c is None or c == "" else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for row in cells:
        padded = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        lines.append("  ".join(padded).rstrip())
    return "\n".join(lines)


def shorten(text: str, width: int = PROMPT_WIDTH) -> str:
    """One line of at most ``width`` characters (an ellipsis marks a cut)."""
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def seconds(value: float | None) -> str:
    return NONE if value is None else f"{value:.2f}s"


def age(then: float | None, now: float) -> str:
    """``3s`` / ``4m`` / ``2h`` / ``5d`` ago."""
    if then is None:
        return NONE
    left = max(now - then, 0.0)
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60)):
        if left >= size:
            return f"{int(left // size)}{unit}"
    return f"{int(left)}s"


def timestamp(iso: str | None) -> float | None:
    """An RFC 3339 time from the API (``…Z``) as Unix seconds."""
    return None if not iso else datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def shapes(model: dict[str, Any]) -> str:
    """``512x512`` (static: the compiled widths and heights, ``|`` between several) or
    ``64-1024/8`` (dynamic: the range of a side and its step)."""
    spec = model["shapes"]
    if model["static"]:
        return "|".join(map(str, spec["widths"])) + "x" + "|".join(map(str, spec["heights"]))
    side = spec["widths"]
    return f"{side['min']}-{side['max']}/{side['multiple_of']}"


def models_table(page: dict[str, Any]) -> str:
    headers = ["MODEL", "BACKEND", "SHAPES", "IMAGES", "READY", "BUSY", "LOADING", "QUEUED", "PAUSED"]
    rows = []
    for m in page["data"]:
        workers = m["workers"]
        rows.append(
            [
                m["name"] + (" *" if m["default"] else ""),
                m["backend"],
                shapes(m),
                ",".join(str(n) for n in m["shapes"]["num_images"]),
                workers["ready"],
                workers["busy"],
                workers["loading"],
                m["queue_depth"],
                "yes" if m["paused"] else "no",
            ]
        )
    return render_table(headers, rows, right=range(4, 8)) + "\n* the default model"


def progress(job: dict[str, Any]) -> str:
    total = job["progress"]["total"] or job["input"]["num_inference_steps"]
    step = total if job["status"] == "succeeded" else job["progress"]["step"]
    return f"{step}/{total}"


def jobs_table(page: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    headers = ["ID", "STATUS", "MODEL", "STEP", "AGE", "TOTAL", "PROMPT"]
    rows = [
        [
            job["id"],
            job["status"],
            job["model"],
            progress(job),
            age(timestamp(job["created_at"]), now),
            seconds(job["metrics"]["total_seconds"]),
            shorten(job["input"]["prompt"]),
        ]
        for job in page["data"]
    ]
    text = render_table(headers, rows, right=(3, 4, 5)) if rows else "no jobs"
    if page.get("next_cursor") is not None:
        text += f"\nmore: --cursor {page['next_cursor']}"
    return text


def workers_table(page: dict[str, Any], now: float | None = None) -> str:
    now = time.time() if now is None else now
    headers = ["WORKER", "MODEL", "STATE", "JOB", "DONE", "LAST", "DUTY", "HEARTBEAT", "UP", "HOST", "PID"]
    rows = [
        [
            w["name"],
            w["model"],
            w["state"],
            w["current_job"],
            w["jobs_done"],
            seconds(w["last_pipeline_seconds"]),
            f"{w['duty_cycle']:.0%}",
            age(w["heartbeat_at"], now),
            age(w["started_at"], now),
            w["host"],
            w["pid"],
        ]
        for w in page["data"]
    ]
    return render_table(headers, rows, right=(4, 5, 6, 7, 8, 10)) if rows else "no live workers"


def job_details(job: dict[str, Any]) -> str:
    """One job, a field a line (``dq status``)."""
    given = job["input"]
    metrics = job["metrics"]
    fields: list[tuple[str, object]] = [
        ("id", job["id"]),
        ("status", job["status"] + (" (cancel requested)" if job["cancel_requested"] else "")),
        ("progress", progress(job)),
        ("queue position", job["queue_position"]),
        ("model", job["model"]),
        ("tenant", job["tenant"]),
        ("prompt", given["prompt"]),
        ("size", f"{given['width']}x{given['height']}, {given['num_images']} image(s), {given['output_format']}"),
        ("steps / seed", f"{given['num_inference_steps']} / {given['seed']}"),
        ("created", job["created_at"]),
        ("started", job["started_at"]),
        ("completed", job["completed_at"]),
        ("queued / gen / total", " / ".join(seconds(metrics[k]) for k in METRICS)),
        ("worker", job["worker"]),
        ("attempts", job["attempts"]),
    ]
    if job["error"]:
        fields.append(("error", f"{job['error']['type']}: {job['error']['message']}"))
    for n, out in enumerate(job["outputs"], 1):
        fields.append((f"output {n}", out["url"] or f"s3://{out['bucket']}/{out['key']}"))
    width = max(len(name) for name, _ in fields)
    return "\n".join(f"{name:<{width}}  {NONE if value in (None, '') else value}" for name, value in fields)
