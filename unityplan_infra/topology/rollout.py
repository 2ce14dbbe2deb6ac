"""Rolling upgrades: in which order the pods' containers of a service are replaced.

A new image for NATS, PostgreSQL or Redis replaces that service's container in every pod.
Left to itself the engine replaces them all at once: GLOBAL_EVENTS (R3) loses its quorum,
and every territory's database is down together. Instead the program chains the pods that
already run, in config order: each pod's container is registered only once the previous
pod's service is back (PostgreSQL, Redis: its container healthy; NATS: the server
JetStream-current, `nats/gate.py`). Whatever replaces the containers (an image, a port, a
healthcheck), they go one at a time; when nothing replaces them, every step of the chain is
"same" and costs nothing.

Which pods already run comes from the stack's own previous outputs (`pods`, read back
through a stack reference to itself). On a first deploy there are none: no chain, every pod
starts in parallel and the deploy's longest path stays short. A pod added in this `up` is
not part of the chain either: it has nothing to replace.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unityplan_infra.topology.plan import Deployment

ROLLED_SERVICES = ("nats", "postgres", "redis")
PODS_OUTPUT = "pods"  # the stack output whose keys are the pods the previous `up` deployed


def deployed_pods(previous: Mapping[str, Any] | None) -> set[str]:
    """Codes of the pods the previous `up` deployed (none before the first `up`)."""
    pods = (previous or {}).get(PODS_OUTPUT)
    return set(pods) if isinstance(pods, Mapping) else set()


def rolling_pods(deployment: Deployment, previous: Mapping[str, Any] | None) -> list[str]:
    """Codes of the pods that already run and stay, in the order their containers may be
    replaced. A leaving pod is not in the rollout: its server leaves JetStream in this `up`
    (no gate could pass), and its containers have no next `up` to roll in."""
    running = deployed_pods(previous)
    return [pod.code for pod in deployment.staying if pod.code in running]


def waits_for(deployment: Deployment, previous: Mapping[str, Any] | None, code: str) -> str | None:
    """The pod whose services must be back before pod `code`'s are replaced; None if pod
    `code` goes first or is new."""
    order = rolling_pods(deployment, previous)
    if code not in order:
        return None
    index = order.index(code)
    return order[index - 1] if index else None
