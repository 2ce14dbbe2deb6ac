"""Deployment plans of the repository's stack files, loaded as the program loads them."""

from __future__ import annotations

import copy
from functools import cache
from typing import Any

from tests.support.stackfile import SSH_HOST_KEY, as_pulumi_config, stack_values
from unityplan_infra.deployment import load_deployment
from unityplan_infra.topology.plan import Deployment

PODS = {"dk": "denmark", "no": "norway", "se": "sweden"}


def deployment_of(values: dict[str, Any]) -> Deployment:
    return load_deployment(as_pulumi_config(values))


@cache
def dev_deployment() -> Deployment:
    """The plan of Pulumi.dev.yaml (YAML 1.2: the code "no" stays a string)."""
    return deployment_of(stack_values("dev"))


@cache
def nordic_deployment() -> Deployment:
    """The plan of Pulumi.nordic.yaml: three Hetzner hosts."""
    return deployment_of(stack_values("nordic"))


def with_pod(stack: str, pod: dict[str, Any]) -> Deployment:
    """A stack file's plan with one more pod."""
    values = copy.deepcopy(stack_values(stack))
    values["unityplan-infra:pods"].append(pod)
    return deployment_of(values)


@cache
def multi_host_deployment() -> Deployment:
    """The dev pods, one per SSH host: three hosts instead of one."""
    pods = [
        {"code": code, "name": name, "slot": slot,
         "host": {"kind": "ssh", "address": f"192.0.2.{slot}", "hostKey": SSH_HOST_KEY}}
        for slot, (code, name) in enumerate(PODS.items(), start=1)
    ]  # fmt: skip
    return deployment_of({
        "unityplan-infra:layout": "multi-host", "unityplan-infra:pods": pods,
        "unityplan-infra:webDomain": "ops.unityplan.org",
        "unityplan-infra:acme": {"email": "ops@unityplan.org"},
    })  # fmt: skip


BACKUPS = {"enabled": True, "s3": {"endpoint": "https://fsn1.your-objectstorage.com",
                                   "bucket": "unityplan-backups", "region": "fsn1"}}
BACKUP_SECRETS = {"unityplan-infra:backupS3AccessKey": "test-access-key",
                  "unityplan-infra:backupS3SecretKey": "test-secret-key"}


def with_backups(stack: str) -> dict[str, Any]:
    """A stack file's values with backups on (placeholder S3 target and keys)."""
    values = copy.deepcopy(stack_values(stack))
    values["unityplan-infra:backups"] = BACKUPS
    values.update(BACKUP_SECRETS)
    return values


@cache
def backups_deployment(stack: str = "dev") -> Deployment:
    return deployment_of(with_backups(stack))
