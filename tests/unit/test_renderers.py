"""Renderers other than Prometheus/PostgreSQL (which have their own modules)."""

from __future__ import annotations

import base64
import json
from html.parser import HTMLParser

from tests.support.deployments import dev_deployment, nordic_deployment
from tests.support.stackfile import yaml12
from unityplan_infra.crypto.keys import (
    ipfs_swarm_key,
    synapse_signing_key,
    synapse_verify_key,
    wireguard_private_key,
    wireguard_public_key,
)
from unityplan_infra.nats.streams import NANOS_PER_DAY, stream_configs
from unityplan_infra.render.dashboard import render_dashboard
from unityplan_infra.render.ipfs import render_peer_list, render_peers_json
from unityplan_infra.render.nats import nats_config, route_urls
from unityplan_infra.render.synapse import (
    SynapseSecrets,
    render_homeserver_config,
    render_hosts_file,
)
from unityplan_infra.render.traefik import render_dynamic_config
from unityplan_infra.render.wireguard import PeerKeys, render_wg_conf

SECRETS = SynapseSecrets("unityplan", "db-pw", "reg-secret", "mac-secret", "form-secret")


def test_nats_config_of_a_pod() -> None:
    deployment = dev_deployment()
    config = nats_config(deployment, deployment.pod("se"), route_password="r", client_password="c",
                         system_password="s")  # fmt: skip
    assert config["server_name"] == "service-nats-se"
    assert (config["port"], config["http_port"], config["cluster"]["port"]) == (4224, 8224, 6224)
    assert config["server_tags"] == ["territory:se", "pod:sweden"]
    assert config["cluster"]["advertise"] == "service-nats-se:6224"
    # fsync before every acknowledgement: a crashed host loses no acknowledged message
    assert config["jetstream"] == {"store_dir": "/data/jetstream", "sync_interval": "always"}
    # Clients in the global account; one user in the system account (retiring a server).
    assert config["authorization"] == {"users": [{"user": "unityplan", "password": "c"}]}
    assert config["accounts"] == {
        "$SYS": {"users": [{"user": "unityplan-system", "password": "s"}]}
    }
    assert "system_account" not in config  # $SYS is nats-server's default


def test_route_passwords_are_url_encoded() -> None:
    deployment = dev_deployment()
    (first, _) = route_urls(deployment, deployment.pod("se"), "a@b/c")
    assert first == "nats://route:a%40b%2Fc@service-nats-dk:6222"


def test_streams_follow_the_guide() -> None:
    streams = {s["name"]: s for s in stream_configs(dev_deployment())}
    assert list(streams) == ["GLOBAL_EVENTS", "TERRITORY_DK", "TERRITORY_NO", "TERRITORY_SE"]
    global_events = streams["GLOBAL_EVENTS"]
    assert global_events["subjects"] == ["global.*"]
    assert (global_events["num_replicas"], global_events["storage"]) == (3, "file")
    assert global_events["max_age"] == 7 * NANOS_PER_DAY
    norway = streams["TERRITORY_NO"]
    assert norway["subjects"] == ["territory.no.*"]
    assert norway["num_replicas"] == 1 and norway["max_age"] == 30 * NANOS_PER_DAY
    assert norway["placement"] == {"tags": ["territory:no"]}


def test_homeserver_config() -> None:
    deployment = dev_deployment()
    config = yaml12(render_homeserver_config(deployment, deployment.pod("no"), SECRETS))
    assert isinstance(config, dict)
    assert config["server_name"] == "no.unityplan.local"
    assert config["database"]["args"]["host"] == "service-postgres-no"
    assert config["database"]["args"]["database"] == "synapse"
    # Federation is limited by address (the mesh), not by a list of pods' names.
    assert "federation_domain_whitelist" not in config
    assert "172.31.240.0/20" not in config["federation_ip_range_blacklist"]
    assert "172.31.0.0/17" in config["federation_ip_range_blacklist"]  # the rest of 172.31/16
    assert config["trusted_key_servers"] == []
    assert config["ip_range_whitelist"] == ["172.31.240.0/20"]
    assert config["registration_shared_secret"] == "reg-secret"
    ports = {(listener["port"], listener["tls"]) for listener in config["listeners"]}
    assert ports == {(8008, False), (8448, True)}


