"""``dq models | jobs | workers | status`` for people: the tables (plain functions of the API's
JSON, checked here on answers shaped exactly as the API's response models say), ``--json``
unchanged, ``dq --version``; then the commands against a live API and worker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import redis

from api.models import ModelPage, WorkerPage
from dq.cli import package_version
from dq.client import Client
from dq.tables import age, job_details, jobs_table, models_table, render_table, shorten, workers_table
from jobs.tenants import KeyStore
from jobs.view import JobPage
from tests.conftest import REPO_ROOT, WorkerFactory

NOW = 1_800_000_090.0  # 90 s after the sample jobs were created
JOB_ID = "0123456789abcdef0123456789abcdef"


def job(status: str = "succeeded", prompt: str = "a pig with wings", **extra: Any) -> dict[str, Any]:
    done = status == "succeeded"
    return {
        "id": JOB_ID,
        "status": status,
        "model": "tiny-sd",
        "tenant": "default",
        "priority": "normal",
        "input": {
            "prompt": prompt,
            "negative_prompt": None,
            "num_inference_steps": 20,
            "guidance_scale": 7.5,
            "seed": 42,
            "width": 64,
            "height": 64,
            "num_images": 1,
            "output_format": "png",
            "ttl_seconds": 3600,
            "timeout_seconds": 600,
        },
        "created_at": "2027-01-15T08:00:00Z",
        "started_at": "2027-01-15T08:00:01Z" if status != "queued" else None,
        "completed_at": "2027-01-15T08:00:03Z" if done else None,
        "progress": {"step": 20 if done else 7, "total": 20},
        "cancel_requested": False,
        "queue_position": 0 if status == "queued" else None,
        "outputs": [
            {
                "url": "http://127.0.0.1:8333/dq/out.png?X-Amz-Signature=abc",
                "bucket": "dq",
                "key": "out.png",
                "content_type": "image/png",
                "width": 64,
                "height": 64,
                "seed": 42,
                "bytes": 1234,
                "sha256": "0" * 64,
                "format": "png",
            }
        ]
        if done
        else [],
        "error": None,
        "metrics": {"queue_seconds": 0.5, "generation_seconds": 1.5, "total_seconds": 2.25 if done else None},
        "attempts": 1,
        "worker": "w0.tiny-sd",
        "metadata": None,
        "webhook": None,
        "webhook_events_filter": None,
        "retry_of": None,
        "retried_by": None,
        **extra,
    }


def model(name: str, static: bool, **extra: Any) -> dict[str, Any]:
    sides: Any = [512] if static else {"min": 64, "max": 1024, "multiple_of": 8}
    return {
        "name": name,
        "backend": "neuron" if static else "diffusers",
        "pipeline_class": "StableDiffusionPipeline",
        "vae_scale_factor": 8,
        "default_width": 512,
        "default_height": 512,
        "static": static,
        "widths": [512],
        "heights": [512],
        "num_images": [1, 2] if not static else [1],
        "batch_size": 1,
        "max_side": 1024,
        "compiler_version": None,
        "auto_cast": None,
        "auto_cast_type": None,
        "requires_guidance_above_one": False,
        "schedulers": ["euler"],
        "default_scheduler": None,
        "shapes": {"widths": sides, "heights": sides, "num_images": [1, 2] if not static else [1]},
        "workers": {"ready": 2, "busy": 10, "loading": 0},
        "queue_depth": 123,
        "paused": False,
        "default": False,
        **extra,
    }


def worker(name: str, state: str, current_job: str = "") -> dict[str, Any]:
    return {
        "name": name,
        "host": "inf2-a",
        "pid": 4242,
        "model": "sd15",
        "backend": "neuron",
        "cores": "0-1",
        "state": state,
        "visible_cores": "0-1",
        "current_job": current_job,
        "last_pipeline_seconds": 1.234,
        "started_at": NOW - 7200,
        "ready_at": NOW - 7000,
        "jobs_done": 17,
        "heartbeat_at": NOW - 0.4,
        "busy_since": NOW - 1.0 if state == "busy" else None,
        "busy_seconds": 20.98,
        "duty_cycle": 0.874,
        "restarts": 0,
    }


def test_samples_are_shaped_as_the_api_answers() -> None:
    JobPage.model_validate({"data": [job(), job("queued"), job("running")], "next_cursor": None})
    ModelPage.model_validate({"data": [model("sd15", True), model("tiny-sd", False)]})
    WorkerPage.model_validate({"data": [worker("w0", "ready")]})


def test_columns_align_and_numbers_align_right() -> None:
    text = render_table(["NAME", "N"], [["a", 5], ["longer", 123], ["c", None]], right=[1])
    assert text.splitlines() == ["NAME      N", "a         5", "longer  123", "c         -"]


def test_models_table() -> None:
    page = {"data": [model("sd15", True, default=True, paused=True), model("tiny-sd", False)]}
    lines = models_table(page).splitlines()
    assert lines[0].split() == ["MODEL", "BACKEND", "SHAPES", "IMAGES", "READY", "BUSY", "LOADING", "QUEUED", "PAUSED"]
    assert lines[1].split() == ["sd15", "*", "neuron", "512x512", "1", "2", "10", "0", "123", "yes"]
    assert lines[2].split() == ["tiny-sd", "diffusers", "64-1024/8", "1,2", "2", "10", "0", "123", "no"]
    assert lines[3] == "* the default model"
    assert lines[1].index("123") == lines[2].index("123")  # columns line up


def test_jobs_table() -> None:
    long_prompt = "a lighthouse at dusk, " * 10
    page = {"data": [job(), job("running", prompt=long_prompt)], "next_cursor": "17"}
    lines = jobs_table(page, now=NOW).splitlines()
    assert lines[0].split() == ["ID", "STATUS", "MODEL", "STEP", "AGE", "TOTAL", "PROMPT"]
    assert lines[1].split()[:6] == [JOB_ID, "succeeded", "tiny-sd", "20/20", "1m", "2.25s"]
    assert lines[1].endswith("a pig with wings")
    assert lines[2].split()[:6] == [JOB_ID, "running", "tiny-sd", "7/20", "1m", "-"]
    assert lines[2].endswith("…") and len(shorten(long_prompt)) == 48
    assert lines[3] == "more: --cursor 17"
    assert jobs_table({"data": [], "next_cursor": None}) == "no jobs"


def test_workers_table() -> None:
    page = {"data": [worker("w0.sd15", "busy", JOB_ID), worker("w1.sd15", "ready")]}
    lines = workers_table(page, now=NOW).splitlines()
    assert lines[0].split() == [
        "WORKER", "MODEL", "STATE", "JOB", "DONE", "LAST", "DUTY", "HEARTBEAT", "UP", "HOST", "PID"
    ]  # fmt: skip
    assert lines[1].split() == ["w0.sd15", "sd15", "busy", JOB_ID, "17", "1.23s", "87%", "0s", "2h", "inf2-a", "4242"]
    assert lines[2].split()[3] == "-"  # no current job
    assert workers_table({"data": []}) == "no live workers"
    assert [age(NOW - s, NOW) for s in (5, 61, 3600 * 3, 86_400 * 2)] == ["5s", "1m", "3h", "2d"]


def test_job_details() -> None:
    failed = job("failed", error={"type": "generation_error", "message": "the UNet exploded"})
    assert "error                 generation_error: the UNet exploded" in job_details(failed).splitlines()
    done = job_details(job()).splitlines()
    assert "status                succeeded" in done
    assert "queued / gen / total  0.50s / 1.50s / 2.25s" in done
    assert "output 1              http://127.0.0.1:8333/dq/out.png?X-Amz-Signature=abc" in done
    assert "queue position        -" in done


def test_version_comes_from_the_package() -> None:
    shown = subprocess.run(
        [sys.executable, "-m", "dq", "--version"], capture_output=True, text=True, cwd=REPO_ROOT, check=True
    )
    assert shown.stdout.strip() == f"dq {package_version()}" and package_version()[0].isdigit()


def unsigned(page: dict[str, Any]) -> dict[str, Any]:
    """A page of jobs without the presigned URLs (signed anew, with the time, on every read)."""
    return {**page, "data": [{**j, "outputs": [{**o, "url": None} for o in j["outputs"]]} for j in page["data"]]}


def test_the_commands_against_a_live_api(
    live_api: str, start_worker: WorkerFactory, redis_client: redis.Redis, tmp_path: Path
) -> None:
    url = live_api
    start_worker("tiny-sd", name="tables-worker", DQ_BACKEND="emulated", DQ_EMULATED_SECONDS="0.05")
    _, key = KeyStore(redis_client).create("default", label="cli", admin=True)
    client = Client(url, key)
    done = client.wait(client.submit({"prompt": "a pig   with\nwings", "num_inference_steps": 3})["id"], timeout_s=60)

    def dq(*args: str) -> str:
        env = {**os.environ, "DQ_API_KEY": key, "PYTHONPATH": str(REPO_ROOT)}  # this checkout's dq
        ran = subprocess.run(
            [sys.executable, "-m", "dq", *args, "--api", url], env=env, capture_output=True, text=True, cwd=tmp_path
        )
        assert ran.returncode == 0, ran.stderr
        return ran.stdout

    jobs = dq("jobs", "--status", "succeeded", "--limit", "5").splitlines()
    assert jobs[0].split()[:3] == ["ID", "STATUS", "MODEL"]
    assert jobs[1].split()[:4] == [done["id"], "succeeded", "tiny-sd", "3/3"] and jobs[1].endswith("a pig with wings")
    assert dq("jobs", "--status", "failed") == "no jobs\n"
    assert unsigned(json.loads(dq("jobs", "--json"))) == unsigned(client.jobs())  # the API's answer as it is
    workers = dq("workers").splitlines()
    assert workers[1].split()[:2] == ["tables-worker", "tiny-sd"] and workers[1].split()[2] in ("ready", "busy")
    assert [w["name"] for w in json.loads(dq("workers", "--json"))["data"]] == ["tables-worker"]
    models = dq("models")
    assert "tiny-sd *" in models and "tiny-static" in models
    assert json.loads(dq("models", "--json")).keys() == {"data"}
    assert f"id                    {done['id']}" in dq("status", done["id"]).splitlines()
    assert json.loads(dq("status", done["id"], "--json"))["id"] == done["id"]
