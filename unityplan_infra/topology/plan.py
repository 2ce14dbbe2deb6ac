"""The deployment plan: which pod runs on which host, under which names, on which ports,
and how pods reach each other. Pure data derived from `StackConfig`; knows nothing of Pulumi.

Names follow the reference guide so runbooks keep working (`docker exec service-nats-dk`).
Cross-pod addresses depend on the layout:

- single-host: containers share `unityplan-mesh-network` and reach each other by container
  name on the container port (the guide's `service-nats-no:6223` was wrong: inside the
  network every NATS listens on 6222);
- multi-host: pods reach each other over WireGuard at `10.0.<slot>.1` on the host port,
  which is published on that WireGuard address only.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from functools import cached_property
from typing import Literal

from unityplan_infra.config.errors import ConfigError, Problem
from unityplan_infra.config.models import HcloudHost, HostSpec, Pod, StackConfig

MESH_NETWORK = "unityplan-mesh-network"
GLOBAL_NETWORK = "unityplan-global-net"
WIREGUARD_PORT = 51820
VPN_PREFIX = 24

Protocol = Literal["tcp", "udp"]
Exposure = Literal["peer", "admin", "public"]
"""Who may reach a published port across hosts: "peer" ports are what other hosts' services
need (NATS routes and clients, IPFS swarm, Matrix federation, exporters) and listen on the
WireGuard address; "admin" ports (databases, admin APIs, UIs) listen on loopback and are
reached over SSH; "public" is Traefik's 80/443 on the monitoring host. A single host
publishes every port on `publishAddress` (loopback by default)."""
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class PortBinding:
    """A container port published on the host."""

    container: str
    host_port: int
    container_port: int
    setting: str  # the config key that chose host_port, for error messages
    protocol: Protocol = "tcp"
    exposure: Exposure = "admin"
    published: bool = True
    """False for a service in the host's network namespace: it takes the host port itself
    (`HostPlan.host_network_address`), so Docker publishes nothing, but no other service may
    take that port either."""


def vpn_network(slot: int) -> ipaddress.IPv4Network:
    """WireGuard subnet of the host in `slot`: 10.0.<slot>.0/24."""
    return ipaddress.IPv4Network(f"10.0.{slot}.0/{VPN_PREFIX}")


def vpn_address(slot: int) -> ipaddress.IPv4Address:
    """WireGuard address of the host in `slot`: 10.0.<slot>.1."""
    return vpn_network(slot).network_address + 1


@dataclass(frozen=True)
class PodPlan:
    """One pod, with its names, ports and cross-pod addresses."""

    pod: Pod
    config: StackConfig = field(repr=False)
    host: str

    @property
    def code(self) -> str:
        return self.pod.code

    @property
    def slot(self) -> int:
        return self.pod.slot

    @property
    def multi_host(self) -> bool:
        return self.config.layout == "multi-host"

    # --- names -----------------------------------------------------------------------
    @property
    def network(self) -> str:
        return f"pod-{self.code}-net"

    def service(self, kind: str) -> str:
        """Container name of a pod service: service-<kind>-<code>."""
        return f"service-{kind}-{self.code}"

    def exporter(self, kind: str) -> str:
        """Container name of a pod exporter: monitoring-<kind>-exporter-<code>."""
        return f"monitoring-{kind}-exporter-{self.code}"

    def volume(self, kind: str) -> str:
        return f"pod-{self.code}-{kind}-data"

    @property
    def database(self) -> str:
        return f"unityplan_{self.code}"

    @property
    def matrix_server_name(self) -> str:
        return f"{self.code}.{self.config.matrix_domain}"

    @property
    def nats_server_name(self) -> str:
        return self.service("nats")

    @property
    def territory_tag(self) -> str:
        """JetStream server tag that pins TERRITORY_<CODE> to this pod's server."""
        return f"territory:{self.code}"

    # --- addresses -------------------------------------------------------------------
    @property
    def vpn_address(self) -> ipaddress.IPv4Address:
        return vpn_address(self.slot)

    def address_for(self, exposure: Exposure) -> str:
        """Host address a port of this exposure is published on."""
        if not self.multi_host:
            return self.config.publish_address
        return {"peer": str(self.vpn_address), "admin": LOOPBACK, "public": "0.0.0.0"}[exposure]

    def host_port(self, setting: str) -> int:
        """Host port of a pod service: base from `podPorts.<setting>` + slot - 1."""
        base: int = getattr(self.config.pod_ports, setting)
        return base + self.slot - 1

    def reach(self, container: str, setting: str, container_port: int) -> tuple[str, int]:
        """How another pod (or the monitoring stack) reaches one of this pod's ports."""
        if self.multi_host:
            return str(self.vpn_address), self.host_port(setting)
        return container, container_port

    # NATS listens inside its container on its host ports (as in the guide: no listens on
    # 4223/6223/8223), so a generated config runs unchanged on a bare host as well.
    @property
    def nats_ports(self) -> dict[str, int]:
        return {
            "client": self.host_port("nats_client"),
            "cluster": self.host_port("nats_cluster"),
            "monitor": self.host_port("nats_monitor"),
        }

    @property
    def nats_host(self) -> str:
        return str(self.vpn_address) if self.multi_host else self.service("nats")

    @property
    def nats_route(self) -> tuple[str, int]:
        return self.nats_host, self.nats_ports["cluster"]

    @property
    def nats_client(self) -> tuple[str, int]:
        return self.nats_host, self.nats_ports["client"]

    @property
    def ipfs_swarm(self) -> tuple[str, int]:
        return self.reach(self.service("ipfs"), "ipfs_swarm", 4001)

    @property
    def federation_host_port(self) -> int:
        """Multi-host: the base port itself. Server names carry no port, so peers dial 8448
        (one pod per host, no clash); single-host: base + slot - 1 like every other port."""
        if self.multi_host:
            return self.config.pod_ports.matrix_federation
        return self.host_port("matrix_federation")

    @property
    def matrix_federation(self) -> tuple[str, int]:
        if self.multi_host:
            return str(self.vpn_address), self.federation_host_port
        return self.service("matrix"), 8448

    def exporter_target(self, kind: str) -> str:
        container_port = {"postgres": 9187, "redis": 9121, "nats": 7777}[kind]
        host, port = self.reach(self.exporter(kind), f"{kind}_exporter", container_port)
        return f"{host}:{port}"

    # --- what a user connects to ------------------------------------------------------
    def user_address(self, exposure: Exposure) -> str:
        return _reachable(self.address_for(exposure))

    def endpoints(self) -> dict[str, str]:
        """URLs of the pod's services as published on its host (multi-host: as the host
        itself sees them; admin ones on its loopback)."""
        admin, peer = self.user_address("admin"), self.user_address("peer")
        port = self.host_port
        return {
            "postgres": f"postgresql://{admin}:{port('postgres')}/{self.database}",
            "redis": f"redis://{admin}:{port('redis')}",
            "nats": f"nats://{peer}:{port('nats_client')}",
            "natsMonitor": f"http://{admin}:{port('nats_monitor')}",
            "ipfsApi": f"http://{admin}:{port('ipfs_api')}",
            "ipfsGateway": f"http://{admin}:{port('ipfs_gateway')}",
            "matrix": f"http://{admin}:{port('matrix')}",
            "matrixFederation": f"https://{peer}:{self.federation_host_port}",
        }

    # --- published ports -------------------------------------------------------------
    def bindings(self) -> list[PortBinding]:
        def bind(container: str, setting: str, port: int, exposure: Exposure) -> PortBinding:
            return PortBinding(
                container, self.host_port(setting), port, f"podPorts.{_camel(setting)}",
                exposure=exposure,
            )  # fmt: skip

        nats, ipfs, matrix = self.service("nats"), self.service("ipfs"), self.service("matrix")
        return [
            bind(self.service("postgres"), "postgres", 5432, "admin"),
            bind(self.service("redis"), "redis", 6379, "admin"),
            bind(nats, "nats_client", self.nats_ports["client"], "peer"),
            bind(nats, "nats_cluster", self.nats_ports["cluster"], "peer"),
            bind(nats, "nats_monitor", self.nats_ports["monitor"], "admin"),
            bind(ipfs, "ipfs_api", 5001, "admin"),  # kubo's RPC API: full control of the node
            bind(ipfs, "ipfs_swarm", 4001, "peer"),
            bind(ipfs, "ipfs_gateway", 8080, "admin"),
            bind(matrix, "matrix", 8008, "admin"),
            PortBinding(
                matrix, self.federation_host_port, 8448, "podPorts.matrixFederation",
                exposure="peer",
            ),
            bind(self.exporter("postgres"), "postgres_exporter", 9187, "peer"),
            bind(self.exporter("redis"), "redis_exporter", 9121, "peer"),
            bind(self.exporter("nats"), "nats_exporter", 7777, "peer"),
        ]

    def ports_of(self, container: str) -> list[PortBinding]:
        return [binding for binding in self.bindings() if binding.container == container]


