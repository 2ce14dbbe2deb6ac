"""What a second `pulumi up` would do, judged the way the engine and the providers judge it.

The mocks cannot run a provider, so this module carries what docs/provider-behaviour.md
read in their source:

- **Read-back** (`read_back`): what the provider stores after create or refresh for the
  inputs we set. The Docker provider parses healthcheck durations with Go's
  `time.ParseDuration` and prints them with `Duration.String` ("60s" is stored as "1m0s"),
  fills port defaults and stores ports sorted; Hetzner reports locations in lower case.
- **Diff** (`step`): bridged providers (docker, hcloud) compare new inputs with the stored
  *outputs*; pulumi-command compares them with the old *inputs*. A change to an input the
  schema marks ForceNew (or one listed in `replace_on_changes`) replaces the resource;
  any other change updates it. For a command, an update runs `update` if set, else `create`
  again: either way the command runs.
- `ignore_changes` keeps the old value of the listed inputs; an unchanged resource keeps
  its old outputs (the engine's "same" step), which the mocks model with `prior`.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from tests.support.secret_values import unwrap
from unityplan_infra.topology.health import format_nanoseconds

Step = Literal["same", "update", "replace", "create"]

CONTAINER = "docker:index/container:Container"
NETWORK = "docker:index/network:Network"
VOLUME = "docker:index/volume:Volume"
REMOTE_IMAGE = "docker:index/remoteImage:RemoteImage"
SERVER = "hcloud:index/server:Server"
COMMANDS = ("command:local:Command", "command:remote:Command")

# Container inputs without ForceNew in terraform-provider-docker v4.5.0's schema
# (resource_docker_container.go); every other container input replaces the container.
CONTAINER_IN_PLACE = frozenset({
    "restart", "maxRetryCount", "mustRun", "healthcheck", "wait", "waitTimeout",
    "destroyGraceSeconds", "rm", "start", "attach", "logs", "removeVolumes", "cpuShares",
    "cpuSet", "memory", "memorySwap", "memoryReservation", "tmpfs",
})  # fmt: skip
# Volume: only cluster.availability is updatable; image: keep_locally. Networks: nothing.
IN_PLACE: Mapping[str, frozenset[str]] = {
    CONTAINER: CONTAINER_IN_PLACE,
    NETWORK: frozenset(),
    VOLUME: frozenset(),
    REMOTE_IMAGE: frozenset({"keepLocally"}),
    # hcloud_server (terraform-provider-hcloud v1.66.1): ForceNew are image, location,
    # datacenter, user_data and ssh_keys.
    SERVER: frozenset({
        "name", "serverType", "keepDisk", "placementGroupId", "firewallIds", "publicNets",
        "backups", "labels", "deleteProtection", "rebuildProtection",
        "shutdownBeforeDeletion", "allowDeprecatedImages", "ignoreRemoteFirewallIds",
    }),
}  # fmt: skip

_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_NANOSECONDS = {
    "ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000,
    "s": 1_000_000_000, "m": 60_000_000_000, "h": 3_600_000_000_000,
}  # fmt: skip


def parse_go_duration(text: str) -> int:
    """Go's `time.ParseDuration` (non-negative values), in nanoseconds."""
    if text == "0":
        return 0
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"time: invalid duration {text!r}")
    total = 0
    for number, unit in parts:
        whole, _, fraction = number.partition(".")
        scale = _UNIT_NANOSECONDS[unit]
        total += int(whole or "0") * scale
        if fraction:
            total += int(fraction) * scale // 10 ** len(fraction)
    return total


def _go_duration(text: str) -> str:
    return format_nanoseconds(parse_go_duration(text))


def with_defaults(type_token: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """`inputs` with the schema defaults Terraform fills into the config before it plans
    (a default is never a diff)."""
    config = dict(inputs)
    if type_token == CONTAINER:
        if "healthcheck" in inputs:
            config["healthcheck"] = {"startInterval": "0s", "retries": 0, **inputs["healthcheck"]}
        if "ports" in inputs:
            config["ports"] = [{"ip": "0.0.0.0", "protocol": "tcp", **p} for p in inputs["ports"]]
    return config


def read_back(type_token: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    """The state a provider stores for `inputs` after create or refresh (inputs it does not
    read back keep the value written, as the bridge keeps config values)."""
    state = with_defaults(type_token, inputs)
    if type_token == CONTAINER:
        state["name"] = str(inputs["name"]).lstrip("/")
        if "healthcheck" in state:
            check = dict(state["healthcheck"])
            for key in ("interval", "timeout", "startPeriod", "startInterval"):
                if key in check:
                    check[key] = _go_duration(check[key])
            state["healthcheck"] = check
        if "ports" in state:
            # flattenContainerPorts sorts by container port only.
            state["ports"] = sorted(state["ports"], key=lambda port: port["internal"])
    elif type_token == NETWORK and "ipamConfigs" in inputs:
        state["ipamConfigs"] = [
            {**config, "subnet": str(ipaddress.ip_network(config["subnet"], strict=False))}
            for config in inputs["ipamConfigs"]
        ]
    elif type_token == SERVER:
        for key in ("location", "serverType"):
            if key in inputs:
                state[key] = str(inputs[key]).lower()
    return state


def _same_value(type_token: str, key: str, old: Any, new: Any) -> bool:
    if type_token == CONTAINER and key == "ports" and isinstance(new, list):
        # DiffSuppressFunc: the same ports in another order are no change.
        return sorted(map(_canonical, old or [])) == sorted(map(_canonical, new))
    return _canonical(old) == _canonical(new)


def _canonical(value: Any) -> str:
    return json.dumps(unwrap(value), sort_keys=True)


def changed_keys(
    type_token: str,
    old_inputs: Mapping[str, Any],
    old_outputs: Mapping[str, Any],
    new_inputs: Mapping[str, Any],
    ignore_changes: Sequence[str] = (),
) -> set[str]:
    """Inputs whose change the provider would see."""
    command = type_token.startswith(COMMANDS)
    old = old_inputs if command else old_outputs
    if not command:  # Terraform plans the config with its schema defaults
        new_inputs = with_defaults(type_token, new_inputs)
    keys = set(new_inputs) | (set(old_inputs) if command else set())
    return {
        key
        for key in keys
        if key not in ignore_changes
        and not _same_value(type_token, key, old.get(key), new_inputs.get(key))
    }


def step(
    type_token: str,
    changed: set[str],
    replace_on_changes: Sequence[str] = (),
) -> Step:
    """Same, update or replace, given which inputs changed."""
    if not changed:
        return "same"
    if type_token.startswith(COMMANDS):
        # `triggers` is the only replaceOnChanges input of pulumi-command.
        return "replace" if "triggers" in changed else "update"
    if any(key in replace_on_changes or key.split(".")[0] in replace_on_changes
           for key in changed):  # fmt: skip
        return "replace"
    in_place = IN_PLACE.get(type_token)
    if in_place is None:  # random, tls, providers: their inputs all force a new resource
        return "update" if type_token.startswith("pulumi:providers:") else "replace"
    return "replace" if changed - in_place else "update"
