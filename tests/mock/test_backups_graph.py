"""Backups in the resource graph (issue 10): with `backups.enabled` every pod gets its job,
wired to its own services, volumes and secrets; without, nothing of it exists; turning
backups on or adding a pod replaces no container that was there."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from functools import cache
from typing import Any

import pytest

from tests.support.deployments import BACKUP_SECRETS, with_backups
from tests.support.mocks import CONTAINER_TYPE, Graph, Resource, run_program, unwrap
from tests.support.secret_values import is_secret
from tests.support.stackfile import as_pulumi_config, stack_values
from unityplan_infra.backup.run import BackupSpec
from unityplan_infra.config.models import Images

pytestmark = pytest.mark.timeout(180)

STACKS = ["dev", "nordic"]
CODES = ("dk", "no", "se")
VOLUME_TYPE = "docker:index/volume:Volume"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"


@pytest.fixture(autouse=True)
def fixed_home(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("HOME", "/home/alice")  # the dev config root lives under it
    yield


@cache
def graph(stack: str, backups: bool = True, fourth_pod: bool = False) -> Graph:
    values = with_backups(stack) if backups else copy.deepcopy(stack_values(stack))
    if fourth_pod:
        pod: dict[str, Any] = {"code": "fi", "name": "finland", "slot": 4}
        if stack == "nordic":
            pod["host"] = copy.deepcopy(values["unityplan-infra:pods"][0]["host"])
        values["unityplan-infra:pods"].append(pod)
    return run_program(as_pulumi_config(values), stack)


def backup_containers(g: Graph) -> dict[str, Resource]:
    return {r.inputs["name"]: r for r in g.of_type(CONTAINER_TYPE)
            if r.inputs["name"].startswith("service-backup-")}  # fmt: skip


def written(g: Graph, name: str) -> str:
    return str(unwrap(g.named(name).inputs["stdin"]))


@pytest.mark.parametrize("stack", STACKS)
def test_every_pod_has_a_backup_job_on_its_own_network(stack: str) -> None:
    g = graph(stack)
    jobs = backup_containers(g)
    assert set(jobs) == {f"service-backup-{code}" for code in CODES}
    networks = {n.id: n.inputs["name"] for n in g.of_type("docker:index/network:Network")}
    volumes = {v.id: v.inputs["name"] for v in g.of_type(VOLUME_TYPE)}
    for code in CODES:
        inputs = unwrap(jobs[f"service-backup-{code}"].inputs)
        assert [networks[n["name"]] for n in inputs["networksAdvanced"]] == [f"pod-{code}-net"]
        mounted = {volumes.get(v["volumeName"], v["volumeName"]): v["containerPath"]
                   for v in inputs["volumes"]}  # fmt: skip
        assert mounted == {
            f"pod-{code}-backup-work-data": "/work", "unityplan-node-textfile": "/metrics",
            f"pod-{code}-redis-data": "/mnt/redis", f"pod-{code}-matrix-data": "/mnt/matrix",
        }
        binds = {m["target"]: m for m in inputs["mounts"]}
        assert binds["/config"]["readOnly"] and not binds["/mnt/matrix-config"]["readOnly"]
        assert binds["/config"]["source"].endswith(f"/pods/{code}/backup")
        assert binds["/mnt/matrix-config"]["source"].endswith(f"/pods/{code}/matrix")
        assert inputs["command"][2:] == ["serve", "--spec", "/config/spec.json"]
        assert inputs["stopTimeout"] == 30


@pytest.mark.parametrize("stack", STACKS)
def test_spec_names_the_pods_own_services_and_no_secret(stack: str) -> None:
    g = graph(stack)
    for code in CODES:
        text = written(g, f"{code}-backup-spec")
        spec = BackupSpec.from_json(text)  # the job's own parser accepts it
        assert spec.pod == code
        assert spec.postgres is not None and spec.postgres.host == f"service-postgres-{code}"
        assert spec.redis is not None and spec.redis.host == f"service-redis-{code}"
        assert spec.extra["jetstream"]["url"].startswith(f"nats://service-nats-{code}:")
        assert spec.extra["jetstream"]["first_pod"] == "dk"
        assert spec.restic.path == f"unityplan/{code}"  # one repository per pod
        for secret in BACKUP_SECRETS.values():
            assert secret not in text
        assert '"value"' not in text  # secrets are files, never inline


@pytest.mark.parametrize("stack", STACKS)
def test_secrets_are_generated_or_given_and_written_as_secret_files(stack: str) -> None:
    g = graph(stack)
    for code in CODES:
        access = g.named(f"{code}-backup-secret-s3-access-key")
        assert unwrap(access.inputs["stdin"]) == BACKUP_SECRETS["unityplan-infra:backupS3AccessKey"]
        for secret in ("restic-password", "s3-secret-key", "postgres-password",
                       "redis-password", "nats-password"):  # fmt: skip
            resource = g.named(f"{code}-backup-secret-{secret}")
            assert is_secret(resource.inputs["stdin"]), secret
            if stack == "nordic":
                script = unwrap(resource.inputs["create"])
                assert 'chmod 0600 "$tmp"' in script and 'chown 0:0 "$tmp"' in script
    assert g.secret_exports["backupRepositoryPasswords"]
    passwords = unwrap(g.exports["backupRepositoryPasswords"])
    assert sorted(passwords) == list(sorted(CODES)) and len(set(passwords.values())) == 3


@pytest.mark.parametrize("stack", STACKS)
def test_the_job_image_is_built_once_per_host(stack: str) -> None:
    g = graph(stack)
    builds = [r for r in g.resources if r.name.endswith("-backup-image-build")]
    hosts = 1 if stack == "dev" else 3
    assert len(builds) == hosts
    dockerfile = str(unwrap(builds[0].inputs["stdin"]))
    assert dockerfile.splitlines()[2] == f"FROM {Images().postgres}"  # the pods' own
    images = [r for r in g.of_type(REMOTE_IMAGE)
              if str(r.inputs["name"]).startswith("unityplan/backup-tools:")]  # fmt: skip
    assert len(images) == hosts
    for image in images:
        assert any(b.urn in g.ancestors(image) for b in builds)
    for job in backup_containers(g).values():
        assert job.inputs["image"] in {i.outputs["imageId"] for i in images}


@pytest.mark.parametrize("stack", STACKS)
def test_backups_off_deploy_nothing_of_them(stack: str) -> None:
    g = graph(stack, backups=False)
    assert backup_containers(g) == {}
    assert not [r for r in g.resources if "backup" in r.name and r.type != VOLUME_TYPE]
    assert "backupRepositoryPasswords" not in g.exports
    rules = written(g, "prometheus-alert-rules")
    assert "Backup" not in rules


@pytest.mark.parametrize("stack", STACKS)
def test_turning_backups_on_replaces_no_container(stack: str) -> None:
    before, after = graph(stack, backups=False), graph(stack)
    steps = after.steps(before)
    touched = {after.by_urn()[urn][0].inputs.get("name") for urn, step in steps.items()
               if step in ("replace", "update") and after.by_urn()[urn][0].type == CONTAINER_TYPE}  # fmt: skip
    assert touched == set(), touched
    # Prometheus learns the backup alerts by reload (its rule file is rewritten).
    assert steps[after.named("prometheus-alert-rules").urn] in ("update", "replace")


@pytest.mark.parametrize("stack", STACKS)
def test_a_new_pod_leaves_the_other_backup_jobs_alone(stack: str) -> None:
    before, after = graph(stack), graph(stack, fourth_pod=True)
    steps = after.steps(before)
    changed = {after.by_urn()[urn][0].name for urn, step in steps.items()
               if step != "same" and "backup" in after.by_urn()[urn][0].name}  # fmt: skip
    assert all("fi" in name for name in changed), sorted(changed)
    assert "service-backup-fi" in backup_containers(after)


@pytest.mark.parametrize("stack", STACKS)
def test_a_second_up_of_the_same_program_changes_no_backup_resource(stack: str) -> None:
    """Deterministic inputs: the job archive, spec and Dockerfile hash the same each run.
    (How the provider reads back mounts, capabilities and users: test_quiet_updates.py.)"""
    g = graph(stack)
    second = run_program(as_pulumi_config(with_backups(stack)), stack, prior=g)
    changed = {urn for urn, step in second.steps(g).items() if step != "same"}
    assert changed == set()
    assert any("backup" in r.name for r in g.resources if r.custom)
