"""Durations as the Docker provider reads them back: Go's `time.Duration.String()`.

The table is Go's own (`durationTests` in src/time/time_test.go), so the port is checked
against the behaviour it copies, negatives included (TestDurationString checks those too).
"""

from __future__ import annotations

from datetime import timedelta

import pytest

from tests.support.engine import parse_go_duration
from unityplan_infra.topology.health import format_nanoseconds, go_duration

NS, US, MS, S = 1, 1_000, 1_000_000, 1_000_000_000
MINUTE, HOUR = 60 * S, 3600 * S
GO_DURATION_TESTS = [
    ("0s", 0),
    ("1ns", 1 * NS),
    ("1.1µs", 1100 * NS),
    ("2.2ms", 2200 * US),
    ("3.3s", 3300 * MS),
    ("4m5s", 4 * MINUTE + 5 * S),
    ("4m5.001s", 4 * MINUTE + 5001 * MS),
    ("5h6m7.001s", 5 * HOUR + 6 * MINUTE + 7001 * MS),
    ("8m0.000000001s", 8 * MINUTE + 1 * NS),
    ("2562047h47m16.854775807s", (1 << 63) - 1),
    ("-2562047h47m16.854775808s", -(1 << 63)),
]


@pytest.mark.parametrize(("text", "nanoseconds"), GO_DURATION_TESTS)
def test_go_duration_string(text: str, nanoseconds: int) -> None:
    assert format_nanoseconds(nanoseconds) == text
    if nanoseconds > 0:
        assert format_nanoseconds(-nanoseconds) == "-" + text


@pytest.mark.parametrize(
    ("written", "read_back"),
    [("60s", "1m0s"), ("90s", "1m30s"), ("300s", "5m0s"), ("1h", "1h0m0s"), ("0.5s", "500ms"),
     ("10s", "10s"), ("1m0s", "1m0s"), ("1.5h", "1h30m0s"), ("0", "0s"), ("1us", "1µs")],
)  # fmt: skip
def test_what_the_provider_stores_for_what_we_write(written: str, read_back: str) -> None:
    assert format_nanoseconds(parse_go_duration(written)) == read_back


@pytest.mark.parametrize("text", ["", "1", "10 s", "1d", "s", "1m-1s"])
def test_invalid_durations_are_refused_as_go_refuses_them(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_go_duration(text)


def test_the_program_writes_timedeltas_canonically() -> None:
    assert go_duration(timedelta(minutes=1)) == "1m0s"
    assert go_duration(timedelta(seconds=10)) == "10s"
    assert go_duration(timedelta(milliseconds=1500)) == "1.5s"
