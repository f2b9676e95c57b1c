"""Per-job schedulers: the static table jobs/ keeps (no diffusers there) checked against diffusers,
listed per model, validated at submit (422 naming ``scheduler``), and swapped on a loaded
pipeline; progress in requested steps whatever the scheduler's callback count."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from jobs.capabilities import KARRAS_COMPATIBLE, SCHEDULERS, model_schedulers, read_model
from tests.neuron_fixtures import NEURON_WARNING_FILTERS, single_threaded  # noqa: F401
from worker.pipelines.base import GenerationRequest, steps_done

pytestmark = [
    *(pytest.mark.filterwarnings(f) for f in NEURON_WARNING_FILTERS),
    pytest.mark.usefixtures("single_threaded"),
]


def test_the_static_table_matches_diffusers(models_dir: Path) -> None:
    import diffusers
    from diffusers.schedulers import KarrasDiffusionSchedulers

    assert KARRAS_COMPATIBLE == {s.name for s in KarrasDiffusionSchedulers}
    sd_config = diffusers.DDIMScheduler.from_pretrained(str(models_dir / "tiny-sd" / "scheduler")).config
    for name, (class_name, options) in SCHEDULERS.items():
        cls = getattr(diffusers, class_name)
        assert isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin), name  # not a dummy
        assert class_name in KARRAS_COMPATIBLE and set(cls._compatibles) == KARRAS_COMPATIBLE, name
        built = cls.from_config(sd_config, **options)
        assert all(built.config[key] == value for key, value in options.items()), name
        assert built.config.beta_schedule == sd_config.beta_schedule, name  # the model's config carries over


def test_models_list_their_schedulers(client: FlaskClient) -> None:
    models = {m["name"]: m for m in client.get("/v1/models").get_json()["data"]}
    tiny = models["tiny-sd"]
    assert tiny["schedulers"] == list(SCHEDULERS) and tiny["default_scheduler"] == "ddim"
    assert "euler_a" in models["tiny-static"]["schedulers"]


def test_lcm_and_unknown_schedulers_offer_no_other(tmp_path: Path) -> None:
    (tmp_path / "scheduler").mkdir()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "LCMScheduler"}))
    assert model_schedulers(tmp_path, "LatentConsistencyModelPipeline") == {
        "schedulers": (),
        "default_scheduler": None,
    }
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(json.dumps({"_class_name": "DDIMScheduler"}))
    assert model_schedulers(tmp_path, "NeuronLatentConsistencyModelPipeline")["schedulers"] == ()
    (tmp_path / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": "FlowMatchEulerDiscreteScheduler"})
    )
    assert model_schedulers(tmp_path, "FluxPipeline") == {"schedulers": (), "default_scheduler": None}


def test_submit_validates_the_scheduler(client: FlaskClient) -> None:
    ok = client.post("/v1/jobs", json={"prompt": "p", "scheduler": "dpmpp_2m_karras"})
    assert ok.status_code == 202 and ok.get_json()["input"]["scheduler"] == "dpmpp_2m_karras"
    default = client.post("/v1/jobs", json={"prompt": "p"})
    assert "scheduler" not in default.get_json()["input"]  # the model's own
    for bad in ("lms", "Euler a", ""):
        response = client.post("/v1/jobs", json={"prompt": "p", "scheduler": bad})
        assert response.status_code == 422, bad
        assert [e["field"] for e in response.get_json()["errors"]] == ["scheduler"], bad


@pytest.mark.parametrize(
    ("steps", "callbacks", "expected"),
    [
        (4, 4, [1, 2, 3, 4]),
        (2, 3, [0, 1, 2]),  # PNDM: steps + 1
        (4, 7, [0, 1, 1, 2, 2, 3, 4]),  # Heun / KDPM2: 2 x steps - 1
        (4, 2, [2, 4]),  # fewer calls than steps (img2img strength)
        (3, None, [1, 2, 3, 3]),  # call count unknown: clamped only
    ],
)
def test_steps_done_counts_requested_steps(steps: int, callbacks: int | None, expected: list[int]) -> None:
    assert [steps_done(i, callbacks, steps) for i in range(len(expected))] == expected


@pytest.fixture(scope="module")
def diffusers_backend(models_dir: Path) -> Any:
    from worker.pipelines.diffusers_backend import DiffusersBackend

    backend = DiffusersBackend(models_dir / "tiny-sd")
    yield backend
    backend.close()


def test_the_diffusers_backend_swaps_schedulers_in_place(diffusers_backend: Any) -> None:
    pipe = diffusers_backend.pipe
    own, unet = pipe.scheduler, pipe.unet
    for name, (class_name, _) in SCHEDULERS.items():
        steps: list[int] = []
        request = GenerationRequest("a pig", None, 2, 7.5, 1, 64, 64, 1, scheduler=name)
        (image,) = diffusers_backend.generate(request, steps.append)
        assert type(pipe.scheduler).__name__ == class_name and image.size == (64, 64), name
        assert steps == sorted(steps) and steps.count(2) == 1 and steps[-1] == 2, (name, steps)
    diffusers_backend.generate(GenerationRequest("a pig", None, 1, 7.5, 1, 64, 64, 1), lambda step: None)
    assert pipe.scheduler is own and pipe.unet is unet
    with pytest.raises(ValueError, match="unknown scheduler 'lms'"):
        diffusers_backend.generate(GenerationRequest("a pig", None, 1, 7.5, 1, 64, 64, 1, "lms"), print)


def test_read_model_offers_the_table_for_karras_family_models(models_dir: Path) -> None:
    info = read_model(models_dir / "tiny-sd")
    assert info.schedulers == tuple(SCHEDULERS) and info.default_scheduler == "ddim"
