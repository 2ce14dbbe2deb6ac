"""The pure side of changing a running platform: rollout order, retired pods in the plan."""

from __future__ import annotations

import copy
from typing import Any

from tests.support.deployments import deployment_of
from tests.support.stackfile import stack_values
from unityplan_infra.nats.streams import stream_configs
from unityplan_infra.topology.rollout import (
    deployed_images,
    rolling_pods,
    waits_for,
)

NS = "unityplan-infra"


def dev(images: dict[str, str] | None = None, retired: tuple[str, ...] = (),
        extra: list[dict[str, Any]] | None = None) -> Any:  # fmt: skip
    values = copy.deepcopy(stack_values("dev"))
    pods = [*values[f"{NS}:pods"], *(extra or [])]
    values[f"{NS}:pods"] = [{**pod, "retired": pod["code"] in retired} for pod in pods]
    if images:
        values[f"{NS}:images"] = images
    return deployment_of(values)


NEW = {"nats": "nats:9.9.9-alpine"}


def test_pods_whose_image_changes_go_in_config_order() -> None:
    before = deployed_images(dev())
    after = dev(NEW)
    assert rolling_pods(after, before, "nats") == ["dk", "no", "se"]
    assert rolling_pods(after, before, "redis") == []
    assert [waits_for(after, before, "nats", code) for code in ("dk", "no", "se")] == [
        None, "dk", "no",
    ]  # fmt: skip


def test_no_previous_outputs_means_no_rollout() -> None:
    for previous in (None, {}, {"nats": None}, {"nats": {}}):
        assert rolling_pods(dev(NEW), previous, "nats") == []
        assert waits_for(dev(NEW), previous, "nats", "no") is None


def test_a_pod_already_on_the_new_image_is_skipped() -> None:
    """A rollout that failed half-way: the next `up` goes on with the pods still to do."""
    before = deployed_images(dev())
    before["nats"]["dk"] = NEW["nats"]
    assert rolling_pods(dev(NEW), before, "nats") == ["no", "se"]
    assert waits_for(dev(NEW), before, "nats", "no") is None
    assert waits_for(dev(NEW), before, "nats", "se") == "no"


def test_new_and_retired_pods_take_no_part() -> None:
    fourth = [{"code": "fi", "name": "finland", "slot": 4}]
    before = deployed_images(dev(extra=fourth))
    after = dev(NEW, retired=("no",), extra=[*fourth, {"code": "is", "name": "iceland", "slot": 5}])
    assert rolling_pods(after, before, "nats") == ["dk", "se", "fi"]
    assert set(deployed_images(after)["nats"]) == {"dk", "se", "fi", "is"}


def test_a_retired_pod_is_planned_apart_and_keeps_its_stream_on_the_first_active_pod() -> None:
    deployment = dev(retired=("dk",), extra=[{"code": "fi", "name": "finland", "slot": 4}])
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
