"""``dq``: run the local stack, the workers, and talk to the API."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from dq import tables
from dq.client import ApiError, Client, print_json
from jobs.logs import configure_logging
from jobs.models import JobStatus
from jobs.settings import Settings

SEED_PROMPT = (
    "a pig with wings flying in floating US dollar banknotes in the air, skyscrapers behind, "
    "warm color palette, muted colors, detailed, 8k"
)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(Settings.from_env())  # DQ_LOG_FORMAT: text or json
    try:
        result: int = args.func(args)
        return result
    except ApiError as exc:
        print(f"dq: {exc}", file=sys.stderr)
        if isinstance(exc.body, dict) and exc.body.get("errors"):
            for err in exc.body["errors"]:
                print(f"  {err['field']}: {err['message']}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dq", description="diffusion-queue: async text-to-image jobs")
    parser.add_argument("--version", action="version", version=f"dq {package_version()}")
    sub = parser.add_subparsers(dest="command", required=True)

    up = sub.add_parser("up", help="run Redis, S3, the API and a worker on 127.0.0.1 until Ctrl-C")
    up.add_argument("--api-port", type=int, default=8000)
    up.add_argument("--workers", type=int, default=1, help="CPU workers; 0 = detect NeuronCores / GPUs")
    up.set_defaults(func=cmd_up)

    demo = sub.add_parser("demo", help="start the local stack, run one job, save the image, stop")
    demo.add_argument("prompt", nargs="?", default=SEED_PROMPT)
    demo.add_argument("-o", "--output", default="demo-output.png")
    demo.add_argument("--steps", type=int, default=20)
    demo.add_argument("--seed", type=int, default=42)
    demo.set_defaults(func=cmd_demo)

    proc = sub.add_parser("worker-process", help="one worker process (what the launcher spawns)")
    proc.add_argument("--model", default=None)
    proc.add_argument("--cores", default="", help="the core range this process sees, for its name")
    proc.set_defaults(func=cmd_worker_process)

    launcher = sub.add_parser("worker", help="start one worker per NeuronCore group (or per GPU / CPU worker)")
    launcher.add_argument("--model", default=None)
    launcher.add_argument("--cores", type=int, help="NeuronCores to use (default: detected)")
    launcher.add_argument("--cores-per-worker", type=int, default=2)
    launcher.add_argument(
        "--first-core", type=int, default=0, help="first NeuronCore index (several launchers per host)"
    )
    launcher.add_argument("--workers", type=int, help="N CPU workers (no accelerator)")
    launcher.add_argument("--gpus", type=int, help="one worker per GPU, CUDA_VISIBLE_DEVICES=i")
    launcher.set_defaults(func=cmd_worker)

    hooks = sub.add_parser("webhooks", help="deliver webhooks until SIGTERM / Ctrl-C (signed per tenant)")
    hooks.set_defaults(func=cmd_webhooks)

    comp = sub.add_parser("compile", help="compile a model into compiled/<name>/ (or build the tiny one)")
    comp.add_argument("model", nargs="?", help="hub id or local diffusers directory to export")
    comp.add_argument("--tiny", action="store_true", help="build the embedded tiny model")
    comp.add_argument("--sdxl", action="store_true", help="tiny: the SDXL variant (two text encoders)")
    comp.add_argument(
        "--emulate-neuron",
        action="store_true",
        help="tiny: write it as optimum-cli export neuron does, traced on the CPU (no Neuron SDK)",
    )
    comp.add_argument("--name", help="directory under DQ_MODELS_DIR (default tiny-sd…, or from the model)")
    comp.add_argument("--static", action="store_true", help="tiny: declare a static (Neuron-style) shape")
    comp.add_argument("--height", type=int)
    comp.add_argument("--width", type=int)
    comp.add_argument("--batch-size", type=int, default=1)
    comp.add_argument("--num-images-per-prompt", type=int, default=1)
    comp.add_argument("--auto-cast", default="matmul", choices=["none", "matmul", "all"])
    comp.add_argument("--auto-cast-type", default="bf16", choices=["bf16", "fp16", "tf32"])
    comp.add_argument("--instance-type", choices=["inf2", "trn1", "trn1n", "trn2"])
    comp.add_argument("--force", action="store_true")
    comp.set_defaults(func=cmd_compile)

    submit = sub.add_parser("submit", help="submit a job")
    submit.add_argument("prompt")
    submit.add_argument("--model")
    submit.add_argument("--steps", type=int)
    submit.add_argument("--seed", type=int)
    submit.add_argument("--width", type=int)
    submit.add_argument("--height", type=int)
    submit.add_argument("--num-images", type=int)
    submit.add_argument("--guidance-scale", type=float)
    submit.add_argument("--format", choices=["png", "jpeg", "webp"])
    submit.add_argument("--wait", action="store_true")
    submit.add_argument("-o", "--output", help="with --wait: save the first image here")
    _api_arg(submit)
    submit.set_defaults(func=cmd_submit)

    cancel = sub.add_parser("cancel", help="cancel a queued or running job")
    cancel.add_argument("job_id")
    _api_arg(cancel)
    cancel.set_defaults(func=cmd_cancel)

    status = sub.add_parser("status", help="show a job")
    status.add_argument("job_id")
    _api_arg(status, json_flag=True)
    status.set_defaults(func=cmd_status)

    models = sub.add_parser("models", help="list models, their shapes, workers and queues")
    _api_arg(models, json_flag=True)
    models.set_defaults(func=cmd_models)

    jobs = sub.add_parser("jobs", help="list jobs, newest first (an admin key: everyone's)")
    jobs.add_argument("--status", choices=[s.value for s in JobStatus], help="only jobs in this state")
    jobs.add_argument("--error-type", help="only failed jobs with this error.type (max_attempts: dead letters)")
    jobs.add_argument("--limit", type=int, default=20, help="jobs per page (1-100)")
    jobs.add_argument("--cursor", type=int, help="the next page (printed under the table)")
    jobs.add_argument("--tenant", help="admin keys: only this tenant's jobs")
    _api_arg(jobs, json_flag=True)
    jobs.set_defaults(func=cmd_jobs)

    workers = sub.add_parser("workers", help="list live workers (an admin key)")
    _api_arg(workers, json_flag=True)
    workers.set_defaults(func=cmd_workers)

    metrics = sub.add_parser(
        "metrics", help="the scaling signal per model (straight from Redis: DQ_REDIS_URL); --cloudwatch for AWS"
    )
    metrics.add_argument("--cloudwatch", action="store_true", help="print the CloudWatch PutMetricData calls")
    metrics.add_argument("--publish", action="store_true", help="with --cloudwatch: send them (boto3's credentials)")
    metrics.add_argument("--namespace", default="DiffusionQueue", help="CloudWatch namespace")
    metrics.add_argument("--interval", type=float, default=0.0, help="repeat every N seconds (0: once)")
    metrics.set_defaults(func=cmd_metrics)

    keys = sub.add_parser("keys", help="API keys (straight in Redis: DQ_REDIS_URL)")
    keys_sub = keys.add_subparsers(dest="keys_command", required=True)
    create = keys_sub.add_parser("create", help="a new key, printed once")
    create.add_argument("--tenant", required=True)
    create.add_argument("--label", default="")
    create.add_argument("--admin", action="store_true")
    create.add_argument("--rate-limit-per-s", type=float, help="submits per second (default: DQ_RATE_LIMIT_PER_S)")
    create.add_argument("--rate-limit-burst", type=int, help="token bucket size (default: DQ_RATE_LIMIT_BURST)")
    create.add_argument("--max-active-jobs", type=int, help="queued + running (default: DQ_MAX_ACTIVE_JOBS)")
    create.add_argument("--max-priority", default="normal", choices=["low", "normal", "high"])
    create.set_defaults(func=cmd_keys_create)
    listing = keys_sub.add_parser("list", help="prefix, tenant, label, admin, created, last used")
    listing.add_argument("--tenant")
    listing.set_defaults(func=cmd_keys_list)
    revoke = keys_sub.add_parser("revoke", help="revoke a key by its prefix")
    revoke.add_argument("prefix")
    revoke.set_defaults(func=cmd_keys_revoke)
    return parser


def _api_arg(p: argparse.ArgumentParser, json_flag: bool = False) -> None:
    p.add_argument("--api", default=None, help="API base URL (default: $DQ_API_URL, else http://127.0.0.1:8000)")
    if json_flag:
        p.add_argument("--json", action="store_true", help="print the API's JSON instead of a table")


def package_version() -> str:
    try:
        return version("diffusion-queue")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _show(args: argparse.Namespace, answer: dict[str, Any], table: Callable[[dict[str, Any]], str]) -> int:
    """The API's JSON with ``--json``, else the table made of it."""
    if args.json:
        print_json(answer)
    else:
        print(table(answer))
    return 0


