"""Host exporters report the host (issue 9): node-exporter in the host's namespaces, a
current cAdvisor with upstream's mounts, and in multi-host a WireGuard exporter, each
listening where only Prometheus's side reaches it."""

from __future__ import annotations

import ipaddress
import re
from typing import Any

import pytest

from tests.support.mocks import CONTAINER_TYPE, Graph, Resource, run_program, unwrap
from tests.support.stackfile import as_pulumi_config, stack_values, yaml12

pytestmark = pytest.mark.timeout(120)

NORDIC_SLOTS = {"dk": 1, "no": 2, "se": 3}


@pytest.fixture(scope="module")
def dev() -> Graph:
    return run_program(as_pulumi_config(stack_values("dev")), "dev")


@pytest.fixture(scope="module")
def nordic() -> Graph:
    return run_program(as_pulumi_config(stack_values("nordic")), "nordic")


def named(graph: Graph, name: str) -> list[dict[str, Any]]:
    """Inputs of every container called `name` (one per host in multi-host)."""
    found = [unwrap(r.inputs) for r in graph.of_type(CONTAINER_TYPE) if r.inputs["name"] == name]
    assert found, name
    return found


def scrape_targets(graph: Graph, job: str) -> dict[str, str]:
    config = yaml12(str(unwrap(graph.named("prometheus-config").inputs["stdin"])))
    jobs = {entry["job_name"]: entry for entry in config["scrape_configs"]}
    if job not in jobs:
        return {}
    return {
        static["labels"]["host"]: target
        for static in jobs[job]["static_configs"]
        for target in static["targets"]
    }


def listen_address(inputs: dict[str, Any]) -> str:
    (address,) = [a.split("=", 1)[1] for a in inputs["command"]
                  if a.startswith("--web.listen-address=")]  # fmt: skip
    return address


def assert_host_namespaces(inputs: dict[str, Any]) -> None:
    assert inputs["networkMode"] == "host"
    assert not inputs.get("ports") and not inputs.get("networksAdvanced")


def test_dev_node_exporter_is_the_hosts_and_listens_on_the_mesh_gateway(dev: Graph) -> None:
    (inputs,) = named(dev, "monitoring-node-exporter")
    assert_host_namespaces(inputs)
    assert inputs["pidMode"] == "host"
    assert inputs["mounts"] == [{"type": "bind", "source": "/", "target": "/host",
                                 "readOnly": True, "bindOptions": {"propagation": "rslave"}}]  # fmt: skip
    assert "--path.rootfs=/host" in inputs["command"]
    (mesh,) = [unwrap(n.inputs) for n in dev.of_type("docker:index/network:Network")
               if n.inputs["name"] == "unityplan-mesh-network"]  # fmt: skip
    subnet = ipaddress.IPv4Network(mesh["ipamConfigs"][0]["subnet"])
    # Docker's gateway of a network whose IPAM config names no gateway: the first address.
    assert "gateway" not in mesh["ipamConfigs"][0]
    assert listen_address(inputs) == f"{subnet.network_address + 1}:9100"
    assert scrape_targets(dev, "node") == {"local": listen_address(inputs)}
    assert listen_address(inputs) in inputs["healthcheck"]["tests"][1]


def test_nordic_node_exporters_listen_on_their_wireguard_address(nordic: Graph) -> None:
    found = named(nordic, "monitoring-node-exporter")
    assert len(found) == len(NORDIC_SLOTS)
    addresses = set()
    for inputs in found:
        assert_host_namespaces(inputs)
        addresses.add(listen_address(inputs))
    expected = {code: f"10.0.{slot}.1:9100" for code, slot in NORDIC_SLOTS.items()}
    assert addresses == set(expected.values())
    assert scrape_targets(nordic, "node") == expected


def test_wireguard_exporter_on_every_multi_host_server(nordic: Graph) -> None:
    found = named(nordic, "monitoring-wireguard-exporter")
    assert len(found) == len(NORDIC_SLOTS)
    expected = {code: f"10.0.{slot}.1:9586" for code, slot in NORDIC_SLOTS.items()}
    seen = set()
    for inputs in found:
        assert_host_namespaces(inputs)
        # One capability for `wg show`, not privileged; -a false: no sudo (broken upstream).
        assert inputs["capabilities"] == {"adds": ["NET_ADMIN"]}
        assert not inputs.get("privileged")
        assert inputs["user"] == "root"
        args = inputs["command"]
        assert args[:2] == ["-a", "false"] and args[-2:] == ["-i", "wg0"]
        address, port = args[args.index("-l") + 1], args[args.index("-p") + 1]
        assert ipaddress.IPv4Address(address) in ipaddress.IPv4Network("10.0.0.0/16")
        seen.add(f"{address}:{port}")
        assert f"http://{address}:{port}/metrics" in inputs["healthcheck"]["tests"][1]
        assert re.fullmatch(r"mindflavor/prometheus-wireguard-exporter:\d+\.\d+\.\d+",
                            _image_reference(nordic, inputs))  # fmt: skip
    assert seen == set(expected.values())
    assert scrape_targets(nordic, "wireguard") == expected


def test_no_wireguard_exporter_without_wireguard(dev: Graph) -> None:
    assert not [r for r in dev.of_type(CONTAINER_TYPE)
                if r.inputs["name"] == "monitoring-wireguard-exporter"]  # fmt: skip
    assert scrape_targets(dev, "wireguard") == {}


@pytest.mark.parametrize("stack", ["dev", "nordic"])
def test_cadvisor_is_current_with_upstreams_mounts(stack: str, dev: Graph, nordic: Graph) -> None:
    graph = {"dev": dev, "nordic": nordic}[stack]
    for inputs in named(graph, "monitoring-cadvisor"):
        image = _image_reference(graph, inputs)
        match = re.fullmatch(r"ghcr\.io/google/cadvisor:v0\.(\d+)\.(\d+)", image)
        # v0.54.0 reads Docker's containerd image store (google/cadvisor#3643).
        assert match and int(match[1]) >= 54, image
        mounts = {m["source"]: m for m in inputs["mounts"]}
        assert set(mounts) == {"/", "/var/run", "/sys", "/var/lib/docker", "/dev/disk"}
        assert all(m["readOnly"] for m in mounts.values())
        # containerd's socket (/run/containerd/containerd.sock) comes with /var/run.
        assert mounts["/var/run"]["target"] == "/var/run"
        assert inputs["privileged"] is True


def _image_reference(graph: Graph, inputs: dict[str, Any]) -> str:
    """The `name` of the RemoteImage whose ID the container runs."""
    images: list[Resource] = graph.of_type("docker:index/remoteImage:RemoteImage")
    (reference,) = {str(i.inputs["name"]) for i in images
                    if i.outputs.get("imageId") == inputs["image"]}  # fmt: skip
    return reference


def test_dev_node_exporter_starts_after_the_network_whose_gateway_it_binds(dev: Graph) -> None:
    (exporter,) = [r for r in dev.of_type(CONTAINER_TYPE)
                   if r.inputs["name"] == "monitoring-node-exporter"]  # fmt: skip
    (mesh,) = [n for n in dev.of_type("docker:index/network:Network")
               if n.inputs["name"] == "unityplan-mesh-network"]  # fmt: skip
    assert mesh.urn in dev.ancestors(exporter)
