"""Mock tests of the nordic stack: three Hetzner servers in hel1, one pod each, a WireGuard
full mesh (10.0.<slot>.1) between them, monitoring on dk.

The program runs under Pulumi mocks (`tests.support.mocks`), which also record the
dependencies each resource declares, so ordering (readiness first, tunnel before the
services that listen on it) is checked on the same graph the engine would get.
"""

from __future__ import annotations

import copy
import hashlib
import ipaddress
import json
import re
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.support.mocks import Graph, Resource, is_secret, run_program, unwrap
from tests.support.stackfile import SSH_HOST_KEY, as_pulumi_config, stack_values
from unityplan_infra.crypto.keys import wireguard_public_key
from unityplan_infra.render.cloudinit import HostKey, render_cloud_config

pytestmark = pytest.mark.timeout(120)

STACK = "nordic"
NS = "unityplan-infra"
SLOTS = {"dk": 1, "no": 2, "se": 3}
POD_NAMES = {"dk": "denmark", "no": "norway", "se": "sweden"}
MONITORING_HOST = "dk"
WG_PORT = 51820
NATS_CLUSTER_BASE = 6222

SERVER = "hcloud:index/server:Server"
FIREWALL = "hcloud:index/firewall:Firewall"
PLACEMENT_GROUP = "hcloud:index/placementGroup:PlacementGroup"
DOCKER_PROVIDER = "pulumi:providers:docker"
CONTAINER = "docker:index/container:Container"
REMOTE_COMMAND = "command:remote:Command"

WORLD = {"0.0.0.0/0", "::/0"}
ALL_INTERFACES = {"0.0.0.0", "::", ""}
# The only ports open to any source: WireGuard everywhere, Traefik's web entry points on the
# firewall of the monitoring host.
WORLD_OPEN = {
    "unityplan-base": {("udp", str(WG_PORT))},
    "unityplan-web": {("udp", str(WG_PORT)), ("tcp", "80"), ("tcp", "443")},
}
POD_CONTAINER_KINDS = (
    "service-postgres", "service-redis", "service-nats", "service-ipfs", "service-matrix",
    "monitoring-postgres-exporter", "monitoring-redis-exporter", "monitoring-nats-exporter",
)  # fmt: skip
PER_HOST_CONTAINERS = (
    "monitoring-node-exporter", "monitoring-cadvisor", "monitoring-wireguard-exporter"
)  # fmt: skip
# Dev tools are off by default in multi-host (test_security.py covers turning them on).
MONITORING_CONTAINERS = (
    "monitoring-prometheus", "monitoring-grafana", "monitoring-jaeger", "reverse-proxy-traefik",
    "monitoring-alertmanager",
)  # fmt: skip
REPLACED_WHEN_A_POD_IS_ADDED: set[tuple[str, str]] = set()

FINLAND = {
    "code": "fi",
    "name": "finland",
    "slot": 4,
    "host": {"kind": "hcloud", "serverType": "cx23", "location": "hel1"},
}


# --- running the program ------------------------------------------------------------------


def nordic_values() -> dict[str, Any]:
    return stack_values(STACK)


def with_fourth_pod(values: dict[str, Any]) -> dict[str, Any]:
    changed = copy.deepcopy(values)
    changed[f"{NS}:pods"] = [*changed[f"{NS}:pods"], FINLAND]
    return changed


@pytest.fixture(scope="module")
def nordic() -> Graph:
    return run_program(as_pulumi_config(nordic_values()), STACK)


@pytest.fixture(scope="module")
def nordic4() -> Graph:
    return run_program(as_pulumi_config(with_fourth_pod(nordic_values())), STACK)


# --- reading the graph --------------------------------------------------------------------


def custom(run: Graph) -> Iterator[tuple[Resource, dict[str, Any]]]:
    """Custom resources with their inputs (secrets unwrapped)."""
    for resource in run.resources:
        if resource.custom:
            yield resource, unwrap(resource.inputs)


def server_ips(run: Graph) -> dict[str, str]:
    """Public IPv4 of each host's server (assigned by the mocks)."""
    return {r.name.removeprefix("server-"): r.outputs["ipv4Address"] for r in run.of_type(SERVER)}


