"""Adding a pod is routine: what the engine would do to the pods already there.

The second run sees the first as its state (`run_program(prior=...)`, tests/support/
engine.py). Nothing of an existing pod may be replaced, and no service of an existing pod
restarted: config that peers share reaches them by reload (NATS: SIGHUP; kubo: live
peering; Prometheus: SIGHUP; WireGuard: `wg syncconf`), and Synapse's config no longer
names the pods at all (federation is limited to the mesh by address), so it is not
rewritten and Synapse is not restarted.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest

from tests.support.mocks import CONTAINER_TYPE, Graph, Resource, run_program, unwrap
from tests.support.stackfile import as_pulumi_config, stack_values

pytestmark = pytest.mark.timeout(180)

STACKS = ["dev", "nordic"]
EXISTING = ("dk", "no", "se")
COMMANDS = ("command:local:Command", "command:remote:Command")


@pytest.fixture(autouse=True)
def fixed_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HOME", "/home/alice")
    yield


def values(stack: str, fourth: bool) -> dict[str, Any]:
    found = copy.deepcopy(stack_values(stack))
    if fourth:
        pod: dict[str, Any] = {"code": "fi", "name": "finland", "slot": 4}
        if stack == "nordic":
            pod["host"] = copy.deepcopy(found["unityplan-infra:pods"][0]["host"])
        found["unityplan-infra:pods"].append(pod)
    return found


@cache
def runs(stack: str) -> tuple[Graph, Graph]:
    first = run_program(as_pulumi_config(values(stack, False)), stack)
    return first, run_program(as_pulumi_config(values(stack, True)), stack, prior=first)


def changed(stack: str) -> list[Resource]:
    first, second = runs(stack)
    return second.changed_since(first)


@pytest.mark.parametrize("stack", STACKS)
def test_no_container_of_an_existing_pod_is_replaced(stack: str) -> None:
    replaced = [r.inputs["name"] for r in changed(stack) if r.type == CONTAINER_TYPE]
    assert not [name for name in replaced if name.endswith(EXISTING)], replaced
    # The one container that does change is a dev tool, not a pod's: Redis Commander
    # lists every pod's Redis in its environment.
    assert set(replaced) <= {"dev-redis-commander"}


@pytest.mark.parametrize("stack", STACKS)
def test_no_service_of_an_existing_pod_restarts(stack: str) -> None:
    rerun = [r for r in changed(stack) if r.type in COMMANDS and r.of_pods(EXISTING)]
    assert rerun, "adding a pod reaches existing pods somehow (peers), or this test is void"
    restarts = [r.name for r in rerun if "docker restart" in str(unwrap(r.inputs["create"]))]
    assert restarts == []
    assert not [r.name for r in rerun if "synapse" in r.name and "hosts" not in r.name]


@pytest.mark.parametrize("stack", STACKS)
def test_what_reaches_existing_pods_is_reloaded_in_place(stack: str) -> None:
    """Each rerun command of an existing pod: a file and a reload signal, a live apply
    (`docker exec`, `wg syncconf`), or a file alone (read at the next lookup or start: peer
    lists, Synapse's hosts file). Any other docker action would be a restart or worse."""
    kinds: set[str] = set()
    for resource in changed(stack):
        if resource.type not in COMMANDS or not resource.of_pods(EXISTING):
            continue
        script = str(unwrap(resource.inputs["create"]))
        docker = [line for line in script.splitlines() if "docker " in line]
        if not docker:
            kinds.add("file")
        elif all("--signal HUP" in line or line.startswith("docker exec -i") for line in docker):
            kinds.add("reload")
        else:
            raise AssertionError((resource.name, docker))
        if "wg syncconf" in script:
            kinds.add("wireguard")
    assert "reload" in kinds and "file" in kinds  # both kinds occur, so both are checked
