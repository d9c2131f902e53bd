"""Poison really is poison; fault settings; and the CLI refuses bad runs before any I/O."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from local.load import ConfigError
from local.load.cli import RateType, main
from local.load.poison import SHAPES, payload
from local.load.warehouse import PRESETS, flaky_faults, parse_faults
from retry.errors import UndecodableMessage
from services.reservation.domain import decode_event
from services.reservation.settings import ApiSettings


@pytest.mark.parametrize("shape", SHAPES)
def test_every_poison_shape_is_undecodable(shape: str) -> None:
    with pytest.raises(UndecodableMessage):
        decode_event(payload(shape, 7))


def test_oversized_poison_is_bigger_than_any_api_request() -> None:
    limit = ApiSettings.model_fields["max_body_bytes"].default
    assert len(payload("oversized", 1)) > limit
    assert len(payload("oversized", 1, oversized_bytes=2048)) == pytest.approx(2048, abs=2)


@pytest.mark.parametrize(
    ("text", "preset", "expected"),
    [
        (None, None, None),
        ('{"failure_rate": 0.3}', None, {"failure_rate": 0.3}),
        (None, "flaky", PRESETS["flaky"]),
    ],
)
def test_parse_faults(text: str | None, preset: str | None, expected: object) -> None:
    assert parse_faults(text, preset) == expected


@pytest.mark.parametrize(
    ("text", "preset"), [("{", None), ("[1]", None), (None, "nope"), ("{}", "flaky")]
)
def test_parse_faults_refuses(text: str | None, preset: str | None) -> None:
    with pytest.raises(ConfigError):
        parse_faults(text, preset)


def test_flaky_share_becomes_a_retryable_failure_rate() -> None:
    assert flaky_faults(0.05) == {"failure_rate": 0.05, "status_codes": [500, 502, 503]}


@pytest.mark.parametrize(("value", "rate"), [("300", 300.0), ("300/s", 300.0), ("1.5/sec", 1.5)])
def test_rate_type(value: str, rate: float) -> None:
    assert RateType().convert(value, None, None) == rate


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--api", "http://10.0.0.1:8000", "--count", "1"], "not a loopback"),
        (["--api", "http://127.0.0.1:9", "--rate", "5", "--concurrency", "2"], "not both"),
        (["--api", "http://127.0.0.1:9", "--mix", "sick=1"], "unknown kind"),
        (["--api", "http://127.0.0.1:9", "--rate", "0/s"], "positive"),
        (["--api", "http://127.0.0.1:9", "--faults", "{"], "not JSON"),
    ],
)
def test_cli_refuses_before_any_io(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, [*args, "--endpoints", "/nonexistent/endpoints.json"])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_cli_help_lists_the_modes() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for flag in ("--rate", "--concurrency", "--count", "--duration", "--mix", "--faults"):
        assert flag in result.output
