"""When Docker checks a container's health, written the way the Docker provider reads it back.

The provider parses healthcheck durations with Go's `time.ParseDuration` and stores what
Docker reports through Go's `Duration.String`: "60s" comes back as "1m0s". An input in any
other spelling differs from the state after every refresh, so every preview shows an update
that changes nothing. `go_duration` writes the canonical spelling.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Final

INTERVAL: Final = timedelta(seconds=10)
TIMEOUT: Final = timedelta(seconds=5)
RETRIES: Final = 6
START_PERIOD: Final = timedelta(minutes=1)
"""Failures in the first minute do not count: initdb, kubo init and Synapse's migrations."""

_NANOSECONDS_PER_SECOND: Final = 1_000_000_000


def go_duration(value: timedelta) -> str:
    """`value` as Go's `time.Duration.String()` prints it: "1m0s", "1h2m3.5s", "1.5ms"."""
    return format_nanoseconds(value // timedelta(microseconds=1) * 1000)


def format_nanoseconds(nanoseconds: int) -> str:
    """Go's `Duration.String()` of a duration given in nanoseconds (a port of its algorithm)."""
    sign = "-" if nanoseconds < 0 else ""
    magnitude = abs(nanoseconds)
    if magnitude == 0:
        return "0s"
    if magnitude < _NANOSECONDS_PER_SECOND:
        # Below a second Go switches to the largest unit that keeps an integer part.
        for unit, size in (("ms", 1_000_000), ("µs", 1_000), ("ns", 1)):
            if magnitude >= size:
                return f"{sign}{_with_fraction(magnitude, size)}{unit}"
    seconds, fraction = divmod(magnitude, _NANOSECONDS_PER_SECOND)
    minutes, seconds = divmod(seconds, 60)
    hours, minutes = divmod(minutes, 60)
    text = _with_fraction(seconds * _NANOSECONDS_PER_SECOND + fraction, _NANOSECONDS_PER_SECOND)
    text += "s"
    if hours:
        return f"{sign}{hours}h{minutes}m{text}"
    if minutes:
        return f"{sign}{minutes}m{text}"
    return sign + text


def _with_fraction(value: int, unit: int) -> str:
    """`value / unit` in decimal without trailing zeros (Go's fmtFrac + fmtInt)."""
    whole, rest = divmod(value, unit)
    if not rest:
        return str(whole)
    digits = len(str(unit)) - 1
    return f"{whole}.{rest:0{digits}d}".rstrip("0")
