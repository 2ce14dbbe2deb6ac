"""The deployment plan: names, ports, addresses, routes — table-driven on the stack files."""

from __future__ import annotations

import ipaddress

import pytest

from tests.support.deployments import dev_deployment, nordic_deployment, with_pod
from unityplan_infra.topology.plan import vpn_address, vpn_network


@pytest.mark.parametrize(
    ("code", "slot", "postgres", "nats", "gateway", "matrix"),
    [("dk", 1, 5432, 4222, 8180, 8008), ("no", 2, 5433, 4223, 8181, 8009),
     ("se", 3, 5434, 4224, 8182, 8010)],
)  # fmt: skip
def test_host_ports_are_base_plus_slot_minus_one(
    code: str, slot: int, postgres: int, nats: int, gateway: int, matrix: int
) -> None:
    pod = dev_deployment().pod(code)
    assert pod.slot == slot
    assert pod.host_port("postgres") == postgres
    assert pod.nats_ports["client"] == nats
    assert pod.host_port("ipfs_gateway") == gateway
    assert pod.host_port("matrix") == matrix


def test_names_follow_the_guide() -> None:
    pod = dev_deployment().pod("no")
    assert pod.service("nats") == "service-nats-no"
    assert pod.exporter("postgres") == "monitoring-postgres-exporter-no"
    assert pod.network == "pod-no-net"
    assert pod.database == "unityplan_no"
    assert pod.volume("postgres") == "pod-no-postgres-data"
    assert pod.matrix_server_name == "no.unityplan.local"


def test_single_host_pods_reach_each_other_by_container_name() -> None:
    deployment = dev_deployment()
    assert [p.nats_route for p in deployment.peers(deployment.pod("dk"))] == [
        ("service-nats-no", 6223), ("service-nats-se", 6224)]  # fmt: skip
    assert deployment.pod("se").exporter_target("redis") == "monitoring-redis-exporter-se:9121"
    assert deployment.pod("se").ipfs_swarm == ("service-ipfs-se", 4001)


def test_multi_host_pods_reach_each_other_over_wireguard() -> None:
    deployment = nordic_deployment()
    assert [h.name for h in deployment.hosts] == ["dk", "no", "se"]
    assert deployment.pod("no").nats_route == ("10.0.2.1", 6223)
    assert deployment.pod("se").exporter_target("postgres") == "10.0.3.1:9189"
    assert deployment.pod("se").address_for("peer") == "10.0.3.1"
    assert deployment.pod("se").address_for("admin") == "127.0.0.1"
    assert deployment.pod("se").address_for("public") == "0.0.0.0"
    assert deployment.monitoring_host.name == "dk"
    assert deployment.hosts_by_name["no"].node_exporter_target() == "10.0.2.1:9100"


def test_vpn_addresses() -> None:
    assert vpn_address(7) == ipaddress.IPv4Address("10.0.7.1")
    assert vpn_network(7) == ipaddress.IPv4Network("10.0.7.0/24")


def test_single_host_has_no_port_clash_with_many_pods() -> None:
    deployment = with_pod("dev", {"code": "fi", "name": "finland", "slot": 4})
    ports = [(b.host_port, b.protocol) for b in deployment.hosts[0].bindings()]
    assert len(ports) == len(set(ports))


def test_only_traefik_web_ports_are_public() -> None:
    assert nordic_deployment().monitoring_host.public_ports() == [80, 443]
    assert nordic_deployment().hosts_by_name["no"].public_ports() == []


def test_endpoints_use_the_published_address() -> None:
    assert dev_deployment().pod("no").endpoints()["redis"] == "redis://127.0.0.1:6380"
    # Multi-host: as the pod's host sees them; only what peers need is on WireGuard.
    nordic = nordic_deployment().pod("no").endpoints()
    assert nordic["redis"] == "redis://127.0.0.1:6380"
    assert nordic["nats"] == "nats://10.0.2.1:4223"
    assert nordic["matrixFederation"] == "https://10.0.2.1:8448"
    urls = dev_deployment().monitoring_host.endpoints()
    assert urls["grafana"] == "http://127.0.0.1:3001"
    assert urls["redisCommander"] == "http://127.0.0.1:8082"
