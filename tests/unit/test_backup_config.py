"""Backup settings (issue 10): bad values name the key, the value and the fix, and
register nothing; the secrets are required only when backups are on."""

from __future__ import annotations

import copy
import json
from typing import Any

import pulumi
import pytest

from tests.support.mocks import Graph, run_program
from tests.support.stackfile import stack_values
from unityplan_infra.config.errors import ConfigError
from unityplan_infra.deployment import load_deployment

NS = "unityplan-infra"
S3 = {"endpoint": "https://fsn1.your-objectstorage.com", "bucket": "unityplan-backups",
      "region": "fsn1"}  # fmt: skip
CREDENTIALS = {f"{NS}:backupS3AccessKey": "AKIA-TEST", f"{NS}:backupS3SecretKey": "s3cret"}


def with_backups(backups: dict[str, Any], credentials: bool = True) -> dict[str, str]:
    values = copy.deepcopy(stack_values("dev"))
    values[f"{NS}:backups"] = backups
    if credentials:
        values.update(CREDENTIALS)
    return {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}


def on(**changes: Any) -> dict[str, Any]:
    return {"enabled": True, "s3": S3, **changes}


# (case id, backups, key named, value shown)
BAD = [
    ("no target", {"enabled": True}, "backups.s3", "None"),
    ("missing bucket", on(s3={"endpoint": S3["endpoint"]}), "backups.s3.bucket", "None"),
    ("bucket with capitals", on(s3={**S3, "bucket": "UnityPlan"}), "backups.s3.bucket",
     "'UnityPlan'"),
    ("endpoint without scheme", on(s3={**S3, "endpoint": "fsn1.your-objectstorage.com"}),
     "backups.s3.endpoint", "'fsn1.your-objectstorage.com'"),
    ("endpoint in clear", on(s3={**S3, "endpoint": "http://fsn1.your-objectstorage.com"}),
     "backups.s3.endpoint", "'http://fsn1.your-objectstorage.com'"),
    ("endpoint with a path", on(s3={**S3, "endpoint": "https://s3.eu/unityplan"}),
     "backups.s3.endpoint", "'https://s3.eu/unityplan'"),
    ("schedule does not parse", on(schedule="at 3 every night"), "backups.schedule",
     "'at 3 every night'"),
    ("schedule out of range", on(schedule="61 3 * * *"), "backups.schedule", "'61 3 * * *'"),
    ("six-field schedule", on(schedule="0 17 3 * * *"), "backups.schedule", "'0 17 3 * * *'"),
    ("drill schedule", on(drill={"enabled": True, "schedule": "* * *"}),
     "backups.drill.schedule", "'* * *'"),
    ("retention all zero", on(retention={"keepDaily": 0, "keepWeekly": 0, "keepMonthly": 0}),
     "backups.retention", "'all 0'"),
    ("negative retention", on(retention={"keepDaily": -1}), "backups.retention.keepDaily", "-1"),
    ("unknown key", on(keepForever=True), "backups.keepForever", "True"),
]  # fmt: skip


@pytest.mark.parametrize(("backups", "key", "shown"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_backup_settings_name_key_value_and_fix(
    backups: dict[str, Any], key: str, shown: str
) -> None:
    with pytest.raises(ConfigError) as raised:
        load_deployment(with_backups(backups))
    message = str(raised.value)
    lines = [line for line in message.splitlines() if f"{NS}:{key} = {shown}:" in line]
    assert lines, f"{key} = {shown} not named in:\n{message}"
    assert all("Fix:" in line for line in lines)


@pytest.mark.parametrize("missing", ["backupS3AccessKey", "backupS3SecretKey"])
def test_enabled_backups_need_both_s3_secrets(missing: str) -> None:
    config = with_backups(on())
    del config[f"{NS}:{missing}"]
    with pytest.raises(ConfigError, match=f"{missing}.*--secret {missing}"):
        load_deployment(config)


def test_disabled_backups_need_nothing() -> None:
    deployment = load_deployment(with_backups({"enabled": False}, credentials=False))
    assert not deployment.config.backups.enabled
    # The default: off, nothing required; a valid target is still checked when given.
    assert not load_deployment(with_backups({}, credentials=False)).config.backups.enabled


def test_valid_settings_load_with_defaults() -> None:
    backups = load_deployment(with_backups(on())).config.backups
    assert backups.s3 is not None and backups.s3.bucket == "unityplan-backups"
    assert backups.schedule == "17 3 * * *"
    assert (backups.retention.keep_daily, backups.retention.keep_weekly,
            backups.retention.keep_monthly) == (7, 4, 6)  # fmt: skip
    assert backups.drill.enabled is False


def test_credentials_are_not_part_of_the_config_model() -> None:
    config = load_deployment(with_backups(on())).config
    assert "s3cret" not in config.model_dump_json()


def test_bad_backup_settings_register_nothing() -> None:
    graph = Graph()
    with pytest.raises(pulumi.RunError, match="Invalid stack config"):
        run_program(with_backups(on(schedule="61 3 * * *")), graph=graph)
    assert graph.resources == []
