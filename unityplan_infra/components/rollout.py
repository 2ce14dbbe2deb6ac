"""Rolling upgrades while the pods are registered (the plan: topology/rollout.py).

`Rollout` gives each pod's NATS, PostgreSQL and Redis containers what they wait for, and
builds the `deployedImages` output the next `up` compares with.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import pulumi

from unityplan_infra.components.pod import PodStack
from unityplan_infra.topology.plan import Deployment
from unityplan_infra.topology.rollout import ROLLED_SERVICES, deployed_images, waits_for


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

    For NATS, PostgreSQL and Redis, a pod whose container a new image replaces waits for the
    pod before it in the rollout (topology/rollout.py): for NATS, that server's gate (back
    and JetStream-current); for the others, its container (created only once healthy).
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
        before = waits_for(self._deployment, previous, service, code)
        return [] if before is None else [self._ready[(service, before)]]

    def done(self, code: str, pod: PodStack, nats_gate: pulumi.CustomResource) -> None:
        """What marks pod `code`'s services back, for the pods after it."""
        self._ready[("nats", code)] = nats_gate
        for service in ("postgres", "redis"):
            self._ready[(service, code)] = pod.containers[service]

    def deployed(self) -> dict[str, dict[str, pulumi.Output[str]]]:
        """`deployedImages`, each image known only once its pod's service is back.

        If an `up` fails part-way, the engine keeps the previous value of an output the
        program could not resolve: a pod whose gate failed is still "on the old image" for
        the next `up`, which then rolls it (and the pods after it) again.
        """
        return {
            service: {
                code: self._ready[(service, code)].id.apply(functools.partial(_constant, image))
                for code, image in images.items()
            }
            for service, images in deployed_images(self._deployment).items()
        }


def _constant(value: str, _resolved: object) -> str:
    return value
