"""The stack's config, validated and planned: what `__main__.py` deploys.

Composes the two layers below it: `config/` (keys, values, error messages) and `topology/`
(the plan: hosts, names, ports). Raises `ConfigError` before anything is registered.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from unityplan_infra.config.errors import NAMESPACE, ConfigError, Problem
from unityplan_infra.config.loader import (
    BACKUP_SECRET_KEYS,
    load_stack_config,
    namespace_values,
)
from unityplan_infra.config.models import StackConfig
from unityplan_infra.topology.plan import Deployment, plan_deployment


def load_deployment(all_config: Mapping[str, Any]) -> Deployment:
    """Config of the whole stack -> validated deployment plan (ports checked too)."""
    config = load_stack_config(namespace_values(all_config))
    _check_secrets(config, all_config)
    return plan_deployment(config)


def _check_secrets(config: StackConfig, all_config: Mapping[str, Any]) -> None:
    """Secret settings that other settings require (their values are never shown)."""
    if config.backups.enabled:
        missing = [key for key in BACKUP_SECRET_KEYS if not all_config.get(f"{NAMESPACE}:{key}")]
        if missing:
            raise ConfigError([Problem(
                key, None, "backups are enabled but the S3 credentials are not set",
                f"pulumi config set --secret {key} (the object storage's"
                f" {'access key' if key.endswith('AccessKey') else 'secret key'})",
            ) for key in missing])  # fmt: skip
    email = config.alerting.email if config.alerting else None
    if email is not None and email.username and not all_config.get(f"{NAMESPACE}:alertSmtpPassword"):
        raise ConfigError([Problem(
            "alertSmtpPassword", None, "alerting.email.username is set but its password is not",
            "pulumi config set --secret alertSmtpPassword (or remove the username)",
        )])  # fmt: skip
