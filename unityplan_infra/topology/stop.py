"""How long each service may take to stop before Docker kills it.

Docker stops a container with its stop signal, waits the grace period, then sends SIGKILL.
The Docker provider uses `destroy_grace_seconds` when it deletes or replaces a container
(unset means 0: SIGKILL at once); `docker stop`, `docker restart` and the daemon's own
shutdown use the container's `stop_timeout`. Every container sets both to the value here.

Stateful services get at least 30 s. The numbers come from stopping the real servers under
write load (tests/realsw/test_graceful_stop.py, docs/stop-measurements.md): each is several
times the slowest stop measured, so a loaded host still stops them cleanly.
"""

from __future__ import annotations

from typing import Final

STATELESS_GRACE_SECONDS: Final = 10
"""Exporters, dashboards, dev tools: nothing to flush."""

STOP_GRACE_SECONDS: Final[dict[str, int]] = {
    "postgres": 60,
    "redis": 60,
    "nats": 60,
    "ipfs": 60,
    "matrix": 30,
    "prometheus": 60,
    "grafana": 30,
    "alertmanager": 30,  # flushes its notification log and silences to its volume
    "jaeger": 30,
    "traefik": 30,
    # A run stopped midway is retried on schedule; its stale restic lock goes at the next run.
    "backup": 30,
}
"""Grace period by service kind; a kind not listed gets STATELESS_GRACE_SECONDS."""


def stop_grace_seconds(kind: str) -> int:
    return STOP_GRACE_SECONDS.get(kind, STATELESS_GRACE_SECONDS)
