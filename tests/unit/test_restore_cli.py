"""`restore` from the operator's machine: which services stop, in which order, and that they
start again whatever the restore did; exit codes; the multi-host path over pinned SSH.

The data side of a restore (every kind, with real PostgreSQL, Redis, nats-server, restic
and an S3 server) is tested in tests/realsw/test_backup_*.py; here `docker` is a script
that records its calls, so the orchestration is checked without an engine.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.mocks import run_program
from tests.support.stackfile import stack_config
from unityplan_infra.restore.plan import (
    DEFAULT_KINDS,
    RestoreUsageError,
    parse_kinds,
    plan_restore,
)
from unityplan_infra.restore.remote import DockerOnHost
from unityplan_infra.verify.outputs import StackOutputs

ROOT = Path(__file__).resolve().parents[2]
FAKE_DOCKER = """#!/bin/sh
echo "$*" >> "$DOCKER_LOG"
case "$*" in
  *" idle "*) exit "${FAKE_IDLE_EXIT:-0}" ;;
esac
case "$1" in
  stop) exit "${FAKE_STOP_EXIT:-0}" ;;
  exec) exit "${FAKE_RESTORE_EXIT:-0}" ;;
esac
exit 0
"""


@pytest.fixture(scope="module")
def dev_outputs() -> dict[str, Any]:
    return copy.deepcopy(run_program(stack_config("dev")).exports)


def run_restore(tmp_path: Path, outputs: dict[str, Any], *args: str, **env: str) -> tuple[
    subprocess.CompletedProcess[str], list[str]
]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    docker.write_text(FAKE_DOCKER)
    docker.chmod(0o755)
    log = tmp_path / "docker.log"
    log.write_text("")
    (tmp_path / "outputs.json").write_text(json.dumps(outputs))
    result = subprocess.run(
        [sys.executable, "-m", "unityplan_infra", "restore", "--outputs",
         str(tmp_path / "outputs.json"), *args, "--timeout", "0.5"],
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "DOCKER_LOG": str(log),
             **env},
    )  # fmt: skip
    return result, log.read_text().splitlines()


# --- the plan -----------------------------------------------------------------------------


def test_default_restores_all_but_the_signing_key_with_redis_and_synapse_down() -> None:
    plan = plan_restore("dk", parse_kinds(None))
    assert plan.kinds == DEFAULT_KINDS and "matrix-key" not in plan.kinds
    # Synapse (a client of PostgreSQL) first; started again in reverse order.
    assert plan.stop == ("service-matrix-dk", "service-redis-dk")
    assert plan.restore[:2] == ("exec", "service-backup-dk")
    assert "--force" not in plan.restore
    assert plan.stop_args("service-redis-dk") == ["stop", "--time", "60", "service-redis-dk"]


@pytest.mark.parametrize(("what", "stopped"), [
    ("jetstream", ()),
    ("ipfs,jetstream", ()),
    ("postgres", ("service-matrix-no",)),  # Synapse holds connections to its database
    ("redis", ("service-redis-no",)),
    ("matrix-key", ("service-matrix-no",)),
])  # fmt: skip
def test_only_what_the_kinds_need_is_stopped(what: str, stopped: tuple[str, ...]) -> None:
    plan = plan_restore("no", parse_kinds(what), snapshot="4f2a", force=True)
    assert plan.stop == stopped
    assert plan.restore[-5:] == ("--snapshot", "4f2a", "--what", what, "--force")


@pytest.mark.parametrize("what", ["kafka", "postgres,kafka", ","])
def test_unknown_kinds_are_refused(what: str) -> None:
    with pytest.raises(RestoreUsageError, match="known: postgres"):
        parse_kinds(what)


# --- the command ----------------------------------------------------------------------------


def test_stop_restore_start_then_verify(tmp_path: Path, dev_outputs: dict[str, Any]) -> None:
    result, calls = run_restore(tmp_path, dev_outputs, "--pod", "dk")
    assert [c.split()[0] for c in calls] == ["stop", "stop", "exec", "exec", "start", "start"]
    assert calls[0] == "stop --time 30 service-matrix-dk"
    assert calls[1] == "stop --time 60 service-redis-dk"
    assert calls[2].startswith("exec service-backup-dk python3 /config/backup-job.pyz restore")
    # Before anything starts again: no job of the pod holds its lock any more.
    assert calls[3] == ("exec service-backup-dk python3 /config/backup-job.pyz idle"
                        " --spec /config/spec.json")
    assert calls[4:] == ["start service-redis-dk", "start service-matrix-dk"]
    # The restore "worked"; verify then runs against services that are not there.
    assert "verifying pod dk" in result.stderr
    assert result.returncode == 1


@pytest.mark.parametrize(("job_exit", "expected"), [(3, 3), (1, 1)])
def test_refused_or_failed_restore_starts_the_services_again(
    tmp_path: Path, dev_outputs: dict[str, Any], job_exit: int, expected: int
) -> None:
    result, calls = run_restore(tmp_path, dev_outputs, "--pod", "se", "--what", "redis",
                                FAKE_RESTORE_EXIT=str(job_exit))  # fmt: skip
    assert calls[-1] == "start service-redis-se"
    assert result.returncode == expected
    assert "verifying" not in result.stderr
    if expected == 3:
        assert "nothing was changed" in result.stderr


def test_an_unfinished_restore_keeps_the_services_stopped(
    tmp_path: Path, dev_outputs: dict[str, Any]
) -> None:
    """The client lost the restore (Ctrl-C, SSH dropped) but it still runs in the container:
    starting Redis now would race its file swap. The services stay down, with directions."""
    result, calls = run_restore(tmp_path, dev_outputs, "--pod", "dk", "--idle-limit", "0",
                                FAKE_RESTORE_EXIT="255", FAKE_IDLE_EXIT="1")  # fmt: skip
    assert not [c for c in calls if c.startswith("start")]
    assert "stay stopped" in result.stderr and "docker start" in result.stderr
    assert result.returncode == 1


def test_a_service_that_does_not_stop_means_no_restore(
    tmp_path: Path, dev_outputs: dict[str, Any]
) -> None:
    result, calls = run_restore(tmp_path, dev_outputs, "--pod", "dk", FAKE_STOP_EXIT="1")
    assert [c.split()[0] for c in calls] == ["stop"]
    assert result.returncode == 1 and "nothing was restored" in result.stderr


def test_unknown_pod_is_bad_usage(tmp_path: Path, dev_outputs: dict[str, Any]) -> None:
    result, calls = run_restore(tmp_path, dev_outputs, "--pod", "fi")
    assert result.returncode == 2 and calls == [] and "no pod 'fi'" in result.stderr


def test_multi_host_runs_docker_on_the_pods_server_over_pinned_ssh() -> None:
    outputs = StackOutputs.model_validate(run_program(stack_config("nordic")).exports)
    docker = DockerOnHost.of(outputs, "no")
    argv = docker.argv(plan_restore("no", ("redis",)).restore)
    host = outputs.hosts["no"]
    assert argv[0] == "ssh" and f"{host.ssh_user}@{host.public_address}" in argv
    assert "StrictHostKeyChecking=yes" in argv
    assert argv[-1].startswith("docker exec service-backup-no python3 /config/backup-job.pyz")
