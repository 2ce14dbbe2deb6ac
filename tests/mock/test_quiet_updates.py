"""Routine updates are quiet and gentle, on both stacks (issue 12).

The program runs twice under mocks: the second run sees the first run's graph as the
stack's state (`run_program(prior=...)`), and `Graph.steps` says what the engine would do,
judged with the providers' own rules (tests/support/engine.py, docs/provider-behaviour.md):
an input the provider reads back in another spelling is a diff on every preview, a changed
command input re-runs the command, a ForceNew input replaces.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest

from tests.support import engine
from tests.support.mocks import CONTAINER_TYPE, NETWORK_TYPE, Graph, Resource, run_program
from tests.support.stackfile import SSH_HOST_KEY, as_pulumi_config, stack_values
from unityplan_infra.topology.stop import STOP_GRACE_SECONDS

pytestmark = pytest.mark.timeout(180)

NS = "unityplan-infra"
STACKS = ["dev", "nordic"]
STATEFUL = ("postgres", "redis", "nats", "ipfs", "matrix")
HOME = "/home/alice"


@pytest.fixture(autouse=True)
def fixed_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HOME", HOME)
    yield


def config_of(stack: str, **changes: Any) -> dict[str, str]:
    values = copy.deepcopy(stack_values(stack))
    for key, value in changes.items():
        values[f"{NS}:{key}"] = value
    return as_pulumi_config(values)


@cache
def first_run(stack: str) -> Graph:
    return run_program(config_of(stack), stack)


def changes(steps: dict[str, engine.Step]) -> dict[str, engine.Step]:
    return {urn: step for urn, step in steps.items() if step != "same"}


def resource_of(graph: Graph, urn: str) -> Resource:
    (found,) = graph.by_urn()[urn]
    return found


def stateful_containers(graph: Graph) -> list[Resource]:
    return [
        container
        for container in graph.of_type(CONTAINER_TYPE)
        if container.inputs["name"].startswith(tuple(f"service-{k}-" for k in STATEFUL))
    ]


# --- grace periods ------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_stateful_container_stops_with_at_least_30_seconds_grace(stack: str) -> None:
    graph = first_run(stack)
    stateful = stateful_containers(graph)
    assert len(stateful) == 5 * 3
    for container in stateful:
        kind = container.inputs["name"].split("-")[1]
        grace = container.inputs["destroyGraceSeconds"]
        assert grace == STOP_GRACE_SECONDS[kind] >= 30, container.name
        # docker stop, docker restart and the daemon's shutdown use the same period
        assert container.inputs["stopTimeout"] == grace, container.name


@pytest.mark.parametrize("stack", STACKS)
def test_no_container_is_killed_at_once(stack: str) -> None:
    for container in first_run(stack).of_type(CONTAINER_TYPE):
        assert container.inputs["destroyGraceSeconds"] >= 10, container.name
        assert container.inputs["stopTimeout"] == container.inputs["destroyGraceSeconds"]


# --- canonical forms ----------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_every_input_is_written_as_the_provider_reads_it_back(stack: str) -> None:
    graph = first_run(stack)
    checked = 0
    for resource in graph.resources:
        if not resource.custom:
            continue
        stored = engine.read_back(resource.type, resource.inputs)
        planned = engine.with_defaults(resource.type, resource.inputs)
        for key, value in planned.items():
            assert stored[key] == value, (resource.name, key, value, stored[key])
            checked += 1
    assert checked > 500


@pytest.mark.parametrize("stack", STACKS)
def test_healthcheck_durations_are_go_durations(stack: str) -> None:
    for container in first_run(stack).of_type(CONTAINER_TYPE):
        check = container.inputs.get("healthcheck")
        if check:
            assert (check["interval"], check["timeout"], check["startPeriod"]) == (
                "10s", "5s", "1m0s",
            ), container.name  # fmt: skip


@pytest.mark.parametrize("stack", STACKS)
def test_a_second_run_with_no_change_changes_nothing(stack: str) -> None:
    first = first_run(stack)
    second = run_program(config_of(stack), stack, prior=first)
    steps = second.steps(first)
    assert len(steps) == len([r for r in first.resources if r.custom]) > 100
    assert changes(steps) == {}


def test_the_old_healthcheck_spelling_would_show_a_diff_on_every_preview() -> None:
    """Control: the model sees the perpetual diff that "60s" caused before."""
    (container,) = [c for c in first_run("dev").of_type(CONTAINER_TYPE)
                    if c.inputs["name"] == "service-postgres-dk"]  # fmt: skip
    old_spelling = copy.deepcopy(container.inputs)
    old_spelling["healthcheck"]["startPeriod"] = "60s"
    stored = engine.read_back(CONTAINER_TYPE, old_spelling)
    assert stored["healthcheck"]["startPeriod"] == "1m0s"
    changed = engine.changed_keys(CONTAINER_TYPE, old_spelling, stored, old_spelling)
    assert changed == {"healthcheck"}
    # Without replace_on_changes that diff is an update that changes nothing in Docker.
    assert engine.step(CONTAINER_TYPE, changed) == "update"


def test_a_changed_healthcheck_replaces_the_container() -> None:
    """The provider's update ignores healthchecks: only a new container gets a new one."""
    (container,) = [c for c in first_run("dev").of_type(CONTAINER_TYPE)
                    if c.inputs["name"] == "service-redis-dk"]  # fmt: skip
    assert container.replace_on_changes == ["healthcheck"]
    changed = copy.deepcopy(container.inputs)
    changed["healthcheck"]["retries"] = 3
    keys = engine.changed_keys(CONTAINER_TYPE, container.inputs, container.outputs, changed)
    assert engine.step(CONTAINER_TYPE, keys, container.replace_on_changes) == "replace"


