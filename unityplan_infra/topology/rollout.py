"""Rolling upgrades: which pods' containers a change replaces, and in which order.

A new image for NATS, PostgreSQL or Redis replaces that service's container in every pod.
Left to itself the engine replaces them all at once: GLOBAL_EVENTS (R3) loses its quorum,
and every territory's database is down together. Instead the program chains them: the pods
whose container changes go one at a time, in config order, each waiting for the previous
pod's service to be back (PostgreSQL, Redis: its container healthy; NATS: the server
JetStream-current, `nats/gate.py`).

The chain exists only while a rollout is under way. The program knows one is from the stack's
own previous outputs (`deployedImages`, read back through a stack reference to itself): a pod
whose deployed image differs from the configured one is about to be replaced. On a first
deploy, or when nothing changes, there is no chain, so the deploy's longest path stays short.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unityplan_infra.topology.plan import Deployment

ROLLED_SERVICES = ("nats", "postgres", "redis")
DEPLOYED_IMAGES = "deployedImages"  # the stack output a rollout is computed from


def deployed_images(deployment: Deployment) -> dict[str, dict[str, str]]:
    """The stack output: per rolled service, the image each active pod runs after this `up`."""
    images = deployment.config.images
    return {
        service: {pod.code: getattr(images, service) for pod in deployment.pods}
        for service in ROLLED_SERVICES
    }


def rolling_pods(deployment: Deployment, previous: Mapping[str, Any] | None, service: str) -> list[str]:
    """Codes of the pods whose `service` container this `up` replaces for a new image, in
    the order they go. A pod without a previous image is new: nothing of it is replaced."""
    before = (previous or {}).get(service) or {}
    wanted: str = getattr(deployment.config.images, service)
    return [
        pod.code
        for pod in deployment.pods
        if isinstance(before.get(pod.code), str) and before[pod.code] != wanted
    ]


def waits_for(
    deployment: Deployment, previous: Mapping[str, Any] | None, service: str, code: str
) -> str | None:
    """The pod whose `service` must be back before pod `code`'s is replaced; None if pod
    `code` goes first or is not replaced at all."""
    order = rolling_pods(deployment, previous, service)
    if code not in order:
        return None
    index = order.index(code)
    return order[index - 1] if index else None
