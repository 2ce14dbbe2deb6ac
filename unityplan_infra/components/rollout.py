"""Rolling upgrades while the pods are registered (the plan: topology/rollout.py).

`Rollout` gives each pod's NATS, PostgreSQL and Redis containers what they wait for.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import pulumi

from unityplan_infra.components.pod import PodStack
from unityplan_infra.topology.plan import Deployment
from unityplan_infra.topology.rollout import ROLLED_SERVICES, waits_for


def previous_outputs() -> pulumi.Output[dict[str, Any]]:
    """This stack's outputs as the previous `up` left them (empty before the first one).

    A stack reference to the stack itself, read by the engine as a Read step (in previews
    too) from the backend's last checkpoint. The engine finalises the stack's own outputs
    only at the end of an update, so the read sees the previous update's. A stack that
    `pulumi stack init` created but no `up` has touched reads as empty (pulumi/pulumi
    pkg/backend/diy/state.go, getSnapshotStackOutputs); the DIY backend's organization is
    the constant "organization".
    """
    name = f"{pulumi.get_organization()}/{pulumi.get_project()}/{pulumi.get_stack()}"
    reference = pulumi.StackReference("previous-outputs", stack_name=name)
    return reference.outputs.apply(lambda outputs: dict(outputs or {}))


class Rollout:
    """Rolling upgrades while pods are registered: what each pod's containers wait for.

    For NATS, PostgreSQL and Redis, the container of a pod that already runs waits for the
    pod before it in the rollout (topology/rollout.py): for NATS, that server's gate (back
    and JetStream-current); for the others, its container (created only once healthy). A
    container nothing replaces is a "same" step and passes at once.
    """

    def __init__(self, deployment: Deployment, previous: pulumi.Output[Any]) -> None:
        self._deployment, self._previous = deployment, previous
        self._ready: dict[tuple[str, str], pulumi.CustomResource] = {}

    def waits(self, code: str) -> dict[str, pulumi.Output[Sequence[pulumi.Resource]]]:
        return {
            service: self._previous.apply(functools.partial(self._wait, service, code))
            for service in ROLLED_SERVICES
        }

    def _wait(self, service: str, code: str, previous: Any) -> list[pulumi.Resource]:
        before = waits_for(self._deployment, previous, code)
        return [] if before is None else [self._ready[(service, before)]]

    def done(self, code: str, pod: PodStack, nats_gate: pulumi.CustomResource | None) -> None:
        """What marks pod `code`'s services back, for the pods after it (a leaving pod,
        without a gate, is not in the rollout)."""
        if nats_gate is not None:
            self._ready[("nats", code)] = nats_gate
        for service in ("postgres", "redis"):
            self._ready[(service, code)] = pod.containers[service]
