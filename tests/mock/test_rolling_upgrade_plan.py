"""The update plan of an image change: one pod at a time, never all pods at once.

The second run sees the first as its state, and reads the first run's exports through the
stack reference to itself (tests/support/mocks.py), as a real `up` does. What the engine
does with a plan is fixed by its edges: a resource starts only once everything it waits for
is done, and a named container is deleted only when its replacement is about to be created
(delete-before-replace). So "pod B's container waits for pod A's gate" is "A is back and
JetStream-current before B's server goes".
"""

from __future__ import annotations

import copy
import itertools
import json
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest

from tests.support.mocks import CONTAINER_TYPE, Graph, Resource, is_secret, run_program, unwrap
from tests.support.stackfile import as_pulumi_config, stack_values
from unityplan_infra.config.models import Images

pytestmark = pytest.mark.timeout(240)

NS = "unityplan-infra"
CODES = ("dk", "no", "se")
DEFAULTS = Images()
PG_MAJOR = DEFAULTS.postgres.split(":")[1].split(".")[0]
NEW_IMAGES = {  # PostgreSQL of the same major: the major guard would stop another one
    "nats": "nats:9.9.9-alpine",
    "postgres": f"postgres:{PG_MAJOR}.99-bookworm",
    "redis": "redis:9.9.9-alpine",
}
GATE = "command:{}:Command"


@pytest.fixture(autouse=True)
def fixed_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HOME", "/home/alice")
    yield


def values(stack: str, images: dict[str, str] | None = None, fourth: bool = False) -> dict[str, Any]:
    found = copy.deepcopy(stack_values(stack))
    if images:
        found[f"{NS}:images"] = {**found.get(f"{NS}:images", {}), **images}
    if fourth:
        pod: dict[str, Any] = {"code": "fi", "name": "finland", "slot": 4}
        if stack == "nordic":
            pod["host"] = copy.deepcopy(found[f"{NS}:pods"][0]["host"])
        found[f"{NS}:pods"].append(pod)
    return found


@cache
def first(stack: str) -> Graph:
    return run_program(as_pulumi_config(values(stack)), stack)


@cache
def upgraded(stack: str, service: str) -> Graph:
    return run_program(
        as_pulumi_config(values(stack, {service: NEW_IMAGES[service]})), stack, prior=first(stack)
    )


def container(graph: Graph, service: str, code: str) -> Resource:
    return graph.containers()[f"service-{service}-{code}"]


def gate(graph: Graph, code: str) -> Resource:
    (found,) = [r for r in graph.resources if r.name == f"nats-gate-{code}"]
    return found


def ready_marker(graph: Graph, service: str, code: str) -> Resource:
    """What says pod `code`'s service is back: NATS's gate, the others' container."""
    return gate(graph, code) if service == "nats" else container(graph, service, code)


@pytest.mark.parametrize("stack", ["dev", "nordic"])
@pytest.mark.parametrize("service", ["nats", "postgres", "redis"])
def test_an_image_change_replaces_one_pod_after_the_other(stack: str, service: str) -> None:
    graph = upgraded(stack, service)
    steps = graph.steps(first(stack))
    replaced = {c.inputs["name"] for c in graph.of_type(CONTAINER_TYPE)
                if steps[c.urn] == "replace"}  # fmt: skip
    assert {f"service-{service}-{code}" for code in CODES} <= replaced
    # In config order: each pod's container waits for the previous pod's service to be
    # back, directly; the first waits for no other pod.
    for before, after in itertools.pairwise(CODES):
        marker = ready_marker(graph, service, before)
        assert marker.urn in container(graph, service, after).dependencies, (before, after)
    others = {ready_marker(graph, service, code).urn for code in CODES[1:]}
    assert not others & graph.ancestors(container(graph, service, CODES[0]))
    # Transitively: the last pod's server goes only after all the others are back.
    last = container(graph, service, CODES[-1])
    for code in CODES[:-1]:
        assert graph.depends_on(last, ready_marker(graph, service, code))


@pytest.mark.parametrize("stack", ["dev", "nordic"])
def test_the_nats_gate_runs_again_for_a_replaced_server_and_waits_for_it(stack: str) -> None:
    graph = upgraded(stack, "nats")
    steps = graph.steps(first(stack))
    for code in CODES:
        marker = gate(graph, code)
        assert steps[marker.urn] in ("update", "replace"), code  # triggered by the new container
        assert container(graph, "nats", code).urn in marker.dependencies
        spec = json.loads(unwrap(marker.inputs["stdin"]))
        assert is_secret(marker.inputs["stdin"])
        assert spec["gate"]["server"] == f"service-nats-{code}"
        assert spec["gate"]["peer_of"] == [f"TERRITORY_{code.upper()}"]
        # The system user lets the gate wait for the JetStream meta group too (gate.py).
        assert spec["system_user"] == "unityplan-system" and spec["system_password"]


@pytest.mark.parametrize("stack", ["dev", "nordic"])
def test_other_services_are_not_chained_by_one_services_upgrade(stack: str) -> None:
    graph = upgraded(stack, "nats")
    for service in ("postgres", "redis", "ipfs", "matrix"):
        for code in CODES[1:]:
            ancestors = graph.ancestors(container(graph, service, code))
            assert not any(gate(graph, other).urn in ancestors for other in CODES), service


@pytest.mark.parametrize("stack", ["dev", "nordic"])
def test_a_first_deploy_starts_every_pod_at_once(stack: str) -> None:
    """No pod runs yet, so none waits for another (test_dependency_chain.py measures the
    path); the chain is there from the second `up` on, where unchanged steps are "same"."""
    graph = first(stack)
    for service in ("nats", "postgres", "redis"):
        for code in CODES:
            ancestors = graph.ancestors(container(graph, service, code))
            foreign = [other for other in CODES if other != code
                       and ready_marker(graph, service, other).urn in ancestors]  # fmt: skip
            assert foreign == [], (service, code)
    again = run_program(as_pulumi_config(values(stack)), stack, prior=graph)
    assert gate(again, "dk").urn in container(again, "nats", "no").dependencies
    changed = {again.by_urn()[u][0].name: st for u, st in again.steps(graph).items() if st != "same"}
    assert changed == {}


def test_any_change_that_replaces_the_containers_rolls_them() -> None:
    """Not only an image: a new host port replaces every pod's Redis container, one after
    the other."""
    graph = run_program(
        as_pulumi_config({**values("dev"), f"{NS}:podPorts": {"redis": 16379}}), "dev",
        prior=first("dev"),
    )  # fmt: skip
    steps = graph.steps(first("dev"))
    assert {steps[container(graph, "redis", code).urn] for code in CODES} == {"replace"}
    for before, after in itertools.pairwise(CODES):
        assert container(graph, "redis", before).urn in container(graph, "redis", after).dependencies


def test_a_pod_added_with_the_new_image_is_not_part_of_the_rollout() -> None:
    graph = run_program(
        as_pulumi_config(values("dev", {"nats": NEW_IMAGES["nats"]}, fourth=True)),
        "dev", prior=first("dev"),
    )  # fmt: skip
    new = container(graph, "nats", "fi")
    assert not any(gate(graph, code).urn in new.dependencies for code in CODES)
    assert gate(graph, "no").urn in container(graph, "nats", "se").dependencies