# --- credentials and users ----------------------------------------------------------------


def test_a_rotated_ssh_key_reruns_no_command_and_replaces_no_container() -> None:
    first = first_run("nordic")
    hetzner = dict(stack_values("nordic")[f"{NS}:hetzner"])
    hetzner["sshPublicKey"] = SSH_HOST_KEY + " rotated@unityplan"  # any other valid key
    config = config_of(
        "nordic",
        hetzner=hetzner,
        sshPrivateKey="-----BEGIN OPENSSH PRIVATE KEY-----\nrotated\n",
    )
    second = run_program(config, "nordic", prior=first)
    changed = changes(second.steps(first))
    # Only the key object at Hetzner is new (existing servers ignore ssh_keys).
    assert {resource_of(second, urn).type for urn in changed} == {"hcloud:index/sshKey:SshKey"}
    for command in second.of_type("command:remote:Command"):
        assert "privateKey" not in command.inputs["connection"], command.name


def test_another_user_running_up_reruns_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The config root is pinned at the first `up`; another home directory changes nothing."""
    first = first_run("dev")
    roots = {c.inputs["create"].split("install -d -m 0700 ")[1].split("\n")[0]
             for c in first.of_type("command:local:Command") if "install -d" in c.inputs.get("create", "")}  # fmt: skip
    assert roots == {f"{HOME}/.local/share/unityplan-infra/dev"}
    monkeypatch.setenv("HOME", "/home/bob")
    second = run_program(config_of("dev"), "dev", prior=first)
    assert changes(second.steps(first)) == {}
    # Control: a stack without the pin would have rewritten every file under bob's home.
    fresh = run_program(config_of("dev"), "dev")
    assert {urn for urn, step in changes(fresh.steps(first)).items()
            if resource_of(fresh, urn).type == "command:local:Command"}  # fmt: skip


def test_an_explicit_config_dir_wins_over_the_pinned_one() -> None:
    graph = run_program(config_of("dev", configDir="/srv/unityplan"), "dev")
    scripts = [c.inputs["create"] for c in graph.of_type("command:local:Command")
               if "install -d" in c.inputs.get("create", "")]  # fmt: skip
    assert scripts and all("install -d -m 0700 /srv/unityplan\n" in s for s in scripts)
    assert not [r for r in graph.resources if r.name == "config-root"]


# --- networks -----------------------------------------------------------------------------


@pytest.mark.parametrize("stack", STACKS)
def test_networks_are_deleted_before_replacement_and_joined_by_id(stack: str) -> None:
    graph = first_run(stack)
    networks = graph.of_type(NETWORK_TYPE)
    assert networks
    assert all(network.delete_before_replace for network in networks)
    ids = {network.id for network in networks}
    for container in graph.of_type(CONTAINER_TYPE):
        for attachment in container.inputs.get("networksAdvanced", []):
            assert attachment["name"] in ids, container.name


def test_a_new_mesh_subnet_replaces_the_network_and_its_containers_only() -> None:
    first = first_run("dev")
    second = run_program(config_of("dev", meshSubnet="172.31.0.0/20"), "dev", prior=first)
    changed = changes(second.steps(first))
    by_type: dict[str, set[str]] = {}
    for urn in changed:
        resource = resource_of(second, urn)
        by_type.setdefault(resource.type, set()).add(resource.inputs.get("name", resource.name))
    assert by_type.pop(NETWORK_TYPE) == {"unityplan-mesh-network"}
    mesh_id = next(r.id for r in second.of_type(NETWORK_TYPE)
                   if r.inputs["name"] == "unityplan-mesh-network")  # fmt: skip
    on_mesh = {c.inputs["name"] for c in second.of_type(CONTAINER_TYPE)
               if any(a["name"] == mesh_id for a in c.inputs.get("networksAdvanced", []))}  # fmt: skip
    assert len(on_mesh) == 34
    # node-exporter is on no network: it listens on the mesh network's gateway address.
    assert by_type.pop(CONTAINER_TYPE) == on_mesh | {"monitoring-node-exporter"}
    # Commands follow: those triggered by a container's ID (run again against the new
    # container), Synapse's config, whose federation allow-list holds the subnet, and
    # Prometheus's, whose node target is the gateway address.
    commands = by_type.pop("command:local:Command")
    assert commands == {
        f"{code}-{job}" for code in ("dk", "no", "se")
        for job in ("postgres-databases", "ipfs-peering", "synapse-config")
    } | {"prometheus-config"} | {f"nats-gate-{code}" for code in ("dk", "no", "se")}  # fmt: skip
    assert by_type == {}  # no volume, image or other network
    assert all(step == "replace" for step in changed.values()), changed
