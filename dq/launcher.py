"""``dq worker``: one Celery worker process per NeuronCore group, supervised.

The launcher only counts cores and manages processes: it imports neither torch nor the
Neuron runtime, so no core is ever held by the parent. Each child sees its own cores via
``NEURON_RT_VISIBLE_CORES=<first>-<last>`` (or one GPU via ``CUDA_VISIBLE_DEVICES``), is
named after them (``nc2-3@host``), is restarted with backoff when it dies, and receives
SIGTERM for a warm shutdown (its running job finishes, nothing new is taken).
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

log = logging.getLogger("dq.launcher")
INF2_CORES_PER_DEVICE = 2


@dataclass(frozen=True)
class Slot:
    """What one child process gets: its name and the environment that pins it."""

    name: str
    cores: str
    env: dict[str, str]


def parse_neuron_ls(output: str) -> int:
    """Total NeuronCores in ``neuron-ls --json-output`` (a list of devices with ``nc_count``)."""
    devices = json.loads(output)
    if not isinstance(devices, list):
        raise ValueError("neuron-ls --json-output did not print a list of devices")
    return sum(int(device.get("nc_count", 0)) for device in devices)


def detect_neuron_cores(
    run: Callable[[Sequence[str]], str] | None = None,
    device_glob: str = "/dev/neuron*",
    cores_per_device: int = INF2_CORES_PER_DEVICE,
) -> int:
    """neuron-ls first, else /dev/neuron* devices × cores per device, else 0."""
    runner = run or _run_neuron_ls
    try:
        total = parse_neuron_ls(runner(["neuron-ls", "--json-output"]))
        if total > 0:
            return total
    except (OSError, ValueError, subprocess.SubprocessError) as exc:
        log.debug("neuron-ls unavailable: %s", exc)
    devices = [d for d in glob.glob(device_glob) if os.path.basename(d)[len("neuron") :].isdigit()]
    return len(devices) * cores_per_device


def _run_neuron_ls(cmd: Sequence[str]) -> str:
    if shutil.which(cmd[0]) is None:
        raise FileNotFoundError(cmd[0])
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, timeout=30).stdout


def detect_gpus() -> int:
    if shutil.which("nvidia-smi") is None:
        return 0
    try:
        out = subprocess.run(["nvidia-smi", "-L"], check=True, capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.splitlines() if line.startswith("GPU "))


def neuron_slots(total_cores: int, cores_per_worker: int, host: str, first_core: int = 0) -> list[Slot]:
    """Disjoint, contiguous core ranges from ``first_core``; a remainder that can't fill a group
    is left idle."""
    if cores_per_worker < 1:
        raise ValueError("--cores-per-worker must be at least 1")
    slots = []
    for first in range(first_core, first_core + total_cores - cores_per_worker + 1, cores_per_worker):
        last = first + cores_per_worker - 1
        cores = f"{first}-{last}" if last > first else str(first)
        slots.append(Slot(f"nc{cores}@{host}", cores, {"NEURON_RT_VISIBLE_CORES": cores}))
    return slots


def gpu_slots(gpus: int, host: str) -> list[Slot]:
    return [Slot(f"gpu{i}@{host}", str(i), {"CUDA_VISIBLE_DEVICES": str(i), "DQ_DEVICE": "cuda"}) for i in range(gpus)]


def cpu_slots(workers: int, host: str) -> list[Slot]:
    return [Slot(f"cpu{i}@{host}", "", {}) for i in range(workers)]


@dataclass
class Child:
    slot: Slot
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    restarts: int = 0  # in a row (the backoff's exponent; reset once the child stayed up)
    starts: int = 0  # in all: the child learns its restarts (DQ_WORKER_RESTARTS) for its metrics
    next_start_at: float = 0.0


@dataclass
class Launcher:
    model: str
    slots: list[Slot]
    command: list[str] = field(default_factory=list)
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    stable_after_s: float = 60.0
    stop_timeout_s: float = 600.0
    children: list[Child] = field(default_factory=list)
    stopping: bool = False

    def __post_init__(self) -> None:
        if not self.command:
            self.command = [sys.executable, "-m", "dq", "worker-process", "--model", self.model]
        self.children = [Child(slot) for slot in self.slots]

    def spawn(self, child: Child) -> None:
        env = dict(os.environ)
        env.update(child.slot.env)
        env["DQ_WORKER_NAME"] = child.slot.name
        env["DQ_WORKER_RESTARTS"] = str(child.starts)
        child.starts += 1
        child.proc = subprocess.Popen([*self.command, "--cores", child.slot.cores], env=env)
        child.started_at = time.monotonic()
        log.info("started %s (pid %d) %s", child.slot.name, child.proc.pid, child.slot.env)

    def supervise_once(self, now: float | None = None) -> None:
        """Restart children that died, with exponential backoff (reset once a child stayed up)."""
        now = time.monotonic() if now is None else now
        for child in self.children:
            if child.proc is None:
                if now >= child.next_start_at:
                    self.spawn(child)
                continue
            code = child.proc.poll()
            if code is None:
                if now - child.started_at > self.stable_after_s:
                    child.restarts = 0
                continue
            delay = min(self.backoff_s * (2**child.restarts), self.max_backoff_s)
            log.warning("%s exited with %s; restarting in %.1fs", child.slot.name, code, delay)
            child.restarts += 1
            child.proc = None
            child.next_start_at = now + delay

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Forward ``sig`` (warm shutdown) to every child and wait for them to exit."""
        self.stopping = True
        live = [c.proc for c in self.children if c.proc is not None and c.proc.poll() is None]
        for proc in live:
            proc.send_signal(sig)
        deadline = time.monotonic() + self.stop_timeout_s
        for proc in live:
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def run(self, poll_s: float = 0.5) -> int:
        received: list[int] = []

        def on_signal(signum: int, _frame: object) -> None:
            received.append(signum)

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        while not received:
            self.supervise_once()
            time.sleep(poll_s)
        log.info("signal %d: warm shutdown of %d worker(s)", received[0], len(self.children))
        self.stop(signal.SIGTERM)
        return 0


def plan_slots(
    cores: int | None,
    cores_per_worker: int,
    workers: int | None,
    gpus: int | None,
    host: str | None = None,
    first_core: int = 0,
    neuron_detector: Callable[[], int] = detect_neuron_cores,
    gpu_detector: Callable[[], int] = detect_gpus,
) -> tuple[str, list[Slot]]:
    """Decide what to start: NeuronCore groups, GPUs, or CPU workers."""
    host = host or socket.gethostname()
    if workers is not None:
        return "cpu", cpu_slots(workers, host)
    if gpus is not None:
        return "gpu", gpu_slots(gpus, host)
    total = cores if cores is not None else neuron_detector()
    if total > 0:
        if cores is None:
            total -= first_core  # detected cores are the whole host; skip those below first_core
        slots = neuron_slots(total, cores_per_worker, host, first_core)
        if not slots:
            raise ValueError(f"{total} core(s) cannot hold one worker of {cores_per_worker} cores")
        return "neuron", slots
    found_gpus = gpu_detector()
    if found_gpus:
        return "gpu", gpu_slots(found_gpus, host)
    return "cpu", cpu_slots(1, host)