@dataclass(frozen=True)
class HostPlan:
    """One Docker engine and what runs on it."""

    name: str
    pods: tuple[PodPlan, ...]
    runs_monitoring: bool
    config: StackConfig = field(repr=False)
    spec: HostSpec | None = None  # None: the local engine of the single-host layout

    @property
    def multi_host(self) -> bool:
        return self.config.layout == "multi-host"

    @property
    def slot(self) -> int:
        return self.pods[0].slot

    @property
    def vpn_address(self) -> ipaddress.IPv4Address | None:
        return self.pods[0].vpn_address if self.multi_host else None

    def address_for(self, exposure: Exposure) -> str:
        """Host address a port of this exposure is published on."""
        return self.pods[0].address_for(exposure)

    @property
    def is_hcloud(self) -> bool:
        return isinstance(self.spec, HcloudHost)

    @property
    def host_network_address(self) -> str:
        """Where the services in the host's own network namespace listen, and nowhere else.

        Multi-host: the WireGuard address, so only peers reach them. Single host: the
        gateway of `unityplan-mesh-network`, the host's address on the bridge that
        Prometheus's container sits on (Docker gives a network without an explicit gateway
        the first address of its subnet); never a LAN address.
        """
        if self.multi_host:
            return str(self.vpn_address)
        return str(ipaddress.IPv4Network(self.config.mesh_subnet).network_address + 1)

    def node_exporter_target(self) -> str:
        return f"{self.host_network_address}:{self.config.host_ports.node_exporter}"

    def wireguard_exporter_target(self) -> str | None:
        """The WireGuard exporter's scrape address; None without WireGuard (single host)."""
        if not self.multi_host:
            return None
        return f"{self.host_network_address}:{self.config.host_ports.wireguard_exporter}"

    def cadvisor_target(self) -> str:
        if self.multi_host:
            return f"{self.vpn_address}:{self.config.host_ports.cadvisor}"
        return "monitoring-cadvisor:8080"

    def bindings(self) -> list[PortBinding]:
        ports = self.config.host_ports
        address_binds: list[PortBinding] = []
        for pod in self.pods:
            address_binds.extend(pod.bindings())

        def bind(
            container: str, setting: str, port: int, exposure: Exposure = "admin",
            published: bool = True,
        ) -> PortBinding:
            return PortBinding(
                container, getattr(ports, setting), port, f"hostPorts.{_camel(setting)}",
                exposure=exposure, published=published,
            )  # fmt: skip

        address_binds += [
            # In the host's network namespace: its metrics are the host's (NICs, wg0).
            bind("monitoring-node-exporter", "node_exporter", ports.node_exporter, "peer",
                 published=False),
            bind("monitoring-cadvisor", "cadvisor", 8080, "peer"),
        ]  # fmt: skip
        if self.multi_host:
            address_binds.append(
                bind("monitoring-wireguard-exporter", "wireguard_exporter",
                     ports.wireguard_exporter, "peer", published=False)
            )  # fmt: skip
        if self.runs_monitoring and self.config.monitoring.enabled:
            address_binds += [
                bind("monitoring-prometheus", "prometheus", 9090),
                bind("monitoring-grafana", "grafana", 3000),
                bind("monitoring-jaeger", "jaeger", 16686),
                # Traces from every pod's host: a peer need, on WireGuard.
                bind("monitoring-jaeger", "otlp_grpc", 4317, "peer"),
                bind("monitoring-jaeger", "otlp_http", 4318, "peer"),
                bind("monitoring-alertmanager", "alertmanager", 9093),
                bind("reverse-proxy-traefik", "traefik_http", 80, "public"),
                bind("reverse-proxy-traefik", "traefik_https", 443, "public"),
                bind("reverse-proxy-traefik", "traefik_dashboard", 8080),  # api.insecure
            ]
        if self.runs_monitoring and self.config.dev_tools_enabled:
            address_binds += [
                bind("dev-dashboard", "dashboard", 80),
                bind("dev-adminer", "adminer", 8080),
                bind("dev-mailhog", "mailhog", 8025),
                bind("dev-mailhog", "mailhog_smtp", 1025),
                bind("dev-redis-commander", "redis_commander", 8081),
            ]
        return address_binds

    def ports_of(self, container: str) -> list[PortBinding]:
        """What Docker publishes for `container` (host-network services: nothing)."""
        return [
            binding
            for binding in self.bindings()
            if binding.container == container and binding.published
        ]

    def monitoring_urls(self) -> dict[str, str]:
        """URLs of the monitoring stack, where this host runs it."""
        if not (self.runs_monitoring and self.config.monitoring.enabled):
            return {}
        address, ports = _reachable(self.address_for("admin")), self.config.host_ports
        return {
            "grafana": f"http://{address}:{ports.grafana}",
            "prometheus": f"http://{address}:{ports.prometheus}",
            "jaeger": f"http://{address}:{ports.jaeger}",
            "alertmanager": f"http://{address}:{ports.alertmanager}",
            "traefik": f"http://{address}:{ports.traefik_dashboard}/dashboard/",
        }

    def dev_tool_urls(self) -> dict[str, str]:
        """URLs of the dev tools, where this host runs them."""
        if not (self.runs_monitoring and self.config.dev_tools_enabled):
            return {}
        address, ports = _reachable(self.address_for("admin")), self.config.host_ports
        return {
            "dashboard": f"http://{address}:{ports.dashboard}",
            "adminer": f"http://{address}:{ports.adminer}",
            "mailhog": f"http://{address}:{ports.mailhog}",
            "redisCommander": f"http://{address}:{ports.redis_commander}",
        }

    def endpoints(self) -> dict[str, str]:
        """URLs of the monitoring stack and dev tools, where this host runs them."""
        return self.monitoring_urls() | self.dev_tool_urls()

    def public_ports(self) -> list[int]:
        """Ports the host opens to the internet: only Traefik's web entry points."""
        if not (self.runs_monitoring and self.config.monitoring.enabled):
            return []
        return [self.config.host_ports.traefik_http, self.config.host_ports.traefik_https]


