"""node-exporter in the host's network namespace, run with the program's own command line.

Why: the container shares the host's network namespace (`network_mode: host`) so that its
network metrics are the host's NICs, not a container's veth; it must then listen on one
address only. On a single host that is the gateway of `unityplan-mesh-network`, which
Prometheus's container reaches across the bridge; a LAN address must not answer.

The lab (tests/support/netns.py) plays the single host: namespace `dockerhost` has the
mesh network's gateway address (the bridge's address on a real host; here its `eth0`, the
first address of the subnet) and a second, "LAN" address; namespace `prometheus` is
Prometheus's container on the mesh network. The mesh subnet is the lab's, set as
`meshSubnet` in the dev stack as a user would. Debian's `prometheus-node-exporter` runs
with the container's arguments, taken from the Pulumi program under mocks, except that
`--path.rootfs` points at `/` (the container mounts the host's root at /host).
"""

from __future__ import annotations

import copy
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deployments import deployment_of
from tests.support.mocks import run_program
from tests.support.netns import NetnsLab, wait_until
from tests.support.stackfile import as_pulumi_config, stack_values
from unityplan_infra.render.prometheus import prometheus_config

MESH_SUBNET = ipaddress.IPv4Network("198.18.48.0/24")
LAN_ADDRESS = "198.19.7.1"  # another interface of the host: must not serve metrics
FETCH = (
    "import sys, urllib.request;"
    "sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=3).read().decode())"
)


def dev_values() -> dict[str, object]:
    values = copy.deepcopy(stack_values("dev"))
    values["unityplan-infra:meshSubnet"] = str(MESH_SUBNET)
    return values


@pytest.fixture(scope="module")
def node_exporter_args() -> list[str]:
    graph = run_program(as_pulumi_config(dev_values()))
    (container,) = [c for c in graph.containers().values()
                    if c.inputs["name"] == "monitoring-node-exporter"]  # fmt: skip
    assert container.inputs["networkMode"] == "host"
    return list(container.inputs["command"])


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsLab]:
    workdir: Path = tmp_path_factory.mktemp("node-exporter")
    with NetnsLab(["dockerhost", "prometheus"], subnet=MESH_SUBNET, workdir=workdir) as lab:
        lab.run("dockerhost", ["ip", "addr", "add", f"{LAN_ADDRESS}/32", "dev", "lo"])
        yield lab


@pytest.fixture(scope="module")
def listen(lab: NetnsLab, node_exporter_args: list[str]) -> str:
    args = [a if not a.startswith("--path.rootfs=") else "--path.rootfs=/"
            for a in node_exporter_args]  # fmt: skip
    process = lab.spawn("dockerhost", ["prometheus-node-exporter", *args], name="node")
    (address,) = [a.split("=", 1)[1] for a in args if a.startswith("--web.listen-address=")]
    wait_until(
        lambda: _fetch(lab, "dockerhost", f"http://{address}/metrics") is not None,
        timeout=15, what=lambda: f"node-exporter on {address}: {process.output()[-2000:]}",
    )
    return address


def _fetch(lab: NetnsLab, host: str, url: str) -> str | None:
    result = lab.run(host, ["python3", "-c", FETCH, url], check=False, timeout=10)
    return result.stdout if result.returncode == 0 else None


def test_listens_on_the_mesh_gateway_which_prometheus_scrapes(listen: str) -> None:
    gateway = MESH_SUBNET.network_address + 1
    assert listen == f"{gateway}:9100"
    deployment = deployment_of(dev_values())
    (node_job,) = [job for job in prometheus_config(deployment)["scrape_configs"]
                   if job["job_name"] == "node"]  # fmt: skip
    assert node_job["static_configs"][0]["targets"] == [listen]


def test_prometheus_container_reads_the_hosts_own_interfaces(lab: NetnsLab, listen: str) -> None:
    metrics = _fetch(lab, "prometheus", f"http://{listen}/metrics")
    assert metrics is not None, "Prometheus's side of the mesh network cannot scrape it"
    host_interface = lab.host("dockerhost").interface
    # The host's own interface and its counters: what a bridge-networked container misses.
    assert f'node_network_up{{device="{host_interface}"}} 1' in metrics
    assert f'node_network_receive_bytes_total{{device="{host_interface}"}}' in metrics


def test_no_other_address_serves_metrics(lab: NetnsLab, listen: str) -> None:
    assert _fetch(lab, "dockerhost", f"http://{LAN_ADDRESS}:9100/metrics") is None
    assert _fetch(lab, "dockerhost", "http://127.0.0.1:9100/metrics") is None


def test_the_containers_healthcheck_passes(lab: NetnsLab, listen: str) -> None:
    graph = run_program(as_pulumi_config(dev_values()))
    (container,) = [c for c in graph.containers().values()
                    if c.inputs["name"] == "monitoring-node-exporter"]  # fmt: skip
    kind, check = container.inputs["healthcheck"]["tests"]
    assert kind == "CMD-SHELL"
    assert lab.run("dockerhost", ["sh", "-c", check], check=False).returncode == 0
    # ... and it fails when nothing listens there (a check that cannot fail proves nothing).
    assert lab.run("dockerhost", ["sh", "-c", check.replace(listen, "127.0.0.1:9100")],
                   check=False).returncode != 0  # fmt: skip

