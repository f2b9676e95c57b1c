"""``dq compile``: Optimum Neuron export of a diffusion pipeline into ``compiled/<name>/``.

A thin wrapper over ``optimum-cli export neuron`` (the documented export surface): it
builds the command, runs it, then reads back the artifact's capabilities so the user sees
exactly what the API will enforce. Compiling needs optimum-neuron with the Neuron SDK
(inf2/trn1, or any host with ``--instance-type``); SDXL takes ~37 min and ~92 GB RAM on CPU.

``--tiny --emulate-neuron`` needs neither: the tiny pipeline is written in the same layout,
traced on the CPU (``worker.pipelines.neuron_export``), to check the software path first.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from worker.pipelines.neuron import INSTALL_HINT, NEURON_SDK_MODULES

AUTO_CAST = ("none", "matmul", "all")
AUTO_CAST_TYPES = ("bf16", "fp16", "tf32")
INSTANCE_TYPES = ("inf2", "trn1", "trn1n", "trn2")


@dataclass(frozen=True)
class ExportSpec:
    model: str  # hub id or local diffusers directory
    output: Path
    height: int = 512
    width: int = 512
    batch_size: int = 1
    num_images_per_prompt: int = 1
    auto_cast: str = "matmul"
    auto_cast_type: str = "bf16"
    instance_type: str | None = None

    def validate(self) -> None:
        for label, value in (("height", self.height), ("width", self.width)):
            if value <= 0 or value % 8:
                raise ValueError(f"--{label} must be a positive multiple of 8, not {value}")
        if self.batch_size < 1 or self.num_images_per_prompt < 1:
            raise ValueError("--batch-size and --num-images-per-prompt must be at least 1")
        if self.auto_cast not in AUTO_CAST:
            raise ValueError(f"--auto-cast must be one of {AUTO_CAST}")
        if self.auto_cast_type not in AUTO_CAST_TYPES:
            raise ValueError(f"--auto-cast-type must be one of {AUTO_CAST_TYPES}")
        if self.instance_type is not None and self.instance_type not in INSTANCE_TYPES:
            raise ValueError(f"--instance-type must be one of {INSTANCE_TYPES}")


def valid_name(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", name):
        raise ValueError(f"model name {name!r}: use letters, digits, '.', '_' and '-' (it names a queue)")
    return name


def export_command(spec: ExportSpec, cli: str = "optimum-cli") -> list[str]:
    command = [
        cli,
        "export",
        "neuron",
        "--model",
        spec.model,
        "--task",
        "text-to-image",
        "--batch_size",
        str(spec.batch_size),
        "--height",
        str(spec.height),
        "--width",
        str(spec.width),
        "--num_images_per_prompt",
        str(spec.num_images_per_prompt),
    ]
    if spec.auto_cast != "none":
        command += ["--auto_cast", spec.auto_cast, "--auto_cast_type", spec.auto_cast_type]
    if spec.instance_type:
        command += ["--instance_type", spec.instance_type]
    return [*command, str(spec.output)]


def optimum_neuron_available() -> bool:
    """optimum-neuron and the Neuron SDK parts its exporter imports (torch-neuronx, neuronx-cc)."""
    if importlib.util.find_spec("optimum") is None or importlib.util.find_spec("optimum.neuron") is None:
        return False
    return all(importlib.util.find_spec(name) is not None for name in NEURON_SDK_MODULES)


def run_export(spec: ExportSpec) -> int:
    spec.validate()
    cli = shutil.which("optimum-cli")
    if not optimum_neuron_available() or cli is None:
        print(f"dq compile: {INSTALL_HINT}", file=sys.stderr)
        return 2
    command = export_command(spec, cli)
    print("dq compile: " + " ".join(command), file=sys.stderr)
    return subprocess.run(command, check=False).returncode


def run_emulated_export(spec: ExportSpec, sdxl: bool = False) -> int:
    """The tiny pipeline as an emulated Neuron artifact at ``spec.output`` (``spec.model`` unused)."""
    from worker.pipelines.neuron_export import CompilerOptions, build_emulated_tiny
    from worker.pipelines.tiny import StaticShape

    spec.validate()
    shape = StaticShape(spec.width, spec.height, spec.batch_size, spec.num_images_per_prompt)
    auto_cast = None if spec.auto_cast == "none" else spec.auto_cast
    options = CompilerOptions(
        auto_cast=auto_cast,
        auto_cast_type=spec.auto_cast_type if auto_cast else None,
        instance_type=spec.instance_type or "inf2",
    )
    build_emulated_tiny(spec.output, shape, options, sdxl=sdxl)
    return 0