@dataclass(frozen=True)
class Deployment:
    """The validated plan of a whole stack."""

    config: StackConfig
    hosts: tuple[HostPlan, ...]
    retired: tuple[PodPlan, ...] = ()
    """Retired pods: nothing of theirs runs; their names, slot and data stay theirs."""

    @cached_property
    def pods(self) -> tuple[PodPlan, ...]:
        """The active pods: everything the program deploys and every peer list."""
        return tuple(pod for host in self.hosts for pod in host.pods)

    @cached_property
    def leaving(self) -> tuple[PodPlan, ...]:
        """Pods in the first step of retirement: deployed, but handing over their NATS share."""
        return tuple(pod for pod in self.pods if pod.pod.leaving)

    @cached_property
    def staying(self) -> tuple[PodPlan, ...]:
        """Pods that keep serving: not leaving (retired ones are not deployed at all)."""
        return tuple(pod for pod in self.pods if not pod.pod.leaving)

    @cached_property
    def handed_over(self) -> tuple[PodPlan, ...]:
        """Pods whose NATS server gives up its streams and its JetStream membership."""
        return (*self.leaving, *self.retired)

    @cached_property
    def retired_hosts(self) -> tuple[HostPlan, ...]:
        """Multi-host: the servers of retired pods, which run nothing and keep their data."""
        if self.config.layout != "multi-host":
            return ()
        return tuple(
            HostPlan(pod.code, (pod,), False, self.config, pod.pod.host)
            for pod in self.retired
            if pod.pod.host is not None
        )

    @cached_property
    def hosts_by_name(self) -> dict[str, HostPlan]:
        return {host.name: host for host in self.hosts}

    @property
    def monitoring_host(self) -> HostPlan:
        return next(host for host in self.hosts if host.runs_monitoring)

    def pod(self, code: str) -> PodPlan:
        return next(pod for pod in self.pods if pod.code == code)

    def peers(self, pod: PodPlan) -> list[PodPlan]:
        """Every other pod, in config order."""
        return [other for other in self.pods if other.code != pod.code]


