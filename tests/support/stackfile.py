"""Load `Pulumi.<stack>.yaml` the way Pulumi does: YAML 1.2 (so `no` is Norway, not false),
structured values handed to the program JSON-encoded, plain values as strings."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

ROOT = Path(__file__).resolve().parents[2]


def stack_values(stack: str) -> dict[str, Any]:
    """The `config:` block of a stack file, as YAML 1.2 data."""
    document = YAML(typ="safe", pure=True).load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    return dict(document["config"])


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
