"""Turn the raw `unityplan-infra:*` config values into a validated `StackConfig`.

Pulumi hands a program its config as strings; structured values (lists, objects) arrive
JSON-encoded. The loader decodes them, validates everything at once, and converts pydantic's
errors into `ConfigError`, whose lines name the key, the value and the fix.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from unityplan_infra.config.errors import NAMESPACE, ConfigError, ConfigIssue, Problem
from unityplan_infra.config.models import StackConfig

_HOST_KINDS = {"hcloud", "ssh"}
# Secret settings read by the scripts, not by the program: scripts/setup.sh loads
# sshPrivateKey into an ssh-agent, so no credential is ever an input of a resource.
# alertSmtpPassword and the backups' S3 keys are read by the components as Pulumi secrets.
BACKUP_SECRET_KEYS = ("backupS3AccessKey", "backupS3SecretKey")
SECRET_KEYS = {"sshPrivateKey", "alertSmtpPassword", *BACKUP_SECRET_KEYS}


def namespace_values(all_config: Mapping[str, Any]) -> dict[str, Any]:
    """Select and decode this program's keys (`unityplan-infra:<key>`) from all config."""
    values: dict[str, Any] = {}
    prefix = f"{NAMESPACE}:"
    for full_key, raw in all_config.items():
        if not full_key.startswith(prefix):
            continue  # provider settings such as hcloud:token are not ours
        key = full_key[len(prefix) :]
        if key not in SECRET_KEYS:
            values[key] = _decode(raw)
    return values


def _decode(raw: Any) -> Any:
    if not isinstance(raw, str):
        return raw
    try:
        decoded = json.loads(raw)
    except json.JSONDecodeError:
        return raw  # a plain string such as `single-host`
    # Numbers and booleans stay strings when the model wants a string; objects decode.
    return decoded if isinstance(decoded, dict | list | bool | int) else raw


def load_stack_config(values: Mapping[str, Any]) -> StackConfig:
    """Validate decoded config values; raise `ConfigError` listing every problem."""
    try:
        return StackConfig.model_validate(dict(values))
    except ValidationError as error:
        raise ConfigError([_problem(item) for item in error.errors()]) from None


def _problem(item: Any) -> Problem:
    issue = (item.get("ctx") or {}).get("error")
    key = _key(item["loc"])
    if isinstance(issue, ConfigIssue):
        if issue.key is not None:
            return Problem(issue.key, issue.value, issue.problem, issue.fix)
        return Problem(key, item["input"], issue.problem, issue.fix)
    kind = item["type"]
    if kind == "extra_forbidden":
        known = ", ".join(_known_keys(item["loc"][:-1]))
        return Problem(
            key, item["input"], "unknown key", f"remove it or fix its spelling; known: {known}"
        )
    if kind == "missing":
        return Problem(key, None, "required key is missing", "set it (see README, Stack config)")
    return Problem(key, item["input"], item["msg"], "give a value of the expected kind")


def _key(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for index, part in enumerate(loc):
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
        elif index > 0 and loc[index - 1] == "host" and part in _HOST_KINDS:
            continue  # pydantic's tag of the discriminated union, not a key
        else:
            parts.append(part)
    return ".".join(parts) or "(stack)"


def _known_keys(loc: tuple[int | str, ...]) -> list[str]:
    """Aliases of the model found at `loc` (best effort, for the error message)."""
    model: type[BaseModel] = StackConfig
    for part in loc:
        if isinstance(part, int) or part in _HOST_KINDS:
            continue
        field = next((f for name, f in model.model_fields.items() if part in (name, f.alias)), None)
        if field is None:
            return []
        inner = _model_of(field.annotation)
        if inner is None:
            return []
        model = inner
    return sorted(f.alias or name for name, f in model.model_fields.items())


def _model_of(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_of(arg)
        if found is not None:
            return found
    return None
