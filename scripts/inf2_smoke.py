"""Submit N jobs to a running stack and report per-image latency and images/s.

    python scripts/inf2_smoke.py --api http://127.0.0.1:8000 --model sd15-512 --jobs 40

Works against any stack (it is exercised here against the tiny CPU model); on inf2 it
measures the Neuron workers. Per-image latency is the worker's pipeline time
(`metrics.generation_seconds`); end-to-end is submit → succeeded as the client sees it.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from dq.client import Client  # noqa: E402


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--api", default="http://127.0.0.1:8000")
    parser.add_argument("--model")
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--prompt", default="a pig with wings flying over skyscrapers, warm color palette")
    args = parser.parse_args()
    client = Client(args.api, timeout_s=30)
    body = {"prompt": args.prompt, "num_inference_steps": args.steps}
    if args.model:
        body["model"] = args.model
    started = time.monotonic()
    submitted = {}
    for seed in range(args.jobs):
        job = client.submit({**body, "seed": seed})
        submitted[job["id"]] = time.monotonic()
    finished: dict[str, dict] = {}
    while len(finished) < len(submitted):
        for job_id in submitted.keys() - finished.keys():
            job = client.get(job_id)
            if job["status"] in ("succeeded", "failed", "canceled"):
                finished[job_id] = job
        time.sleep(0.2)
    wall = time.monotonic() - started
    ok = [j for j in finished.values() if j["status"] == "succeeded"]
    images = sum(len(j["outputs"]) for j in ok)
    gen = [j["metrics"]["generation_seconds"] / max(len(j["outputs"]), 1) for j in ok]
    e2e = [j["metrics"]["total_seconds"] for j in ok]
    workers = sorted({j["worker"] for j in ok})
    print(f"jobs: {len(ok)}/{args.jobs} succeeded, {images} images in {wall:.1f}s on {len(workers)} worker(s)")
    if gen:
        print(f"per-image pipeline latency: p50 {statistics.median(gen):.3f}s  p95 {percentile(gen, 0.95):.3f}s")
        print(f"end-to-end (submit→succeeded): p50 {statistics.median(e2e):.3f}s  p95 {percentile(e2e, 0.95):.3f}s")
        print(f"throughput: {images / wall:.2f} images/s")
    return 0 if len(ok) == args.jobs else 1


if __name__ == "__main__":
    sys.exit(main())
