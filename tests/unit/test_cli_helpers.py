"""The CLI's pure helpers: durations, redacted URLs, plan files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from taskplane.cli_support import parse_duration, read_plan_file, redact
from taskplane.errors import ValidationError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("24h", 86400.0), ("1.5h", 5400.0),
     ("7d", 604800.0), ("2w", 1209600.0)],
)  # fmt: skip
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0h", "5y", "h"])
def test_bad_durations_name_the_option(text: str) -> None:
    with pytest.raises(ValidationError, match="--since"):
        parse_duration(text)


def test_redact_hides_only_the_password() -> None:
    assert redact("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redact("amqp://guest:guest@mq:5672//") == "amqp://guest:***@mq:5672//"
    assert redact("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"


def test_read_plan_file_overrides_the_id(tmp_path: Path) -> None:
    plan = tmp_path / "p.json"
    plan.write_text(json.dumps({"id": "from-file", "tasks": []}))
    assert read_plan_file(plan)["id"] == "from-file"
    assert read_plan_file(plan, plan_id="fresh")["id"] == "fresh"


@pytest.mark.parametrize(
    ("content", "message"),
    [("{nope", "not valid JSON"), ("[1, 2]", "expected a JSON object, got list")],
)
def test_read_plan_file_errors_say_what_is_wrong(
    tmp_path: Path, content: str, message: str
) -> None:
    plan = tmp_path / "p.json"
    plan.write_text(content)
    with pytest.raises(ValidationError, match=message):
        read_plan_file(plan)


def test_missing_plan_file(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cannot read plan file"):
        read_plan_file(tmp_path / "absent.json")
