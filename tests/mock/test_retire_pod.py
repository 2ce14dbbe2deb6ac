"""Retiring a pod: `leaving: true` (one `up`), then `retired: true` (the next).

The first run deploys four pods (dk, no, se, fi). The second has fi leaving: nothing that
runs changes; only the stream job runs again, handing fi's JetStream share over while fi is
still a routed, reachable peer (its TERRITORY_FI exists only on fi). The third, with the
second as its state, has fi retired: fi's resources are no longer registered, so the engine
deletes them at the end of the update, except what is kept on purpose: volumes are
`retainOnDelete` (Docker keeps them), and its Hetzner server stays registered (protected).
Every other pod forgets fi by reload.
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


def values(stack: str, retired: bool, backups: bool = False, leaving: bool = False,
           **fi: Any) -> dict[str, Any]:  # fmt: skip
    found = copy.deepcopy(stack_values(stack))
    if backups:
        found[f"{NS}:backups"] = BACKUPS
        found.update(BACKUP_SECRETS)
    pod: dict[str, Any] = {"code": "fi", "name": "finland", "slot": 4, "retired": retired,
                           "leaving": leaving}  # fmt: skip
    if stack == "nordic":
        pod["host"] = copy.deepcopy(found[f"{NS}:pods"][0]["host"])
        pod["host"].update(fi.pop("host", {}))
    pod.update(fi)
    found[f"{NS}:pods"].append(pod)
    return found


@cache
def three_runs(stack: str, backups: bool = False) -> tuple[Graph, Graph, Graph]:
    """Four pods; fi leaving; fi retired (each run with the one before as its state)."""
    first = run_program(as_pulumi_config(values(stack, False, backups)), stack)
    leaving = run_program(as_pulumi_config(values(stack, False, backups, leaving=True)), stack,
                          prior=first)  # fmt: skip
    retired = run_program(as_pulumi_config(values(stack, True, backups)), stack, prior=leaving)
    return first, leaving, retired


def runs(stack: str, backups: bool = False) -> tuple[Graph, Graph]:
    """The retiring `up`: the state after `leaving`, and the run with fi retired."""
    _, leaving, retired = three_runs(stack, backups)
    return leaving, retired


@pytest.mark.parametrize("stack", STACKS)
def test_leaving_changes_nothing_that_runs_and_hands_over(stack: str) -> None:
    first, leaving, _ = three_runs(stack)
    changed = {leaving.by_urn()[urn][0].name for urn, step in leaving.steps(first).items()
               if step != "same"}  # fmt: skip
    assert changed == {"nats-streams-apply"}
    spec = json.loads(unwrap(leaving.named("nats-streams-apply").inputs["stdin"]))
    assert spec["retired_servers"] == ["service-nats-fi"]
    assert spec["system_user"] == "unityplan-system" and spec["system_password"]
    streams = {s["name"]: s for s in spec["streams"]}
    assert streams["TERRITORY_FI"]["placement"] == {"tags": ["territory:dk"]}
    # fi is still everybody's peer while the job runs: its stream's only copy is there.
    assert "service-nats-fi" in leaving.containers()
    fi_route = "@service-nats-fi:6225" if stack == "dev" else "@10.0.4.1:6225"
    assert fi_route in str(unwrap(leaving.named("dk-nats-config").inputs["stdin"]))


def changed(stack: str) -> list[Resource]:
    first, second = runs(stack)
    return second.changed_since(first)


def text_of(resource: Resource) -> str:
    return json.dumps(unwrap(resource.inputs), sort_keys=True, default=str)


@pytest.mark.parametrize("stack", STACKS)
def test_no_container_of_a_remaining_pod_is_replaced(stack: str) -> None:
    replaced = [r.inputs["name"] for r in changed(stack) if r.type == CONTAINER_TYPE]
    assert not [name for name in replaced if name.endswith(REMAINING)], replaced
    assert set(replaced) <= {"dev-redis-commander"}  # a dev tool listing every pod's Redis


@pytest.mark.parametrize("stack", STACKS)
def test_no_service_of_a_remaining_pod_restarts(stack: str) -> None:
    rerun = [r for r in changed(stack) if r.type in COMMANDS and r.of_pods(REMAINING)]
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
def test_the_retiring_up_does_not_run_the_stream_job_again(stack: str) -> None:
    """The hand-over is done (leaving); the job's spec is unchanged, so it is not rerun
    while fi is being cut off (it would find nothing to do: tests/realsw/test_nats_retire)."""
    leaving, retired = runs(stack)
    job = retired.named("nats-streams-apply")
    assert retired.steps(leaving)[job.urn] == "same"
    spec = json.loads(unwrap(job.inputs["stdin"]))
    assert spec["retired_servers"] == ["service-nats-fi"]
    assert {s["name"]: s for s in spec["streams"]}["TERRITORY_FI"]["placement"] == {
        "tags": ["territory:dk"]
    }
    before = json.loads(unwrap(three_runs(stack)[0].named("nats-streams-apply").inputs["stdin"]))
    assert "retired_servers" not in before and "system_password" not in before


def test_deleting_a_retired_server_takes_two_deliberate_ups() -> None:
    """The engine refuses to delete a protected resource: `protect: false` first lifts the
    protections (the server stays registered), removing `host` then deletes it."""
    _, _, retired = three_runs("nordic")
    unprotected = run_program(
        as_pulumi_config(values("nordic", True, host={"protect": False})), "nordic",
        prior=retired,
    )  # fmt: skip
    (server,) = [r for r in unprotected.of_type(SERVER_TYPE) if r.name == "server-fi"]
    assert not server.protect and unwrap(server.inputs)["deleteProtection"] is False
    assert unprotected.steps(retired)[server.urn] == "update"
    gone = values("nordic", True)
    del gone[f"{NS}:pods"][-1]["host"]
    without = run_program(as_pulumi_config(gone), "nordic", prior=unprotected)
    assert not [r for r in without.of_type(SERVER_TYPE) if r.name == "server-fi"]
    assert len(without.of_type(SERVER_TYPE)) == 3


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


def with_state(stack: str, code: str, state: str | None) -> dict[str, Any]:
    """Four pods (fi added), pod `code` leaving or retired (None: active); monitoring on se."""
    found = values(stack, False)
    found[f"{NS}:monitoring"] = {"host": "se"}
    for pod in found[f"{NS}:pods"]:
        if pod["code"] == code and state is not None:
            pod[state] = True
    return found


@cache
def retiring(stack: str, code: str) -> tuple[Graph, Graph, Graph]:
    first = run_program(as_pulumi_config(with_state(stack, code, None)), stack)
    leaving = run_program(as_pulumi_config(with_state(stack, code, "leaving")), stack,
                          prior=first)  # fmt: skip
    retired = run_program(as_pulumi_config(with_state(stack, code, "retired")), stack,
                          prior=leaving)  # fmt: skip
    return first, leaving, retired


@pytest.mark.parametrize("code", ["dk", "no"])
@pytest.mark.parametrize("stack", STACKS)
def test_retiring_the_first_or_a_middle_pod(stack: str, code: str) -> None:
    """Leaving changes only the stream job (the pod's gate goes: its server leaves
    JetStream in that very `up`); retiring a middle pod does not run the job again (its
    stream list keeps config order); retiring the first, in nordic, moves the job to the
    next pod's host, where it runs once more and finds nothing to do
    (tests/realsw/test_nats_retire.py runs it with the retired server stopped)."""
    first, leaving, retired = retiring(stack, code)
    changed = {leaving.by_urn()[urn][0].name for urn, step in leaving.steps(first).items()
               if step != "same"}  # fmt: skip
    assert changed == {"nats-streams-apply"}
    assert f"nats-gate-{code}" not in {r.name for r in leaving.resources}
    spec = json.loads(unwrap(leaving.named("nats-streams-apply").inputs["stdin"]))
    keeper = "no" if code == "dk" else "dk"
    assert spec["url"].startswith(f"nats://{'service-nats-' + keeper if stack == 'dev' else ''}")
    streams = {s["name"]: s for s in spec["streams"]}
    assert streams[f"TERRITORY_{code.upper()}"]["placement"] == {"tags": [f"territory:{keeper}"]}
    job_step = retired.steps(leaving)[retired.named("nats-streams-apply").urn]
    moves = stack == "nordic" and code == "dk"  # a host of its own per pod
    assert (job_step != "same") is moves, job_step
    # The rollout chain skips the leaving pod: the next pod that stays goes first.
    nats = {r.inputs["name"]: r for r in leaving.of_type(CONTAINER_TYPE)}
    gates = {r.name: r.urn for r in leaving.resources if r.name.startswith("nats-gate-")}
    waits = set(nats["service-nats-se"].dependencies) & set(gates.values())
    assert waits == {gates["nats-gate-no" if code == "dk" else "nats-gate-dk"]}