def _client(args: argparse.Namespace) -> Client:
    """The API at ``--api`` (else ``DQ_API_URL``) with ``DQ_API_KEY`` (else ``./.dq-api-key``)."""
    from dq.stack import API_KEY_FILE, read_api_key_file

    settings = Settings.from_env()
    key = settings.api_key or read_api_key_file(Path.cwd() / API_KEY_FILE) or ""
    return Client(str(args.api or settings.api_url), key)


def _local_settings() -> Settings:
    """What ``dq up`` / ``dq demo`` run with: the local admin key and webhook secret added."""
    from dq.stack import with_local_api_key, with_local_webhooks

    settings = with_local_webhooks(Settings.from_env(), Path.cwd(), out=sys.stderr)
    return with_local_api_key(settings, Path.cwd(), out=sys.stderr)


def _interrupt_on_signals() -> None:
    """SIGTERM (and SIGINT, also when a background shell ignored it) stop the stack cleanly."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    signal.signal(signal.SIGINT, interrupt)


def cmd_up(args: argparse.Namespace) -> int:
    from worker.pipelines.tiny import ensure_embedded_model

    _interrupt_on_signals()
    from dq.stack import LocalStack, sleep_forever

    settings = _local_settings()
    ensure_embedded_model(settings.models_dir, settings.default_model)  # no-op for other models
    with LocalStack(settings, api_port=args.api_port, workers=args.workers or None) as stack:
        stack.wait_ready()
        print(f"dq: ready — API on {stack.api_url}  (Ctrl-C stops everything)", file=sys.stderr)
        try:
            sleep_forever(stack)
        except KeyboardInterrupt:
            print("\ndq: stopping…", file=sys.stderr)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from worker.pipelines.tiny import ensure_embedded_model

    _interrupt_on_signals()
    from dq.stack import LocalStack

    settings = _local_settings()
    ensure_embedded_model(settings.models_dir, settings.default_model)  # no-op for other models
    log_path = Path(".dq-demo.log")
    with log_path.open("w") as log_sink, LocalStack(settings, sink=log_sink) as stack:
        print(f"dq demo: stack up (logs in {log_path}); waiting for the worker to warm up…", file=sys.stderr)
        stack.wait_ready()
        client = Client(stack.api_url, settings.api_key)
        job = client.submit({"prompt": args.prompt, "num_inference_steps": args.steps, "seed": args.seed})
        print(f"dq demo: submitted job {job['id']}", file=sys.stderr)
        final = client.wait(job["id"], timeout_s=300, out=sys.stderr)
        if final["status"] != "succeeded":
            print_json(final)
            return 1
        output = final["outputs"][0]
        Path(args.output).write_bytes(client.download(output["url"]))
        print(f"dq demo: image saved to {args.output}", file=sys.stderr)
        print(f"S3 URL: s3://{output['bucket']}/{output['key']}")
        print(f"presigned URL: {output['url']}")
        print_json(final)
    print("dq demo: stack stopped", file=sys.stderr)
    return 0


def cmd_worker_process(args: argparse.Namespace) -> int:
    from worker.main import run_worker

    settings = Settings.from_env()
    run_worker(settings, args.model or settings.default_model, cores=args.cores)
    return 0


def cmd_webhooks(args: argparse.Namespace) -> int:
    """The delivery loop; SIGTERM / SIGINT stop claiming and let attempts in flight finish."""
    from webhooks.deliver import Deliverer, DeliveryConfig

    settings = Settings.from_env()
    try:
        config = DeliveryConfig.from_settings(settings)
    except ValueError as exc:
        print(f"dq webhooks: {exc}", file=sys.stderr)
        return 2
    deliverer = Deliverer.from_settings(settings, config)

    def stop(signum: int, _frame: object) -> None:
        deliverer.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    allowed = settings.webhook_allowlist or "nothing private"
    print(
        f"dq webhooks: delivering ({config.concurrency} at a time, {config.timeout_s:g} s timeout, "
        f"{len(config.schedule_s)} attempts per event; allow-list: {allowed})",
        file=sys.stderr,
    )
    try:
        deliverer.run()
    finally:
        deliverer.close()
    print("dq webhooks: stopped", file=sys.stderr)
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from dq.launcher import Launcher, plan_slots

    settings = Settings.from_env()
    model = args.model or settings.default_model
    try:
        kind, slots = plan_slots(args.cores, args.cores_per_worker, args.workers, args.gpus, first_core=args.first_core)
    except ValueError as exc:
        print(f"dq worker: {exc}", file=sys.stderr)
        return 2
    names = ", ".join(s.name for s in slots)
    print(f"dq worker: {len(slots)} {kind} worker(s) for {model}: {names}", file=sys.stderr)
    return Launcher(model, slots).run()


def cmd_compile(args: argparse.Namespace) -> int:
    from dq.compile import ExportSpec, run_export, valid_name

    settings = Settings.from_env()
    if args.tiny:
        return _build_tiny(settings, args)
    if not args.model:
        print("dq compile: name a model (hub id or directory) to export, or --tiny", file=sys.stderr)
        return 2
    try:
        spec = ExportSpec(
            model=args.model,
            output=settings.models_dir / valid_name(args.name or Path(args.model.rstrip("/")).name),
            height=args.height or 512,
            width=args.width or 512,
            batch_size=args.batch_size,
            num_images_per_prompt=args.num_images_per_prompt,
            auto_cast=args.auto_cast,
            auto_cast_type=args.auto_cast_type,
            instance_type=args.instance_type,
        )
        code = run_export(spec)
    except ValueError as exc:
        print(f"dq compile: {exc}", file=sys.stderr)
        return 2
    if code == 0:
        _print_capabilities(spec.output)
    return code


def _build_tiny(settings: Settings, args: argparse.Namespace) -> int:
    from dq.compile import ExportSpec, run_emulated_export, valid_name
    from worker.pipelines.tiny import TINY_SIDE, StaticShape, build_tiny_model, build_tiny_sdxl_model

    default_name = ("tiny-sdxl" if args.sdxl else "tiny-sd") + ("-neuron" if args.emulate_neuron else "")
    out = settings.models_dir / valid_name(args.name or default_name)
    width, height = args.width or TINY_SIDE, args.height or TINY_SIDE
    spec = ExportSpec(
        model="tiny",
        output=out,
        height=height,
        width=width,
        batch_size=args.batch_size,
        num_images_per_prompt=args.num_images_per_prompt,
        auto_cast=args.auto_cast,
        auto_cast_type=args.auto_cast_type,
        instance_type=args.instance_type,
    )
    try:
        if args.emulate_neuron:
            spec.validate()
    except ValueError as exc:
        print(f"dq compile: {exc}", file=sys.stderr)
        return 2
    if out.exists() and not args.force:
        print(f"dq compile: {out} exists (use --force to rebuild)", file=sys.stderr)
        return 0
    if args.emulate_neuron:
        run_emulated_export(spec, sdxl=args.sdxl)
    elif args.sdxl:
        build_tiny_sdxl_model(out)
    else:
        static = StaticShape(width, height, args.batch_size, args.num_images_per_prompt) if args.static else None
        build_tiny_model(out, static)
    print(f"dq compile: built {out}", file=sys.stderr)
    _print_capabilities(out)
    return 0


def _print_capabilities(path: Path) -> None:
    from jobs.capabilities import read_model

    print_json(read_model(path).public())


def cmd_submit(args: argparse.Namespace) -> int:
    client = _client(args)
    body: dict[str, Any] = {"prompt": args.prompt}
    for field, value in (
        ("model", args.model),
        ("num_inference_steps", args.steps),
        ("seed", args.seed),
        ("width", args.width),
        ("height", args.height),
        ("num_images", args.num_images),
        ("guidance_scale", args.guidance_scale),
        ("output_format", args.format),
    ):
        if value is not None:
            body[field] = value
    job = client.submit(body)
    if not args.wait:
        print_json(job)
        return 0
    final = client.wait(job["id"], out=sys.stderr)
    if args.output and final["status"] == "succeeded":
        Path(args.output).write_bytes(client.download(final["outputs"][0]["url"]))
        print(f"saved {args.output}", file=sys.stderr)
    print_json(final)
    return 0 if final["status"] == "succeeded" else 1


def cmd_cancel(args: argparse.Namespace) -> int:
    print_json(_client(args).cancel(args.job_id))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    return _show(args, _client(args).get(args.job_id), tables.job_details)


def cmd_models(args: argparse.Namespace) -> int:
    return _show(args, _client(args).models(), tables.models_table)


def cmd_jobs(args: argparse.Namespace) -> int:
    page = _client(args).jobs(
        status=args.status, error_type=args.error_type, limit=args.limit, cursor=args.cursor, tenant=args.tenant
    )
    return _show(args, page, tables.jobs_table)


def cmd_workers(args: argparse.Namespace) -> int:
    return _show(args, _client(args).workers(), tables.workers_table)


def cmd_metrics(args: argparse.Namespace) -> int:
    """Read the fleet once (or every ``--interval`` s) and print (or publish) its figures."""
    from jobs.capabilities import ModelCatalog
    from jobs.cloudwatch import publish, put_metric_data_calls
    from jobs.connections import as_text, create_redis
    from jobs.keys import Keys
    from jobs.metrics import read_fleet, scaling_figures

    settings = Settings.from_env()
    client, keys = create_redis(settings), Keys(settings.key_prefix)
    cloudwatch = None
    if args.publish:
        import boto3

        cloudwatch = boto3.client("cloudwatch")
    while True:
        models = [m.name for m in ModelCatalog(settings.models_dir).all()]
        models += [as_text(m) for m in client.smembers(keys.models())]  # type: ignore[union-attr]
        snapshot = read_fleet(client, keys, models, time.time())
        if not args.cloudwatch:
            print_json(scaling_figures(snapshot))
        else:
            calls = put_metric_data_calls(snapshot, args.namespace)
            if cloudwatch is not None:
                publish(calls, cloudwatch)
            print(json.dumps(calls, default=lambda at: at.isoformat(), indent=2), flush=True)
        if args.interval <= 0:
            return 0
        time.sleep(args.interval)


def _key_store() -> Any:
    from jobs.connections import create_redis
    from jobs.keys import Keys
    from jobs.tenants import KeyStore

    settings = Settings.from_env()
    return KeyStore(create_redis(settings), Keys(settings.key_prefix))


def cmd_keys_create(args: argparse.Namespace) -> int:
    try:
        record, key = _key_store().create(
            args.tenant,
            label=args.label,
            admin=args.admin,
            rate_limit_per_s=args.rate_limit_per_s,
            rate_limit_burst=args.rate_limit_burst,
            max_active_jobs=args.max_active_jobs,
            max_priority=args.max_priority,
        )
    except ValueError as exc:
        print(f"dq keys: {exc}", file=sys.stderr)
        return 2
    print(
        f"dq keys: created {record.prefix} for tenant {record.tenant!r}; the key is shown this once:", file=sys.stderr
    )
    print(key)
    return 0


def cmd_keys_list(args: argparse.Namespace) -> int:
    print_json({"data": [k.public() for k in _key_store().list(args.tenant)]})
    return 0


def cmd_keys_revoke(args: argparse.Namespace) -> int:
    if not _key_store().revoke(args.prefix):
        print(f"dq keys: no key with prefix {args.prefix!r}", file=sys.stderr)
        return 1
    print(f"dq keys: revoked {args.prefix}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
