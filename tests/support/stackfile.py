"""Load `Pulumi.<stack>.yaml` the way Pulumi does: YAML 1.2 (so `no` is Norway, not false),
structured values handed to the program JSON-encoded, plain values as strings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]


# What an operator sets before the first `up`, as the stack file's header tells them: the
# committed nordic file holds placeholders the program refuses (documentation addresses
# and domains). Tests deploy with these instead; 198.18.0.0/15 is a benchmark range (RFC
# 2544), not a documentation one, and never routed.
# A host key for `ssh` hosts in tests (an Ed25519 public key; its private half was dropped).
SSH_HOST_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIKfHH5Pvkzast3Byt4OyztOYvqGBeBv4Sp2lBz0xUTTK"
# The operator's own login key (public half of a key generated for these tests).
ADMIN_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPW3oups1TPx0gEcE381Gz1PeWrsfLEKf7sUCUhO/kq2 ops"
OPERATOR_SETTINGS: dict[str, dict[str, Any]] = {
    "nordic": {
        "unityplan-infra:webDomain": "ops.unityplan.org",
        "unityplan-infra:acme": {"email": "ops@unityplan.org"},
        "unityplan-infra:hetzner.adminCidrs": ["198.18.7.7/32"],
        "unityplan-infra:hetzner.sshPublicKey": ADMIN_KEY,
    },
}


def yaml12(text: str) -> Any:
    """Parse YAML the way Pulumi and the services' Go parsers do: YAML 1.2 (`no` stays a
    string; PyYAML's 1.1 loader would read it as false)."""
    return YAML(typ="safe", pure=True).load(text)


def file_values(stack: str) -> dict[str, Any]:
    """The `config:` block of a stack file exactly as committed, as YAML 1.2 data."""
    document = YAML(typ="safe", pure=True).load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    return dict(document["config"])


def stack_values(stack: str) -> dict[str, Any]:
    """The stack file's config with the operator's own settings filled in."""
    values = file_values(stack)
    for key, value in OPERATOR_SETTINGS.get(stack, {}).items():
        namespace_key, _, path = key.partition(".")
        if path:
            values[namespace_key] = {**values[namespace_key], path: value}
        else:
            values[key] = value
    return values


def as_pulumi_config(values: dict[str, Any]) -> dict[str, str]:
    """Encode config values as the Pulumi engine passes them to a program."""
    encoded: dict[str, str] = {}
    for key, value in values.items():
        if isinstance(value, dict | list):
            encoded[key] = json.dumps(value)
        elif isinstance(value, bool):
            encoded[key] = "true" if value else "false"
        else:
            encoded[key] = str(value)
    return encoded


def stack_config(stack: str) -> dict[str, str]:
    return as_pulumi_config(stack_values(stack))
