"""Invalid stack config: one clear error naming key, value and fix; nothing registered."""

from __future__ import annotations

import copy
import json
from typing import Any

import pulumi
import pytest

from tests.support.mocks import Graph, run_program
from tests.support.stackfile import SSH_HOST_KEY, as_pulumi_config, stack_values
from unityplan_infra.config.errors import ConfigError
from unityplan_infra.config.loader import namespace_values
from unityplan_infra.deployment import load_deployment

NS = "unityplan-infra"


def dev() -> dict[str, Any]:
    return copy.deepcopy(stack_values("dev"))


def with_pods(pods: Any) -> dict[str, Any]:
    values = dev()
    values[f"{NS}:pods"] = pods
    return values


def set_key(key: str, value: Any) -> dict[str, Any]:
    values = dev()
    values[f"{NS}:{key}"] = value
    return values


PODS = [
    {"code": "dk", "name": "denmark", "slot": 1},
    {"code": "no", "name": "norway", "slot": 2},
    {"code": "se", "name": "sweden", "slot": 3},
]

FINLAND_RETIRED = {"code": "fi", "name": "finland", "slot": 4, "retired": True}
ICELAND = {"code": "is", "name": "iceland", "slot": 5}
BOTH_STEPS = {"code": "fi", "name": "finland", "slot": 4, "leaving": True, "retired": True}
ONE_ACTIVE = [{**PODS[0], "retired": True}, {**PODS[1], "retired": True}, PODS[2]]

# (case id, config values, key named in the error, value shown in the error)
BAD = [
    ("unknown key", set_key("colour", "blue"), "colour", "'blue'"),
    ("unknown nested key", set_key("streams", {"globalReplica": 3}), "streams.globalReplica", "3"),
    ("unknown pod key", with_pods([{**PODS[0], "zone": "x"}]), "pods[0].zone", "'x'"),
    ("duplicate code", with_pods([PODS[0], {**PODS[1], "code": "dk"}]), "pods[1].code", "'dk'"),
    ("duplicate slot", with_pods([PODS[0], {**PODS[1], "slot": 1}]), "pods[1].slot", "1"),
    # A retired pod keeps its slot and code for good: a new pod cannot take either.
    ("retired slot reused", with_pods([*PODS, FINLAND_RETIRED, {**ICELAND, "slot": 4}]),
     "pods[4].slot", "4"),
    ("retired code reused", with_pods([*PODS, FINLAND_RETIRED, {**ICELAND, "code": "fi"}]),
     "pods[4].code", "'fi'"),
    ("leaving and retired at once", with_pods([*PODS, BOTH_STEPS]), "pods[3]", str(BOTH_STEPS)),
    ("monitoring's default pod leaving", with_pods([{**PODS[0], "leaving": True}, *PODS[1:],
     ICELAND]), "monitoring.host", "None"),
    ("retired not a bool", with_pods([{**PODS[0], "retired": "soon"}, *PODS[1:]]),
     "pods[0].retired", "'soon'"),
    ("one active pod left", with_pods(ONE_ACTIVE), "pods", str(ONE_ACTIVE)),
    ("monitoring on a retired pod", {**with_pods([{**PODS[0], "retired": True}, *PODS[1:],
     ICELAND]),
     f"{NS}:monitoring": {"host": "dk"}}, "monitoring.host", "'dk'"),
    ("replicas above staying pods", {**with_pods([{**PODS[0], "leaving": True}, *PODS[1:]])},
     "streams.globalReplicas", "3"),
    ("uppercase code", with_pods([{**PODS[0], "code": "DK"}]), "pods[0].code", "'DK'"),
    ("code with digit", with_pods([{**PODS[0], "code": "d1"}]), "pods[0].code", "'d1'"),
    ("Norway as false", with_pods([{**PODS[0], "code": False}]), "pods[0].code", "False"),
    ("slot zero", with_pods([{**PODS[0], "slot": 0}]), "pods[0].slot", "0"),
    ("negative slot", with_pods([{**PODS[0], "slot": -2}]), "pods[0].slot", "-2"),
    ("empty pods", with_pods([]), "pods", "[]"),
    ("pods not a list", with_pods({"code": "dk"}), "pods", "{'code': 'dk'}"),
    ("pods missing", {f"{NS}:layout": "single-host"}, "pods", "None"),
    ("unknown layout", set_key("layout", "cluster"), "layout", "'cluster'"),
    (
        "two services on one port",
        set_key("podPorts", {"ipfsGateway": 8080}),  # dk's gateway on Adminer's port
        "podPorts.ipfsGateway",
        "8080",
    ),
    (
        "guide's gateway ports",
        set_key("podPorts", {"ipfsGateway": 8081}),  # no -> 8082 = Redis Commander
        "podPorts.ipfsGateway",
        "8082",
    ),
    (
        "replicas above pods",
        with_pods(PODS[:2]),  # default GLOBAL_EVENTS replicas: 3
        "streams.globalReplicas",
        "3",
    ),
    ("latest image", set_key("images", {"redis": "redis:latest"}), "images.redis", "'redis:latest'"),
    ("untagged image", set_key("images", {"nats": "nats"}), "images.nats", "'nats'"),
    ("bad publish address", set_key("publishAddress", "localhost"), "publishAddress", "'localhost'"),
    ("IPv6 publish address", set_key("publishAddress", "::1"), "publishAddress", "'::1'"),
    ("remote docker engine", set_key("dockerHost", "ssh://root@192.0.2.1"), "dockerHost",
     "'ssh://root@192.0.2.1'"),
    ("host in single-host",
     with_pods([{**PODS[0], "host": {"kind": "ssh", "address": "192.0.2.1",
                                     "hostKey": SSH_HOST_KEY}}, *PODS[1:]]),
     "pods[0].host", "'ssh'"),
]  # fmt: skip


