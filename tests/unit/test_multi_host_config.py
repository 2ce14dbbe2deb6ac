"""Bad multi-host configs: a clear error naming key, value and fix, and nothing registered.

Each case breaks one setting of `Pulumi.nordic.yaml`. The loader must name the key as the
user writes it (`pods[1].slot`, `hetzner.adminCidrs`), the bad value, and a fix; the whole
program, run under mocks, must fail with that message before registering any resource.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pulumi
import pytest

from tests.support.mocks import Graph, run_program
from tests.support.stackfile import SSH_HOST_KEY, as_pulumi_config, stack_values
from unityplan_infra.config.errors import ConfigError
from unityplan_infra.deployment import load_deployment

pytestmark = pytest.mark.timeout(60)

STACK = "nordic"
NS = "unityplan-infra"


@dataclass(frozen=True)
class BadConfig:
    change: Callable[[dict[str, Any]], None]
    key: str
    value: object
    mentions: str  # what the message must say about the value


def _pod(index: int, **fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(values: dict[str, Any]) -> None:
        values[f"{NS}:pods"][index].update(fields)

    return change


def _host(index: int, **fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(values: dict[str, Any]) -> None:
        values[f"{NS}:pods"][index]["host"].update(fields)

    return change


def _setting(section: str, **fields: Any) -> Callable[[dict[str, Any]], None]:
    def change(values: dict[str, Any]) -> None:
        values.setdefault(f"{NS}:{section}", {}).update(fields)

    return change


CASES = {
    "two pods on one slot": BadConfig(_pod(1, slot=1), "pods[1].slot", 1, "= 1"),
    "unknown location": BadConfig(
        _host(0, location="cph1"), "pods[0].host.location", "cph1", "'cph1'"
    ),
    "retired server type": BadConfig(
        _host(0, serverType="cx11"), "pods[0].host.serverType", "cx11", "'cx11'"
    ),
    "ssh host without address": BadConfig(
        _pod(2, host={"kind": "ssh", "user": "root", "hostKey": SSH_HOST_KEY}), "pods[2].host.address", None, "missing"
    ),
    "monitoring host not a pod": BadConfig(
        _setting("monitoring", host="fi"), "monitoring.host", "fi", "'fi'"
    ),
    "admin CIDR with host bits": BadConfig(
        _setting("hetzner", adminCidrs=["10.0.0.1/8"]),
        "hetzner.adminCidrs",
        ["10.0.0.1/8"],
        "'10.0.0.1/8'",
    ),
    "admin CIDR not a network": BadConfig(
        _setting("hetzner", adminCidrs=["198.51.100.7/32", "not-a-cidr"]),
        "hetzner.adminCidrs",
        ["198.51.100.7/32", "not-a-cidr"],
        "'not-a-cidr'",
    ),
    "ssh host as a non-root user": BadConfig(
        _pod(2, host={"kind": "ssh", "address": "192.0.2.30", "user": "deploy",
                      "hostKey": SSH_HOST_KEY}),
        "pods[2].host.user",
        "deploy",
        "'deploy'",
    ),
    "more hcloud hosts than a spread group holds": BadConfig(
        lambda values: values[f"{NS}:pods"].extend(
            {"code": code, "name": f"pod-{code}", "slot": slot, "host": {"kind": "hcloud"}}
            for slot, code in enumerate(["aa", "bb", "cc", "dd", "ee", "ff", "gg", "hh"], 4)
        ),
        "pods",
        11,
        "= 11",
    ),
}


def bad_config(case: BadConfig) -> dict[str, str]:
    values = copy.deepcopy(stack_values(STACK))
    case.change(values)
    return as_pulumi_config(values)


def test_the_unbroken_stack_loads_and_deploys() -> None:
    # Control: without the breakage, the same config is valid and registers resources.
    config = as_pulumi_config(stack_values(STACK))
    assert [host.name for host in load_deployment(config).hosts] == ["dk", "no", "se"]
    assert len(run_program(config, STACK).resources) > 100


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_loader_names_key_value_and_fix(case: BadConfig) -> None:
    with pytest.raises(ConfigError) as caught:
        load_deployment(bad_config(case))
    (problem,) = caught.value.problems
    assert problem.key == case.key
    assert problem.value == case.value
    assert problem.fix.strip()
    message = str(caught.value)
    assert f"{NS}:{case.key} = {case.value!r}: " in message
    assert case.mentions in message
    assert f"Fix: {problem.fix}" in message
    assert "nothing was deployed" in message


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_program_fails_before_registering_anything(case: BadConfig) -> None:
    config = bad_config(case)
    with pytest.raises(ConfigError) as expected:
        load_deployment(config)
    graph = Graph()
    # __main__.py turns the ConfigError into a RunError: Pulumi prints it without a traceback.
    with pytest.raises(pulumi.RunError) as caught:
        run_program(config, STACK, graph=graph)
    assert str(caught.value) == str(expected.value)
    assert graph.resources == []
    assert graph.exports == {}


@pytest.mark.parametrize("keys", [{}, {"sshPublicKey": SSH_HOST_KEY, "sshKeyName": "k"}])
def test_exactly_one_ssh_key_setting(keys: dict[str, str]) -> None:
    values = copy.deepcopy(stack_values(STACK))
    values[f"{NS}:hetzner"] = {"adminCidrs": ["198.18.7.7/32"], **keys}
    with pytest.raises(ConfigError) as raised:
        load_deployment(as_pulumi_config(values))
    (problem,) = raised.value.problems
    assert problem.key == "hetzner" and "sshKeyName" in problem.fix
