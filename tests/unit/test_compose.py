"""docker-compose.yml and the Dockerfile, checked without a Docker engine.

The compose file is parsed as YAML (anchors and merge keys resolved) and its
structure checked: the services a deployment needs, a worker that can be
scaled, a healthcheck on every long-running service, and only
``TASKPLANE_*`` variables that :class:`taskplane.config.Settings` knows.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from taskplane.config import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
REQUIRED_SERVICES = {"redis", "postgres", "worker", "beat", "flower", "http-agent", "grpc-agent"}
_TASKPLANE_VAR = re.compile(r"\bTASKPLANE_[A-Z0-9_]+")


def settings_env_names() -> set[str]:
    """Every ``TASKPLANE_*`` name Settings reads: fields, and nested fields joined by ``__``."""
    names = set()
    for name, field in Settings.model_fields.items():
        names.add(f"{ENV_PREFIX}{name.upper()}")
        nested = field.annotation
        if isinstance(nested, type) and issubclass(nested, BaseModel):
            for sub in nested.model_fields:
                names.add(f"{ENV_PREFIX}{name.upper()}__{sub.upper()}")
    return names


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]  # type: ignore[no-any-return]


def long_running(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Services that stay up (not one-shots, not tools behind a profile)."""
    return {
        name: svc
        for name, svc in services.items()
        if svc.get("restart") != "no" and not svc.get("profiles")
    }


def test_settings_env_names_cover_nested_groups() -> None:
    names = settings_env_names()
    assert "TASKPLANE_REDIS_URL" in names
    assert "TASKPLANE_RETRY_CONFIG__INITIAL_DELAY" in names
    assert "TASKPLANE_ANOMALY_DETECTION__CHECK_INTERVAL_MS" in names
    assert "TASKPLANE_RETRY_CONFIG" in names  # a whole group as JSON is valid too


def test_every_service_a_deployment_needs_is_there(services: dict[str, Any]) -> None:
    assert set(services) >= REQUIRED_SERVICES


def test_worker_can_be_scaled(services: dict[str, Any]) -> None:
    worker = services["worker"]
    assert "container_name" not in worker
    assert "ports" not in worker
    assert worker["command"][:2] == ["taskplane", "worker"]


def test_every_long_running_service_has_a_healthcheck(services: dict[str, Any]) -> None:
    missing = [n for n, svc in long_running(services).items() if not svc.get("healthcheck")]
    assert missing == []
    for name, svc in long_running(services).items():
        test = svc["healthcheck"]["test"]
        assert test[0] in ("CMD", "CMD-SHELL") and len(test) >= 2, name


def test_taskplane_services_are_built_from_the_dockerfile(services: dict[str, Any]) -> None:
    built = {n for n, svc in services.items() if "build" in svc}
    assert {"worker", "beat", "flower", "http-agent", "grpc-agent"} <= built
    for name in built:
        assert services[name]["build"]["dockerfile"] == "Dockerfile", name
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", dockerfile, re.MULTILINE)
    assert re.search(r"^RUN pip install -c constraints\.txt \"?\.", dockerfile, re.MULTILINE)


def test_the_image_installs_pinned_versions_of_every_dependency() -> None:
    """constraints.txt pins each runtime dependency, so the image is reproducible."""
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            assert version, f"not pinned: {line}"
            pins[canonical(name)] = version
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    wanted = pyproject["dependencies"] + pyproject["optional-dependencies"]["postgres"]
    for requirement in wanted:
        name = re.split(r"[\[<>=!~; ]", requirement, maxsplit=1)[0]
        assert canonical(name) in pins, requirement
    assert "COPY pyproject.toml README.md constraints.txt" in (ROOT / "Dockerfile").read_text()