def test_multi_host_synapse_resolves_peers_over_wireguard() -> None:
    deployment = nordic_deployment()
    hosts = render_hosts_file(deployment, deployment.pod("dk"))
    assert "10.0.2.1\tno.unityplan.local" in hosts.splitlines()
    assert "10.0.3.1\tse.unityplan.local" in hosts.splitlines()
    assert "dk.unityplan.local" not in hosts


def test_ipfs_peering() -> None:
    deployment = dev_deployment()
    ids = {"dk": "12D3KooWdk", "no": "12D3KooWno", "se": "12D3KooWse"}
    peers = json.loads(render_peers_json(deployment, deployment.pod("dk"), ids))
    assert peers == [
        {"ID": "12D3KooWno", "Addrs": ["/dns4/service-ipfs-no/tcp/4001"]},
        {"ID": "12D3KooWse", "Addrs": ["/dns4/service-ipfs-se/tcp/4001"]},
    ]
    nordic = nordic_deployment()
    assert render_peer_list(nordic, nordic.pod("se"), ids).splitlines() == [
        "/ip4/10.0.1.1/tcp/4001/p2p/12D3KooWdk", "/ip4/10.0.2.1/tcp/4002/p2p/12D3KooWno"]  # fmt: skip


def test_wireguard_keys_match_wg_semantics() -> None:
    # RFC 7748 test vector (Alice): private scalar -> public key.
    private = base64.b64encode(
        bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    ).decode()
    expected = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert base64.b64decode(wireguard_public_key(private)) == expected
    clamped = base64.b64decode(wireguard_private_key(base64.b64encode(b"\xff" * 32).decode()))
    assert clamped[0] & 7 == 0 and clamped[31] & 0x80 == 0 and clamped[31] & 0x40


def test_wg_conf_lists_every_other_host() -> None:
    deployment = nordic_deployment()
    keys = {name: PeerKeys(f"pub-{name}", f"203.0.113.{i}") for i, name in
            enumerate(["dk", "no", "se"], start=1)}  # fmt: skip
    text = render_wg_conf(deployment, deployment.hosts_by_name["no"], "priv-no", keys)
    assert "Address = 10.0.2.1/24" in text and "ListenPort = 51820" in text
    assert text.count("[Peer]") == 2 and "pub-no" not in text
    assert "Endpoint = 203.0.113.3:51820" in text and "AllowedIPs = 10.0.3.0/24" in text


def test_synapse_signing_key_format() -> None:
    seed = base64.b64encode(bytes(range(32))).decode()
    algorithm, key_id, encoded = synapse_signing_key(seed).split()
    assert algorithm == "ed25519" and key_id.startswith("a_") and len(key_id) == 6
    assert base64.b64decode(encoded + "=") == bytes(range(32))
    assert len(base64.b64decode(synapse_verify_key(seed) + "=")) == 32


def test_ipfs_swarm_key_format() -> None:
    assert ipfs_swarm_key("AB" * 32).splitlines() == [
        "/key/swarm/psk/1.0.0/",
        "/base16/",
        "ab" * 32,
    ]


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.links.extend(value or "" for name, value in attrs if name == "href")


def test_dashboard_links_every_service_of_every_pod() -> None:
    deployment = dev_deployment()
    parser = _Links()
    parser.feed(render_dashboard(deployment))
    expected = {url for pod in deployment.pods for url in pod.endpoints().values()}
    expected |= set(deployment.monitoring_host.endpoints().values())
    assert set(parser.links) == expected
    assert "http://127.0.0.1:8181" in parser.links  # Norway's IPFS gateway


def test_traefik_routes_only_authenticated_ui_in_multi_host() -> None:
    dev = yaml12(render_dynamic_config(dev_deployment()))
    nordic = yaml12(render_dynamic_config(nordic_deployment()))
    assert isinstance(dev, dict) and isinstance(nordic, dict)
    assert set(dev["http"]["routers"]) == {"grafana", "prometheus", "jaeger", "dashboard"}
    assert set(nordic["http"]["routers"]) == {"grafana"}
    assert dev["http"]["routers"]["grafana"]["rule"] == "Host(`grafana.localhost`)"
