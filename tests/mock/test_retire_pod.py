"""Retiring a pod (`retired: true`): what the engine would do to it and to the others.

The first run deploys four pods (dk, no, se, fi); the second, with the first as its state,
has fi retired. fi's resources are no longer registered, so the engine deletes them at the
end of the update (after everything registered has run, the NATS hand-over included),
except what is kept on purpose: volumes are `retainOnDelete` (Docker keeps them), and a
protected Hetzner server stays registered. Every other pod forgets fi by reload.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest

from tests.support.deployments import BACKUP_SECRETS, BACKUPS
from tests.support.mocks import CONTAINER_TYPE, Graph, Resource, run_program, unwrap
from tests.support.stackfile import as_pulumi_config, stack_values

pytestmark = pytest.mark.timeout(240)

NS = "unityplan-infra"
STACKS = ["dev", "nordic"]
REMAINING = ("dk", "no", "se")
COMMANDS = ("command:local:Command", "command:remote:Command")
VOLUME_TYPE = "docker:index/volume:Volume"
SERVER_TYPE = "hcloud:index/server:Server"


@pytest.fixture(autouse=True)
def fixed_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HOME", "/home/alice")
    yield


def values(stack: str, retired: bool, backups: bool = False) -> dict[str, Any]:
    found = copy.deepcopy(stack_values(stack))
    if backups:
        found[f"{NS}:backups"] = BACKUPS
        found.update(BACKUP_SECRETS)
    pod: dict[str, Any] = {"code": "fi", "name": "finland", "slot": 4, "retired": retired}
    if stack == "nordic":
        pod["host"] = copy.deepcopy(found[f"{NS}:pods"][0]["host"])
    found[f"{NS}:pods"].append(pod)
    return found


@cache
def runs(stack: str, backups: bool = False) -> tuple[Graph, Graph]:
    first = run_program(as_pulumi_config(values(stack, False, backups)), stack)
    return first, run_program(as_pulumi_config(values(stack, True, backups)), stack, prior=first)


def changed(stack: str) -> list[Resource]:
    first, second = runs(stack)
    steps = second.steps(first)
    return [second.by_urn()[urn][0] for urn, step in steps.items()
            if step in ("update", "replace")]  # fmt: skip


def of_remaining_pod(resource: Resource) -> bool:
    name = str(resource.inputs.get("name", resource.name))
    return any(f"-{code}" in name or name.startswith(f"{code}-") for code in REMAINING)


def text_of(resource: Resource) -> str:
    return json.dumps(unwrap(resource.inputs), sort_keys=True, default=str)


@pytest.mark.parametrize("stack", STACKS)
def test_no_container_of_a_remaining_pod_is_replaced(stack: str) -> None:
    replaced = [r.inputs["name"] for r in changed(stack) if r.type == CONTAINER_TYPE]
    assert not [name for name in replaced if name.endswith(REMAINING)], replaced
    assert set(replaced) <= {"dev-redis-commander"}  # a dev tool listing every pod's Redis


@pytest.mark.parametrize("stack", STACKS)
def test_no_service_of_a_remaining_pod_restarts(stack: str) -> None:
    rerun = [r for r in changed(stack) if r.type in COMMANDS and of_remaining_pod(r)]
    assert rerun, "retiring a pod reaches the others somehow (peers), or this test is void"
    for resource in rerun:
        script = str(unwrap(resource.inputs["create"]))
        docker = [line for line in script.splitlines() if "docker " in line]
        assert "docker restart" not in script, resource.name
        assert all("--signal HUP" in line or line.startswith("docker exec -i")
                   for line in docker), (resource.name, docker)  # fmt: skip


@pytest.mark.parametrize("stack", STACKS)
def test_the_retired_pod_runs_nothing_and_keeps_its_data(stack: str) -> None:
    first, second = runs(stack)
    before = {r.inputs.get("name") for r in first.of_type(CONTAINER_TYPE)}
    after = {r.inputs.get("name") for r in second.of_type(CONTAINER_TYPE)}
    gone = before - after
    assert {f"service-{kind}-fi" for kind in ("postgres", "redis", "nats", "ipfs", "matrix")} <= gone
    assert all(name.endswith("-fi") for name in gone), gone
    # Its volumes leave the program but not the engine: Docker keeps them (retainOnDelete).
    volumes = [r for r in first.of_type(VOLUME_TYPE) if r.inputs["name"].startswith("pod-fi-")]
    assert {r.inputs["name"] for r in volumes} == {
        f"pod-fi-{kind}-data" for kind in ("postgres", "redis", "nats", "ipfs", "matrix")
    }
    assert all(r.retain_on_delete for r in volumes)
    assert not [r for r in second.of_type(VOLUME_TYPE) if r.inputs["name"].startswith("pod-fi-")]


def test_the_retired_server_stays_protected_and_idle() -> None:
    first, second = runs("nordic")
    (server,) = [r for r in second.of_type(SERVER_TYPE) if r.name == "server-fi"]
    assert server.protect and unwrap(server.inputs)["deleteProtection"] is True
    assert second.steps(first)[server.urn] == "same"
    # Nothing else is deployed onto it: no engine, no command, no WireGuard peer.
    of_fi = {r.name for r in second.resources
             if r.custom and (r.name.startswith(("fi-", "wg-fi")) or r.name.endswith("-fi"))}
    assert of_fi == {"server-fi"}
    assert len([r for r in first.resources if r.name.endswith("-fi") or r.name.startswith("fi-")]) > 20


@pytest.mark.parametrize("stack", STACKS)
def test_no_remaining_config_names_the_retired_pod(stack: str) -> None:
    """NATS routes, Prometheus targets, kubo peering, WireGuard peers and the dashboard
    drop fi; what still names it is its stream (kept, on dk) and its server."""
    _, second = runs(stack)
    fi_names = ["service-nats-fi", "service-ipfs-fi", "service-redis-fi", "territory=\\\"fi",
                "monitoring-nats-exporter-fi"]  # fmt: skip
    if stack == "nordic":
        fi_names.append("10.0.4.")  # fi's WireGuard subnet (address, allowed IPs)
    allowed = {"nats-streams-apply", "server-fi", "server-fi-ssh-host-key", "previous-outputs"}
    mentions = {
        r.name for r in second.resources
        if r.custom and r.name not in allowed and any(n in text_of(r) for n in fi_names)
    }  # fmt: skip
    assert mentions == set()


@pytest.mark.parametrize("stack", STACKS)
def test_the_stream_job_keeps_the_retired_territory_on_the_first_active_pod(stack: str) -> None:
    first, second = runs(stack)
    job = second.named("nats-streams-apply")
    assert second.steps(first)[job.urn] in ("update", "replace")
    spec = json.loads(unwrap(job.inputs["stdin"]))
    streams = {s["name"]: s for s in spec["streams"]}
    assert streams["TERRITORY_FI"]["placement"] == {"tags": ["territory:dk"]}
    assert streams["TERRITORY_FI"]["subjects"] == ["territory.fi.*"]
    # The hand-over: fi's replicas move, then fi leaves the meta group (system user only).
    assert spec["retired_servers"] == ["service-nats-fi"]
    assert spec["system_user"] == "unityplan-system" and spec["system_password"]
    before = json.loads(unwrap(first.named("nats-streams-apply").inputs["stdin"]))
    assert "retired_servers" not in before and "system_password" not in before
    # It runs while fi's server still runs: the engine deletes fi's container only after
    # everything registered is done, and the job does not wait for fi.
    fi_server = next(r for r in runs(stack)[0].of_type(CONTAINER_TYPE)
                     if r.inputs["name"] == "service-nats-fi")  # fmt: skip
    assert fi_server.urn not in second.ancestors(job)


def test_the_retired_pods_backups_stay_readable() -> None:
    """Its job goes, its snapshots stay in its repository, and the password that reads
    them stays in the state and in the outputs (a new password would lose them)."""
    first, second = runs("dev", backups=True)
    assert "service-backup-fi" in first.containers()
    assert "service-backup-fi" not in second.containers()
    (password,) = [r for r in second.resources if r.name == "fi-restic-password"]
    (before,) = [r for r in first.resources if r.name == "fi-restic-password"]
    assert password.urn == before.urn and second.steps(first)[password.urn] == "same"
    exported = second.exports["backupRepositoryPasswords"]
    assert set(exported) == {"dk", "no", "se", "fi"}
    assert exported["fi"] == unwrap(before.outputs["result"])
    assert second.secret_exports["backupRepositoryPasswords"]