def provider_host(resource: Resource) -> str | None:
    """The host whose Docker provider `resource` uses (None: a default provider)."""
    match = re.search(r"::host-([a-z]+)-docker$", resource.provider_urn or "")
    return match.group(1) if match else None


def command_host(run: Graph, inputs: dict[str, Any]) -> str:
    """The host a remote command connects to, by its connection address."""
    by_ip = {ip: code for code, ip in server_ips(run).items()}
    return by_ip[inputs["connection"]["host"]]


def containers_by_host(run: Graph) -> dict[tuple[str | None, str], dict[str, Any]]:
    """(host, container name) -> plain inputs. Keyed by host: names repeat across hosts."""
    found: dict[tuple[str | None, str], dict[str, Any]] = {}
    for resource, inputs in custom(run):
        if resource.type == CONTAINER:
            key = (provider_host(resource), inputs["name"])
            assert key not in found, f"two containers {key}"
            found[key] = inputs
    return found


def vpn_address(slot: int) -> str:
    return f"10.0.{slot}.1"


def parse_wg_conf(text: str) -> list[tuple[str, dict[str, str]]]:
    """wg-quick config -> [(section, {key: value})], repeated [Peer] sections kept apart."""
    sections: list[tuple[str, dict[str, str]]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[(\w+)\]", line)
        if header:
            sections.append((header.group(1), {}))
            continue
        key, separator, value = line.partition("=")
        assert separator and sections, f"not a wg-quick line: {raw!r}"
        items = sections[-1][1]
        assert key.strip() not in items, f"{key.strip()} twice in one section"
        items[key.strip()] = value.strip()
    return sections


def wg_confs(run: Graph) -> dict[str, str]:
    """wg0.conf of each host: the stdin of its `wg-<host>-apply` command."""
    return {
        r.name.removeprefix("wg-").removesuffix("-apply"): unwrap(r.inputs["stdin"])
        for r in run.of_type(REMOTE_COMMAND)
        if re.fullmatch(r"wg-[a-z]+-apply", r.name)
    }


def wg_interfaces_and_peers(
    run: Graph,
) -> tuple[dict[str, dict[str, str]], dict[str, list[dict[str, str]]]]:
    interfaces: dict[str, dict[str, str]] = {}
    peers: dict[str, list[dict[str, str]]] = {}
    for host, text in wg_confs(run).items():
        sections = parse_wg_conf(text)
        (interface,) = [items for name, items in sections if name == "Interface"]
        assert {name for name, _ in sections} <= {"Interface", "Peer"}
        interfaces[host] = interface
        peers[host] = [items for name, items in sections if name == "Peer"]
    return interfaces, peers


def check_peer(
    peer: dict[str, str], other: str, slot: int, ips: dict[str, str], private: dict[str, str]
) -> None:
    assert set(peer) == {"PublicKey", "Endpoint", "AllowedIPs", "PersistentKeepalive"}
    assert peer["PublicKey"] == wireguard_public_key(private[other])
    assert peer["Endpoint"] == f"{ips[other]}:{WG_PORT}"
    assert peer["AllowedIPs"] == f"10.0.{slot}.0/24"
    assert peer["PersistentKeepalive"] == "25"


# --- servers ------------------------------------------------------------------------------


@pytest.mark.parametrize("backups", [False, True])
def test_three_servers_in_hel1_spread_with_cloud_init(backups: bool) -> None:
    values = nordic_values()
    values[f"{NS}:hetzner"]["backups"] = backups
    run = run_program(as_pulumi_config(values), STACK)
    pods = {pod["code"]: pod for pod in values[f"{NS}:pods"]}
    (group,) = run.of_type(PLACEMENT_GROUP)
    assert unwrap(group.inputs)["type"] == "spread"
    (ssh_key,) = run.of_type("hcloud:index/sshKey:SshKey")

    servers = {r.name: unwrap(r.inputs) for r in run.of_type(SERVER)}
    assert set(servers) == {f"server-{code}" for code in SLOTS}
    for code, pod in pods.items():
        server = servers[f"server-{code}"]
        assert server["name"] == f"unityplan-{STACK}-{code}"
        assert server["labels"] == {"app": "unityplan", "pod": POD_NAMES[code], "territory": code}
        assert server["location"] == "hel1"
        assert server["serverType"] == pod["host"]["serverType"]
        assert server["image"] == "docker-ce"  # the default of HcloudHost
        assert server["backups"] is backups
        assert int(server["placementGroupId"]) == int(group.id)
        assert server["sshKeys"] == [ssh_key.id]
        key = run.named(f"server-{code}-ssh-host-key").outputs
        host_key = HostKey(key["privateKeyOpenssh"], key["publicKeyOpenssh"])
        assert server["userData"] == render_cloud_config(host_key)
        (raw,) = [r for r in run.of_type(SERVER) if r.name == f"server-{code}"]
        assert is_secret(raw.inputs["userData"])  # it holds the host's private key
        # Pinned for every SSH connection: the remote commands' and the Docker provider's.
        public = " ".join(key["publicKeyOpenssh"].split()[:2])
        assert run.exports["hosts"][code]["sshHostKey"] == public
        for command in run.of_type("command:remote:Command"):
            if command.name.startswith(f"{code}-") or command.name.startswith(f"wg-{code}-"):
                assert unwrap(command.inputs["connection"])["hostKey"] == public, command.name
        ssh_opts = unwrap(run.named(f"host-{code}-docker").inputs)["sshOpts"]
        assert f"KnownHostsCommand=/bin/echo %H {public}" in ssh_opts
        assert "StrictHostKeyChecking=yes" in ssh_opts
        assert not any("accept-new" in option for option in ssh_opts)
        # The pod's data is on this disk: protected in Pulumi and at Hetzner.
        assert raw.protect and raw.delete_before_replace
        assert server["deleteProtection"] is True and server["rebuildProtection"] is True
        assert server["keepDisk"] is True and server["shutdownBeforeDeletion"] is True
        assert set(raw.ignore_changes) == {"userData", "sshKeys", "serverType"}
        assert server["publicNets"] == [{"ipv4Enabled": True, "ipv6Enabled": True}]


# --- exposure -----------------------------------------------------------------------------


def test_firewalls_open_only_wireguard_web_and_admin_ssh(nordic: Graph) -> None:
    admin_cidrs = nordic_values()[f"{NS}:hetzner"]["adminCidrs"]
    firewalls = {r.name: r for r in nordic.of_type(FIREWALL)}
    assert set(firewalls) == set(WORLD_OPEN)
    for name, firewall in firewalls.items():
        rules = unwrap(firewall.inputs)["rules"]
        world_open: set[tuple[str, str]] = set()
        for rule in rules:
            assert rule["direction"] == "in", rule
            sources = rule["sourceIps"]
            if rule["port"] == "22" and rule["protocol"] == "tcp":
                assert sources == admin_cidrs, f"{name}: SSH from {sources}"
                continue
            # Everything else is open to the world; nothing is open to "some" networks.
            assert set(sources) == WORLD, f"{name}: unexpected rule {rule}"
            assert ipaddress.ip_network(sources[0]).prefixlen == 0
            world_open.add((rule["protocol"], rule["port"]))
        assert world_open == WORLD_OPEN[name], name
        assert sum(rule["port"] == "22" for rule in rules) == 1, f"{name}: one SSH rule"

    ids = {name: int(r.id) for name, r in firewalls.items()}
    for resource, inputs in custom(nordic):
        if resource.type == SERVER:
            code = resource.name.removeprefix("server-")
            expected = "unityplan-web" if code == MONITORING_HOST else "unityplan-base"
            assert [int(i) for i in inputs["firewallIds"]] == [ids[expected]], code


# What a peer host needs, and so all that listens on a WireGuard address: NATS clients and
# routes (ports per slot, checked apart), the IPFS swarm, Matrix federation, and the
# exporters Prometheus scrapes. (node-exporter and the WireGuard exporter publish nothing:
# they are in the host's network namespace and listen on the WireGuard address themselves.)
PEER_PORTS = {
    "service-ipfs": {4001}, "service-matrix": {8448},
    "monitoring-postgres-exporter": {9187}, "monitoring-redis-exporter": {9121},
    "monitoring-nats-exporter": {7777},
    "monitoring-cadvisor": {8080}, "monitoring-jaeger": {4317, 4318},  # OTLP traces
}  # fmt: skip


def test_admin_ports_listen_on_loopback_and_only_traefik_web_on_all(nordic: Graph) -> None:
    public: list[tuple[str | None, str, int]] = []
    on_vpn: dict[str, set[int]] = {}
    loopback = 0
    for (host, name), inputs in containers_by_host(nordic).items():
        assert host in SLOTS, f"{name} is not on a host's provider"
        for port in inputs.get("ports") or []:
            if port["ip"] in ALL_INTERFACES:
                public.append((host, name, int(port["external"])))
                assert int(port["internal"]) == int(port["external"])
            elif port["ip"] == "127.0.0.1":
                loopback += 1
            else:
                assert port["ip"] == vpn_address(SLOTS[host]), (host, name, port)
                on_vpn.setdefault(name.removesuffix(f"-{host}"), set()).add(int(port["internal"]))
    assert sorted(public, key=str) == [
        (MONITORING_HOST, "reverse-proxy-traefik", 443),
        (MONITORING_HOST, "reverse-proxy-traefik", 80),
    ]
    nats_ports = {int(p) for p in on_vpn.pop("service-nats")}
    assert len(nats_ports) == 2 * len(SLOTS) and not nats_ports & {8222, 8223, 8224}  # monitor
    assert on_vpn == PEER_PORTS
    # PostgreSQL, Redis, NATS monitoring, kubo's API and gateway, Synapse's client API per pod;
    # Prometheus, Grafana, Jaeger, Alertmanager and Traefik's dashboard on the monitoring host.
    assert loopback == 6 * len(SLOTS) + 5


# --- Docker providers ---------------------------------------------------------------------


def test_one_docker_provider_per_host_reached_over_ssh(nordic: Graph) -> None:
    ips = server_ips(nordic)
    providers = {r.name: unwrap(r.inputs) for r in nordic.of_type(DOCKER_PROVIDER)}
    assert set(providers) == {f"host-{code}-docker" for code in SLOTS}
    for code in SLOTS:
        assert providers[f"host-{code}-docker"]["host"] == f"ssh://root@{ips[code]}:22"
        assert "ControlMaster=auto" in providers[f"host-{code}-docker"]["sshOpts"]
    # No docker resource falls back to a default provider (the engine of the deploying machine).
    for resource in nordic.resources:
        if resource.type.startswith("docker:"):
            assert provider_host(resource) in SLOTS, resource.urn


def test_containers_run_on_their_own_hosts(nordic: Graph) -> None:
    containers = containers_by_host(nordic)
    hosts_of: dict[str, set[str | None]] = {}
    for host, name in containers:
        hosts_of.setdefault(name, set()).add(host)
    for code in SLOTS:
        for kind in POD_CONTAINER_KINDS:
            assert hosts_of.pop(f"{kind}-{code}") == {code}, f"{kind}-{code}"
    for name in MONITORING_CONTAINERS:
        assert hosts_of.pop(name) == {MONITORING_HOST}, name
    for name in PER_HOST_CONTAINERS:
        assert hosts_of.pop(name) == set(SLOTS), name
    assert hosts_of == {}, "containers not accounted for"


def test_resource_urns_are_unique(nordic: Graph) -> None:
    # The engine refuses a program that registers one URN twice ("Duplicate resource URN").
    # A URN holds the parent's type but not its name, so children of same-typed components
    # need names that differ per component.
    counts = Counter(r.urn for r in nordic.resources)
    assert [urn for urn, count in counts.items() if count > 1] == []


# --- WireGuard ----------------------------------------------------------------------------


def test_wireguard_configs_form_a_full_mesh(nordic: Graph) -> None:
    ips = server_ips(nordic)
    interfaces, peers = wg_interfaces_and_peers(nordic)
    assert set(interfaces) == set(SLOTS)
    private = {host: interface["PrivateKey"] for host, interface in interfaces.items()}
    assert len(set(private.values())) == len(SLOTS)
    exported = nordic.exports["hosts"]
    for host, slot in SLOTS.items():
        interface = interfaces[host]
        assert set(interface) == {"Address", "ListenPort", "PrivateKey"}
        assert interface["Address"] == f"{vpn_address(slot)}/24"
        assert interface["ListenPort"] == str(WG_PORT)
        assert len(peers[host]) == len(SLOTS) - 1
        by_network = {peer["AllowedIPs"]: peer for peer in peers[host]}
        assert len(by_network) == len(peers[host]), f"{host}: two peers on one subnet"
        for other, other_slot in SLOTS.items():
            if other != host:
                check_peer(by_network[f"10.0.{other_slot}.0/24"], other, other_slot, ips, private)
        assert exported[host]["wireguardPublicKey"] == wireguard_public_key(private[host])
        assert exported[host]["wireguardAddress"] == vpn_address(slot)
        assert exported[host]["publicAddress"] == ips[host]


def test_nats_routes_use_vpn_addresses(nordic: Graph) -> None:
    containers = containers_by_host(nordic)
    for code, slot in SLOTS.items():
        command = nordic.named(f"{code}-nats-config")
        assert is_secret(command.inputs["stdin"])  # it holds the passwords
        config = json.loads(unwrap(command.inputs["stdin"]))
        cluster = config["cluster"]
        own_port = NATS_CLUSTER_BASE + slot - 1
        assert cluster["port"] == own_port
        assert cluster["advertise"] == f"{vpn_address(slot)}:{own_port}"
        routes = {(url.hostname, url.port) for url in map(urlsplit, cluster["routes"])}
        assert len(routes) == len(cluster["routes"])
        assert routes == {
            (vpn_address(other_slot), NATS_CLUSTER_BASE + other_slot - 1)
            for other, other_slot in SLOTS.items()
            if other != code
        }
        # ... and each route's target publishes that port on that address.
        nats = containers[(code, f"service-nats-{code}")]
        assert {
            "internal": own_port,
            "external": own_port,
            "ip": vpn_address(slot),
            "protocol": "tcp",
        } in [{**p, "internal": int(p["internal"]), "external": int(p["external"])}
              for p in nats["ports"]]  # fmt: skip


# --- ordering -----------------------------------------------------------------------------


def test_host_readiness_precedes_everything_on_the_host(nordic: Graph) -> None:
    ready = {code: nordic.named(f"{code}-ready").urn for code in SLOTS}
    checked: Counter[str] = Counter()
    for resource, inputs in custom(nordic):
        if resource.type == REMOTE_COMMAND:
            host = command_host(nordic, inputs)
            if resource.name == f"{host}-ready":
                continue
        elif resource.type == DOCKER_PROVIDER:
            host = resource.name.removeprefix("host-").removesuffix("-docker")
        elif resource.type.startswith("docker:"):
            found = provider_host(resource)
            assert found is not None, resource.urn
            host = found
        else:
            continue
        assert ready[host] in nordic.ancestors(resource), (
            f"{resource.name} ({resource.type}) does not wait for {host}-ready"
        )
        checked[host] += 1
    # Every host carries commands, a provider and docker resources.
    assert set(checked) == set(SLOTS)
    assert min(checked.values()) >= 20


def test_wireguard_applied_before_containers_listening_on_it(nordic: Graph) -> None:
    apply = {code: nordic.named(f"wg-{code}-apply").urn for code in SLOTS}
    checked = 0
    for resource, inputs in custom(nordic):
        if resource.type != CONTAINER:
            continue
        host = provider_host(resource)
        assert host is not None
        ports = inputs.get("ports") or []
        in_host_network = inputs.get("networkMode") == "host" and any(
            vpn_address(SLOTS[host]) in argument for argument in inputs.get("command") or []
        )
        if in_host_network or any(port.get("ip") == vpn_address(SLOTS[host]) for port in ports):
            assert apply[host] in nordic.ancestors(resource), (
                f"{inputs['name']} on {host} may start before wg0 is up"
            )
            checked += 1
    # Per host: NATS, kubo, Synapse, 3 pod exporters, cAdvisor, node-exporter and the
    # WireGuard exporter; + Jaeger's OTLP on the monitoring host.
    assert checked == 9 * len(SLOTS) + 1


# --- secrets ------------------------------------------------------------------------------


def _plain_strings(value: Any) -> Iterator[str]:
    """Every string of `value` outside secret wrappers."""
    if is_secret(value):
        return
    if isinstance(value, dict):
        for key, item in value.items():
            yield str(key)
            yield from _plain_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _plain_strings(item)
    elif isinstance(value, str):
        yield value


def test_wireguard_private_keys_stay_secret(nordic: Graph) -> None:
    interfaces, _ = wg_interfaces_and_peers(nordic)
    leaks = {interface["PrivateKey"] for interface in interfaces.values()}
    for code in SLOTS:
        material = nordic.named(f"wg-{code}-private-key")
        leaks |= {material.outputs["base64"], material.outputs["hex"]}
        command = nordic.named(f"wg-{code}-apply")
        assert is_secret(command.inputs["stdin"]), f"wg0.conf of {code} is not secret"

    exports = json.dumps(nordic.exports)
    assert [key for key in leaks if key in exports] == []
    for resource in nordic.resources:
        for text in _plain_strings(resource.inputs):
            assert not any(key in text for key in leaks), (
                f"key material in plain input of {resource.name}"
            )
    for name in ("grafanaAdminPassword", "natsClientPassword", "pods"):
        assert nordic.secret_exports[name], f"export {name} is not secret"


# --- adding a pod -------------------------------------------------------------------------


def test_fourth_pod_leaves_existing_containers_alone(nordic: Graph, nordic4: Graph) -> None:
    before, after = containers_by_host(nordic), containers_by_host(nordic4)
    changed = {key for key, inputs in before.items() if after.get(key) != inputs}
    assert changed <= REPLACED_WHEN_A_POD_IS_ADDED, sorted(changed, key=str)
    assert {key for key in after if key[0] == "fi"} == {
        ("fi", f"{kind}-fi") for kind in POD_CONTAINER_KINDS
    } | {("fi", name) for name in PER_HOST_CONTAINERS}
    # Servers are not replaced either.
    servers = {r.name: unwrap(r.inputs) for r in nordic.of_type(SERVER)}
    servers4 = {r.name: unwrap(r.inputs) for r in nordic4.of_type(SERVER)}
    assert {name: servers4[name] for name in servers} == servers


def test_fourth_pod_joins_the_mesh(nordic: Graph, nordic4: Graph) -> None:
    slots = {**SLOTS, "fi": 4}
    ips = server_ips(nordic4)
    interfaces3, peers3 = wg_interfaces_and_peers(nordic)
    interfaces4, peers4 = wg_interfaces_and_peers(nordic4)
    private = {host: interface["PrivateKey"] for host, interface in interfaces4.items()}
    assert set(interfaces4) == set(slots)
    for host in SLOTS:
        assert interfaces4[host] == interfaces3[host]  # same address and key: no rekeying
        assert len(peers4[host]) == len(peers3[host]) + 1
        (new,) = [peer for peer in peers4[host] if peer["AllowedIPs"] == "10.0.4.0/24"]
        check_peer(new, "fi", 4, ips, private)
    assert len(peers4["fi"]) == len(SLOTS)
    for peer in peers4["fi"]:
        (other,) = [h for h, s in SLOTS.items() if peer["AllowedIPs"] == f"10.0.{s}.0/24"]
        check_peer(peer, other, SLOTS[other], ips, private)


def test_ssh_hosts_keep_their_port_and_bracket_ipv6() -> None:
    values = copy.deepcopy(stack_values("nordic"))
    values["unityplan-infra:pods"][2]["host"] = {
        "kind": "ssh",
        "address": "2001:db8::10",
        "port": 2222,
        "hostKey": SSH_HOST_KEY,
    }
    graph = run_program(as_pulumi_config(values), "nordic")
    provider = unwrap(graph.named("host-se-docker").inputs)
    assert provider["host"] == "ssh://root@[2001:db8::10]:2222"
    assert graph.exports["hosts"]["se"]["ssh"] == "ssh -p 2222 root@2001:db8::10"
    assert unwrap(graph.named("se-ready").inputs["connection"])["port"] == 2222
    assert "server-se" not in {r.name for r in graph.resources}


def test_an_existing_hetzner_key_is_used_by_name_not_uploaded_again() -> None:
    values = copy.deepcopy(stack_values("nordic"))
    hetzner = values["unityplan-infra:hetzner"]
    del hetzner["sshPublicKey"]
    hetzner["sshKeyName"] = "admin@laptop"
    graph = run_program(as_pulumi_config(values), "nordic")
    assert graph.of_type("hcloud:index/sshKey:SshKey") == []
    expected = str(int.from_bytes(hashlib.sha256(b"admin@laptop").digest()[:3], "big"))
    for server in graph.of_type("hcloud:index/server:Server"):
        assert unwrap(server.inputs["sshKeys"]) == [expected]
        assert server.inputs["name"].startswith("unityplan-nordic-")
