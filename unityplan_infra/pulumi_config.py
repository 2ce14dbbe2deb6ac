"""Read the stack's whole config from the Pulumi runtime.

`pulumi.Config` reads one key at a time; rejecting unknown keys needs all of them. The
language host provides them in the runtime's config map (and, in older hosts, in the
PULUMI_CONFIG environment variable); both are merged here.
"""

from __future__ import annotations

from typing import Any

from pulumi.runtime import config as runtime_config


def all_config() -> dict[str, Any]:
    merged: dict[str, Any] = dict(runtime_config.get_config_env())
    merged.update(runtime_config.CONFIG.get())
    return merged
