"""One place for configuration: every setting has a variable documented in docs/configuration.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from dq.procs import Service
from jobs.settings import Settings, env_name, setting_fields

TABLE = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()


@pytest.mark.parametrize("name", [f.name for f in setting_fields()])
def test_every_setting_is_documented(name: str) -> None:
    assert f"| `{env_name(name)}` |" in TABLE


def test_from_env_coerces_types() -> None:
    s = Settings.from_env(
        {"DQ_LEASE_S": "12", "DQ_HEARTBEAT_S": "0.5", "DQ_WARMUP": "no", "DQ_MODELS_DIR": "/m", "DQ_S3_BUCKET": "b"}
    )
    assert (s.lease_s, s.heartbeat_s, s.warmup, s.models_dir, s.s3_bucket) == (12, 0.5, False, Path("/m"), "b")


def test_from_env_names_the_bad_variable() -> None:
    with pytest.raises(ValueError, match="DQ_LEASE_S"):
        Settings.from_env({"DQ_LEASE_S": "soon"})


def test_unset_variables_keep_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_more_callers_than_redis_connections_wait_instead_of_failing(redis_service: Service) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from jobs.connections import create_redis

    client = create_redis(Settings(redis_url=redis_service.url, redis_max_connections=4))
    with ThreadPoolExecutor(40) as pool:  # each holds its connection for 0.1 s
        replies = list(pool.map(lambda i: client.blpop([f"nothing-{i}"], timeout=0.1), range(40)))
    assert replies == [None] * 40
    assert client.connection_pool.max_connections == 4
