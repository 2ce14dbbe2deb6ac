"""Timings and observations of the integration bed, summarised at the end of the run.

Tests report durations through the `timing` fixture (attached to the test as a
`record_property`, e.g. for JUnit XML) and notable facts through `observe`; both are
collected on the pytest config and printed as one section by `pytest_terminal_summary`,
so they show without `-s` and nothing is written into the repository.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

TIMINGS = pytest.StashKey[dict[str, float]]()
OBSERVATIONS = pytest.StashKey[list[str]]()


def _timings(config: pytest.Config) -> dict[str, float]:
    return config.stash.setdefault(TIMINGS, {})


def _observations(config: pytest.Config) -> list[str]:
    return config.stash.setdefault(OBSERVATIONS, [])


@pytest.fixture
def timing(
    request: pytest.FixtureRequest, record_property: Callable[[str, object], None]
) -> Callable[[str, float], None]:
    """`timing(name, seconds)`: keep a measured duration for the summary and the report."""

    def record(name: str, seconds: float) -> None:
        value = round(seconds, 3)
        _timings(request.config)[name] = value
        record_property(f"timing_{name}", value)

    return record


@pytest.fixture
def observe(request: pytest.FixtureRequest) -> Callable[[str], None]:
    """`observe(text)`: keep a measured fact (not a failure) for the summary."""
    return _observations(request.config).append


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, exitstatus: int, config: pytest.Config
) -> None:
    timings = config.stash.get(TIMINGS, {})
    observations = config.stash.get(OBSERVATIONS, [])
    if not timings and not observations:
        return
    terminalreporter.section("multi-host bed: timings")
    for name, seconds in timings.items():
        terminalreporter.write_line(f"{name:<32} {seconds:8.3f} s")
    for text in observations:
        terminalreporter.write_line(f"observed: {text}")
