"""The pure side of changing a running platform: rollout order, retired pods in the plan."""

from __future__ import annotations

import copy
from typing import Any

from tests.support.deployments import deployment_of
from tests.support.stackfile import stack_values
from unityplan_infra.nats.streams import stream_configs
from unityplan_infra.topology.rollout import deployed_pods, rolling_pods, waits_for

NS = "unityplan-infra"


def dev(retired: tuple[str, ...] = (), leaving: tuple[str, ...] = (),
        extra: list[dict[str, Any]] | None = None, monitoring: str | None = None) -> Any:  # fmt: skip
    values = copy.deepcopy(stack_values("dev"))
    pods = [*values[f"{NS}:pods"], *(extra or [])]
    values[f"{NS}:pods"] = [{**pod, "retired": pod["code"] in retired,
                             "leaving": pod["code"] in leaving} for pod in pods]  # fmt: skip
    if monitoring:
        values[f"{NS}:monitoring"] = {"host": monitoring}
    return deployment_of(values)


def previous(*codes: str) -> dict[str, Any]:
    """Stack outputs as an earlier `up` left them: `pods` holds one entry per pod."""
    return {"pods": {code: {"host": "local"} for code in codes}, "urls": {}}


def test_pods_that_already_run_go_in_config_order() -> None:
    after = dev()
    before = previous("dk", "no", "se")
    assert rolling_pods(after, before) == ["dk", "no", "se"]
    assert [waits_for(after, before, code) for code in ("dk", "no", "se")] == [None, "dk", "no"]


def test_no_previous_outputs_means_no_rollout() -> None:
    """A first `up`: every pod starts at once."""
    for outputs in (None, {}, {"pods": None}, {"pods": {}}, {"pods": ["dk"]}):
        assert deployed_pods(outputs) == set()
        assert rolling_pods(dev(), outputs) == []
        assert waits_for(dev(), outputs, "no") is None


def test_new_and_retired_pods_take_no_part() -> None:
    fourth = [{"code": "fi", "name": "finland", "slot": 4}]
    after = dev(retired=("no",), extra=[*fourth, {"code": "is", "name": "iceland", "slot": 5}])
    before = previous("dk", "no", "se", "fi")
    assert rolling_pods(after, before) == ["dk", "se", "fi"]
    assert waits_for(after, before, "is") is None
    assert waits_for(after, before, "se") == "dk"


def test_a_retired_pod_is_planned_apart_and_keeps_its_stream_on_the_first_active_pod() -> None:
    deployment = dev(retired=("dk",), extra=[{"code": "fi", "name": "finland", "slot": 4}],
                     monitoring="no")
    assert [pod.code for pod in deployment.pods] == ["no", "se", "fi"]
    assert [pod.code for pod in deployment.retired] == ["dk"]
    assert deployment.config.monitoring_pod.code == "no"
    streams = {s["name"]: s for s in stream_configs(deployment)}
    assert streams["TERRITORY_DK"]["placement"] == {"tags": ["territory:no"]}
    assert streams["TERRITORY_DK"]["subjects"] == ["territory.dk.*"]
    assert streams["TERRITORY_FI"]["placement"] == {"tags": ["territory:fi"]}
    # Nobody routes to, peers with or scrapes the retired pod.
    for pod in deployment.pods:
        assert "dk" not in [peer.code for peer in deployment.peers(pod)]


def test_a_leaving_pod_still_runs_and_is_a_peer_while_its_stream_moves() -> None:
    deployment = dev(leaving=("se",), extra=[{"code": "fi", "name": "finland", "slot": 4}])
    assert [pod.code for pod in deployment.pods] == ["dk", "no", "se", "fi"]
    assert [pod.code for pod in deployment.staying] == ["dk", "no", "fi"]
    assert [pod.code for pod in deployment.handed_over] == ["se"]
    assert "se" in [peer.code for peer in deployment.peers(deployment.pod("dk"))]
    streams = {s["name"]: s for s in stream_configs(deployment)}
    assert streams["TERRITORY_SE"]["placement"] == {"tags": ["territory:dk"]}


def test_the_first_pod_leaving_moves_streams_to_the_next_that_stays() -> None:
    deployment = dev(leaving=("dk",), extra=[{"code": "fi", "name": "finland", "slot": 4}],
                     monitoring="no")
    streams = {s["name"]: s for s in stream_configs(deployment)}
    assert streams["TERRITORY_DK"]["placement"] == {"tags": ["territory:no"]}
    assert deployment.staying[0].code == "no"