def plan_deployment(config: StackConfig) -> Deployment:
    """Map pods onto hosts and check that no two services share a host port."""
    monitoring_code = config.monitoring_pod.code
    if config.layout == "single-host":
        pods = tuple(PodPlan(pod, config, "local") for pod in config.active_pods)
        hosts: tuple[HostPlan, ...] = (HostPlan("local", pods, True, config),)
        retired = tuple(PodPlan(pod, config, "local") for pod in config.retired_pods)
    else:
        hosts = tuple(
            HostPlan(
                pod.code,
                (PodPlan(pod, config, pod.code),),
                pod.code == monitoring_code,
                config,
                pod.host,
            )
            for pod in config.active_pods
        )
        retired = tuple(PodPlan(pod, config, pod.code) for pod in config.retired_pods)
    for host in hosts:
        _check_ports(host)
    return Deployment(config, hosts, retired)


def _check_ports(host: HostPlan) -> None:
    owners: dict[tuple[int, Protocol], PortBinding] = {}
    problems: list[Problem] = []
    for binding in host.bindings():
        slot = (binding.host_port, binding.protocol)
        if not 1 <= binding.host_port <= 65535:
            problems.append(
                Problem(
                    binding.setting,
                    binding.host_port,
                    f"{binding.container} would publish port {binding.host_port}, outside 1-65535",
                    "lower the base port",
                )
            )
        elif slot in owners:
            first = owners[slot]
            problems.append(
                Problem(
                    binding.setting,
                    binding.host_port,
                    f"host port {binding.host_port}/{binding.protocol} on host {host.name} is"
                    f" taken by {first.container} ({first.setting}) and {binding.container}",
                    f"move {binding.setting} or {first.setting} to a free range",
                )
            )
        else:
            owners[slot] = binding
    if problems:
        raise ConfigError(problems)


def _reachable(bind_address: str) -> str:
    """An address to connect to: 0.0.0.0 / :: mean "every interface", so use loopback."""
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(bind_address, bind_address)


def _camel(snake: str) -> str:
    head, *rest = snake.split("_")
    return head + "".join(word.title() for word in rest)