def _encode(values: dict[str, Any]) -> dict[str, str]:
    return as_pulumi_config(values)


@pytest.mark.parametrize(("values", "key", "shown"), [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_config_names_key_value_and_fix(values: dict[str, Any], key: str, shown: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_deployment(_encode(values))
    message = str(raised.value)
    # A port clash names both settings involved; any other problem leads with its key.
    lines = [
        ln
        for ln in message.splitlines()
        if key in ln and (f"= {shown}:" in ln or f"port {shown}/" in ln)
    ]
    assert lines, f"key {key} with value {shown} not named in:\n{message}"
    assert all("Fix:" in ln for ln in lines), lines
    assert "nothing was deployed" in message


@pytest.mark.parametrize(
    "values",
    [BAD[0][1], BAD[4][1], BAD[14][1], BAD[16][1]],
    ids=["unknown key", "duplicate slot", "port clash", "replicas"],
)
def test_bad_config_registers_nothing(values: dict[str, Any]) -> None:
    graph = Graph()
    with pytest.raises(pulumi.RunError, match="Invalid stack config"):
        run_program(_encode(values), graph=graph)
    assert graph.resources == []


def test_valid_config_registers_resources() -> None:
    """Control for the test above: the same runner does record a valid program."""
    graph = Graph()
    run_program(_encode(dev()), graph=graph)
    assert len(graph.resources) > 100


def test_dev_stack_file_is_valid_and_norway_is_a_string() -> None:
    deployment = load_deployment(_encode(dev()))
    assert [p.code for p in deployment.pods] == ["dk", "no", "se"]
    assert [p.slot for p in deployment.pods] == [1, 2, 3]


def test_provider_keys_are_not_ours() -> None:
    values = namespace_values({"hcloud:token": "x", f"{NS}:layout": "single-host"})
    assert values == {"layout": "single-host"}


def test_structured_values_decode_from_json() -> None:
    values = namespace_values({f"{NS}:pods": json.dumps(PODS), f"{NS}:publishAddress": "0.0.0.0"})
    assert values["pods"][1]["code"] == "no"
    assert values["publishAddress"] == "0.0.0.0"


def test_every_problem_is_reported_at_once() -> None:
    values = with_pods([{**PODS[0], "code": "DK", "slot": 0}])
    with pytest.raises(ConfigError) as raised:
        load_deployment(_encode(values))
    keys = {problem.key for problem in raised.value.problems}
    assert {"pods[0].code", "pods[0].slot"} <= keys


DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(
    "reference",
    ["redis:7.4.1-alpine", f"traefik:v3.2.3@{DIGEST}", f"ghcr.io/org/app:1.0@{DIGEST}",
     "localhost:5000/app:2"],
)  # fmt: skip
def test_images_pinned_by_tag_or_tag_and_digest_are_accepted(reference: str) -> None:
    values = copy.deepcopy(stack_values("dev"))
    values["unityplan-infra:images"] = {"traefik": reference}
    assert load_deployment(as_pulumi_config(values)).config.images.traefik == reference


@pytest.mark.parametrize(
    "reference",
    [f"traefik@{DIGEST}", "traefik:v3@sha256:abc", f"traefik:latest@{DIGEST}",
     f"traefik:v3.2.3@sha512:{'ab' * 64}"],
)  # fmt: skip
def test_images_without_a_tag_or_with_a_bad_digest_are_refused(reference: str) -> None:
    values = copy.deepcopy(stack_values("dev"))
    values["unityplan-infra:images"] = {"traefik": reference}
    with pytest.raises(ConfigError) as raised:
        load_deployment(as_pulumi_config(values))
    assert raised.value.problems[0].key == "images.traefik"


def test_internet_facing_images_are_pinned_by_digest() -> None:
    images = load_deployment(as_pulumi_config(stack_values("dev"))).config.images
    for reference in (images.traefik, images.grafana):
        name, _, digest = reference.partition("@sha256:")
        assert ":" in name and len(digest) == 64, reference
