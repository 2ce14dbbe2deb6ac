"""Unit tests of the Prometheus config renderer, on the dev stack's three pods."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from ruamel.yaml import YAML

from tests.support.deployments import PODS, dev_deployment, multi_host_deployment
from unityplan_infra.render.prometheus import (
    prometheus_config,
    render_prometheus_config,
)

EXPORTER_PORTS = {"postgres": 9187, "redis": 9121, "nats": 7777}


def _job(config: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [job for job in config["scrape_configs"] if job["job_name"] == name]
    assert len(matches) == 1, f"expected one job {name!r}, got {len(matches)}"
    return matches[0]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return prometheus_config(dev_deployment())


def test_dev_stack_has_the_three_pods() -> None:
    # Guards the fixture itself: a YAML 1.1 loader would turn the code "no" into False.
    assert [(pod.code, pod.pod.name) for pod in dev_deployment().pods] == list(PODS.items())


def test_global_section(config: dict[str, Any]) -> None:
    assert config["global"] == {
        "scrape_interval": "15s",
        "evaluation_interval": "15s",
        "external_labels": {"cluster": "unityplan-central"},
    }


def test_one_job_per_kind_not_per_pod(config: dict[str, Any]) -> None:
    names = [job["job_name"] for job in config["scrape_configs"]]
    assert sorted(names) == sorted(["prometheus", "postgres", "redis", "nats", "node", "cadvisor"])


@pytest.mark.parametrize("kind", sorted(EXPORTER_PORTS))
def test_pod_exporter_targets_and_labels(config: dict[str, Any], kind: str) -> None:
    entries = _job(config, kind)["static_configs"]
    assert entries == [
        {
            "targets": [f"monitoring-{kind}-exporter-{code}:{EXPORTER_PORTS[kind]}"],
            "labels": {"pod": name, "territory": code, "host": "local"},
        }
        for code, name in PODS.items()
    ]


def test_nine_pod_exporter_targets(config: dict[str, Any]) -> None:
    targets = [
        target
        for kind in EXPORTER_PORTS
        for entry in _job(config, kind)["static_configs"]
        for target in entry["targets"]
    ]
    assert len(targets) == 9
    assert len(set(targets)) == 9
    assert "monitoring-postgres-exporter-no:9187" in targets


def test_norway_territory_survives_yaml_as_a_string() -> None:
    text = render_prometheus_config(dev_deployment())
    # Deliberately a YAML 1.1 reader (PyYAML) as well: the emitted file must keep "no" a
    # string for any YAML tool an operator points at it, not only for Prometheus.
    for loaded in (yaml.safe_load(text), YAML(typ="safe").load(text)):
        norway = [
            entry
            for entry in _job(loaded, "postgres")["static_configs"]
            if entry["labels"]["pod"] == "norway"
        ]
        assert norway == [
            {
                "targets": ["monitoring-postgres-exporter-no:9187"],
                "labels": {"pod": "norway", "territory": "no", "host": "local"},
            }
        ]
        assert norway[0]["labels"]["territory"] is not False


def test_rendered_text_round_trips(config: dict[str, Any]) -> None:
    assert YAML(typ="safe").load(render_prometheus_config(dev_deployment())) == config


def test_self_scrape(config: dict[str, Any]) -> None:
    assert _job(config, "prometheus")["static_configs"] == [{"targets": ["localhost:9090"]}]


@pytest.mark.parametrize("job", ["node", "cadvisor"])
def test_host_exporters_once_per_single_host(config: dict[str, Any], job: str) -> None:
    # node-exporter is in the host's network namespace, on the mesh network's gateway
    # (the first address of the default meshSubnet 172.31.240.0/20).
    target = {"node": "172.31.240.1:9100", "cadvisor": "monitoring-cadvisor:8080"}
    assert _job(config, job)["static_configs"] == [
        {"targets": [target[job]], "labels": {"host": "local"}}
    ]


@pytest.mark.parametrize(
    ("job", "port"), [("node", 9100), ("cadvisor", 8089), ("wireguard", 9586)]
)
def test_host_exporters_once_per_host_multi_host(job: str, port: int) -> None:
    deployment = multi_host_deployment()
    assert len(deployment.hosts) == 3
    entries = _job(prometheus_config(deployment), job)["static_configs"]
    assert entries == [
        {"targets": [f"10.0.{slot}.1:{port}"], "labels": {"host": code}}
        for slot, code in enumerate(PODS, start=1)
    ]


def test_no_wireguard_job_on_a_single_host(config: dict[str, Any]) -> None:
    assert "wireguard" not in {job["job_name"] for job in config["scrape_configs"]}


def test_multi_host_pod_targets_use_wireguard_addresses() -> None:
    entries = _job(prometheus_config(multi_host_deployment()), "redis")["static_configs"]
    # Host port = podPorts.redisExporter (9121) + slot - 1, on the pod's WireGuard address.
    assert [entry["targets"] for entry in entries] == [
        ["10.0.1.1:9121"],
        ["10.0.2.1:9122"],
        ["10.0.3.1:9123"],
    ]
