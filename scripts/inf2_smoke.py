"""Submit N jobs to a running stack and report per-image latency and images/s; or, first, check
the software side of a Neuron host in about a minute.

    python scripts/inf2_smoke.py --api http://127.0.0.1:8000 --model sd15-512 --jobs 40
    python scripts/inf2_smoke.py --check-software [--no-sdk]

Jobs: works against any stack (it is exercised here against the tiny CPU model); on inf2 it
measures the Neuron workers. Per-image latency is the worker's pipeline time
(`metrics.generation_seconds`); end-to-end is submit → succeeded as the client sees it.

--check-software, before a 40-minute compile: (1) our ``neuron`` backend drives optimum-neuron's
real pipeline class over an emulated artifact (``dq compile --tiny --emulate-neuron``, traced on
the CPU) with the Neuron SDK stood in for by tests/neuron_sdk, as CI does: the Python side
(optimum-neuron, diffusers, transformers and our code) works together; (2) the real Neuron SDK
(torch-neuronx, neuronx-cc) imports with optimum-neuron's pipeline classes, without stand-ins
(skipped with --no-sdk, e.g. on a host without it). Neither runs a NEFF: see docs/neuron.md.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from dq.client import Client  # noqa: E402

STAND_INS = REPO / "tests" / "neuron_sdk"
SDK_IMPORT = (
    "import importlib.metadata as m, torch_neuronx, neuronxcc, optimum.neuron as o; "
    "o.NeuronStableDiffusionPipeline; "
    "print('torch-neuronx', m.version('torch-neuronx'), '| neuronx-cc', neuronxcc.__version__, "
    "'| optimum-neuron', m.version('optimum-neuron'))"
)


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
    parser.add_argument("--check-software", action="store_true", help="the emulated check, then the Neuron SDK")
    parser.add_argument("--no-sdk", action="store_true", help="--check-software without the real-SDK import")
    parser.add_argument("--emulated-child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.emulated_child:
        return run_emulated(args.emulated_child)
    if args.check_software:
        return check_software(with_sdk=not args.no_sdk)
    return run_jobs(args)


def run_jobs(args: argparse.Namespace) -> int:
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


def check_software(with_sdk: bool) -> int:
    from worker.pipelines.neuron_export import build_emulated_tiny
    from worker.pipelines.tiny import StaticShape

    with tempfile.TemporaryDirectory(prefix="dq-emulated-") as tmp:
        started = time.monotonic()
        artifact = build_emulated_tiny(Path(tmp) / "tiny-sd-neuron", StaticShape())
        print(f"[1/2] emulated artifact built in {time.monotonic() - started:.1f}s: {artifact}")
        path = os.pathsep.join(p for p in (str(STAND_INS), os.environ.get("PYTHONPATH", "")) if p)
        env = {**os.environ, "PYTHONPATH": path, "USE_TORCH_XLA": "0"}
        child = [sys.executable, "-W", "ignore", __file__, "--emulated-child", str(artifact)]
        if subprocess.run(child, env=env, cwd=REPO, check=False).returncode != 0:
            print("[1/2] FAILED: the neuron backend did not run through optimum-neuron", file=sys.stderr)
            return 1
    if not with_sdk:
        print("[2/2] Neuron SDK import: skipped (--no-sdk)")
        return 0
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    sdk = subprocess.run([sys.executable, "-W", "ignore", "-c", SDK_IMPORT], env=env, cwd=REPO, check=False)
    if sdk.returncode != 0:
        print("[2/2] FAILED: the Neuron SDK does not import with optimum-neuron (see above)", file=sys.stderr)
        return 1
    print("[2/2] Neuron SDK imports with optimum-neuron's pipeline classes")
    return 0


def run_emulated(artifact: Path) -> int:
    """In the child (stand-ins on its path): load, generate, check steps, shapes and the guard."""
    from jobs.capabilities import read_model
    from worker.pipelines.base import GenerationRequest
    from worker.pipelines.neuron import NeuronBackend

    info = read_model(artifact)
    started = time.monotonic()
    backend = NeuronBackend(artifact, info)
    loaded = time.monotonic() - started
    steps: list[int] = []
    request = GenerationRequest("a pig with wings", None, 3, 7.5, 0, 64, 64, 1, scheduler="pndm")
    started = time.monotonic()
    images = backend.generate(request, steps.append)
    report = {
        "pipeline": type(backend.pipe).__name__,
        "load_s": round(loaded, 2),
        "call_s": round(time.monotonic() - started, 2),
        "steps_reported": steps,
        "image_sizes": [image.size for image in images],
        "refuses_uncompiled_shape": refuses_uncompiled_shape(backend),
    }
    print("[1/2] " + json.dumps(report))
    good = steps[-1] == 3 and max(steps) == 3 and report["image_sizes"] == [(64, 64)]
    return 0 if good and report["refuses_uncompiled_shape"] else 1


def refuses_uncompiled_shape(backend: Any) -> bool:
    try:
        backend.pipe(prompt="x", num_images_per_prompt=2, num_inference_steps=1)
    except Exception as exc:  # the traced module's static-shape guard (a NEFF's error on inf2)
        return "compiled for static shape" in str(exc)
    return False


if __name__ == "__main__":
    sys.exit(main())
