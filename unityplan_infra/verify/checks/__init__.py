"""One module per service; each turns the stack outputs into that service's checks."""

from __future__ import annotations

from collections.abc import Callable

from unityplan_infra.verify.checks import grafana, ipfs, matrix, nats, postgres, prometheus, redis
from unityplan_infra.verify.model import Check, Context

SERVICES: dict[str, Callable[[Context], list[Check]]] = {
    "postgres": postgres.checks,
    "redis": redis.checks,
    "nats": nats.checks,
    "ipfs": ipfs.checks,
    "matrix": matrix.checks,
    "prometheus": prometheus.checks,
    "grafana": grafana.checks,
}


def all_checks(context: Context, services: list[str]) -> list[Check]:
    """The checks of `services`, in the order of SERVICES."""
    return [check for name in SERVICES if name in services for check in SERVICES[name](context)]