def test_minimum_versions_are_the_floors() -> None:
    """constraints-min.txt pins every runtime dependency at its pyproject floor."""
    floors = {}
    for requirement in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]:
        name, floor = re.match(r"([A-Za-z0-9_.-]+)(?:\[[^]]*\])?>=([^,;]+)", requirement).groups()  # type: ignore[union-attr]
        floors[canonical(name)] = floor
    pins = {}
    for line in (ROOT / "constraints-min.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[canonical(name)] = version
    assert set(pins) == set(floors)
    for name, floor in floors.items():
        assert pins[name] == floor or pins[name].startswith(f"{floor}."), (name, pins[name])


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_depends_on_names_real_services(services: dict[str, Any]) -> None:
    for name, svc in services.items():
        depends = svc.get("depends_on", {})
        assert set(depends) <= set(services), name
        for condition in depends.values() if isinstance(depends, dict) else []:
            assert condition["condition"] in (
                "service_healthy",
                "service_started",
                "service_completed_successfully",
            ), name


def test_workers_and_beat_share_the_backends(services: dict[str, Any]) -> None:
    for name in ("worker", "beat", "flower"):
        env = services[name]["environment"]
        assert env["TASKPLANE_REDIS_URL"] == "redis://redis:6379/0", name
    for name in ("worker", "beat"):
        env = services[name]["environment"]
        assert env["TASKPLANE_DATABASE_URL"].startswith("postgresql+psycopg://"), name
        assert "@postgres:5432/" in env["TASKPLANE_DATABASE_URL"], name


def test_flower_takes_basic_auth_from_the_environment(services: dict[str, Any]) -> None:
    flower = services["flower"]
    assert flower["environment"]["FLOWER_BASIC_AUTH"].startswith("${FLOWER_BASIC_AUTH")
    assert "0.0.0.0" in flower["command"]
    assert flower["profiles"] == ["flower"]  # started on request, with its password


def test_no_variable_is_required_to_run_compose() -> None:
    """``${VAR:?}`` fails every compose command until VAR is set: none may be used."""
    text = (ROOT / "docker-compose.yml").read_text()
    assert re.findall(r"\$\{[A-Z0-9_]+:?\?", text) == []


def test_the_postgres_password_is_never_in_a_url(services: dict[str, Any]) -> None:
    """Any character may be in the password: libpq reads it from PGPASSWORD."""
    for name in ("worker", "beat"):
        env = services[name]["environment"]
        url = env["TASKPLANE_DATABASE_URL"]
        assert "POSTGRES_PASSWORD" not in url and ":" not in url.split("//", 1)[1].split("@")[0]
        assert env["PGPASSWORD"] == services["postgres"]["environment"]["POSTGRES_PASSWORD"]


def test_workers_wait_for_the_agents_to_be_registered(services: dict[str, Any]) -> None:
    depends = services["worker"]["depends_on"]
    assert depends["register-agents"]["condition"] == "service_completed_successfully"
    assert services["register-agents"]["restart"] == "no"
    assert {"redis", "postgres"} <= set(depends)


def test_exactly_one_beat(services: dict[str, Any]) -> None:
    beat = services["beat"]
    assert beat["deploy"]["replicas"] == 1
    assert "container_name" in beat  # compose refuses `--scale beat=2` for a named container
    schedule = beat["environment"]["TASKPLANE_BEAT_SCHEDULE"]
    assert schedule.startswith("/app/.run/")  # where the Dockerfile lets beat write
    assert "/app/.run" in " ".join(beat["healthcheck"]["test"])


def test_every_taskplane_variable_is_a_real_setting() -> None:
    text = (ROOT / "docker-compose.yml").read_text()
    used = set(_TASKPLANE_VAR.findall(text))
    assert used, "the compose file configures taskplane through TASKPLANE_* variables"
    assert used - settings_env_names() == set()


def test_agents_listen_on_every_interface(services: dict[str, Any]) -> None:
    for name in ("http-agent", "grpc-agent"):
        command = services[name]["command"]
        assert command[command.index("--host") + 1] == "0.0.0.0", name


def test_worker_healthcheck_is_taskplane_worker_health(services: dict[str, Any]) -> None:
    test = " ".join(services["worker"]["healthcheck"]["test"])
    assert "taskplane worker-health --node celery@$$HOSTNAME" in test
