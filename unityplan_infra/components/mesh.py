"""`MeshNetwork`: what connects the pods, and the secrets they share.

Single-host: the Docker networks `unityplan-mesh-network` (cross-pod: NATS, IPFS, Matrix,
scraping) and `unityplan-global-net` (dev tools and monitoring).
Multi-host: the WireGuard full mesh between the hosts (one `WireGuardPeer` each), plus
`unityplan-global-net` on the host that runs monitoring.
"""

from __future__ import annotations

from collections.abc import Mapping

import pulumi
import pulumi_docker as docker

from unityplan_infra.components.host import HostAccess, RemoteHost
from unityplan_infra.components.secrets import password, random_bytes, secret_hex
from unityplan_infra.components.wireguard import WireGuardKey, WireGuardPeer
from unityplan_infra.topology.plan import GLOBAL_NETWORK, MESH_NETWORK, Deployment


class MeshSecrets:
    """Secrets shared by every pod of the stack."""

    def __init__(self, parent: pulumi.Resource) -> None:
        self.nats_route_password = password("nats-route-password", parent)
        self.nats_client_password = password("nats-client-password", parent)
        # The system account's user: only it may remove a retired server from JetStream.
        self.nats_system_password = password("nats-system-password", parent)
        self.ipfs_swarm_key_hex = secret_hex(random_bytes("ipfs-swarm-key", parent))


class MeshNetwork(pulumi.ComponentResource):
    """The cross-pod network of a stack and the secrets its members share."""

    secrets: MeshSecrets
    mesh_network: docker.Network | None
    """`unityplan-mesh-network` (single-host; multi-host pods meet over WireGuard)."""
    global_network: docker.Network
    """`unityplan-global-net` on the monitoring host."""
    peers: dict[str, WireGuardPeer]
    """WireGuard peers by host name (multi-host)."""

    def __init__(
        self,
        deployment: Deployment,
        *,
        monitoring_host: HostAccess,
        remote_hosts: Mapping[str, RemoteHost] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("unityplan:infra:MeshNetwork", "mesh", None, opts)
        self.secrets = MeshSecrets(self)
        self.peers = {}
        if remote_hosts is not None:
            keys = {host.name: WireGuardKey(host, self) for host in deployment.hosts}
            endpoints = {name: remote.public_address for name, remote in remote_hosts.items()}
            for host in deployment.hosts:
                remote = remote_hosts[host.name]
                self.peers[host.name] = WireGuardPeer(
                    deployment,
                    host,
                    keys=keys,
                    endpoints=endpoints,
                    connection=remote.connection,
                    ready=remote.ready,
                    opts=pulumi.ResourceOptions(parent=self),
                )
        network_opts = pulumi.ResourceOptions(
            parent=self,
            provider=monitoring_host.docker_provider,
            depends_on=[*monitoring_host.ready, *self.peers.values()],
            # Docker refuses a second network of the same name: the old one goes first
            # (its containers, attached by ID, are replaced with it).
            delete_before_replace=True,
        )
        self.mesh_network = None
        if remote_hosts is None:
            self.mesh_network = docker.Network(
                MESH_NETWORK,
                name=MESH_NETWORK,
                ipam_configs=[docker.NetworkIpamConfigArgs(subnet=deployment.config.mesh_subnet)],
                labels=[docker.NetworkLabelArgs(label="unityplan.role", value="mesh")],
                opts=network_opts,
            )
        self.global_network = docker.Network(
            GLOBAL_NETWORK,
            name=GLOBAL_NETWORK,
            labels=[docker.NetworkLabelArgs(label="unityplan.role", value="global")],
            opts=network_opts,
        )
        self.register_outputs(
            {
                "meshNetwork": self.mesh_network.name if self.mesh_network else None,
                "globalNetwork": self.global_network.name,
                "wireguard": {
                    name: {"publicKey": peer.public_key, "address": peer.address}
                    for name, peer in self.peers.items()
                },
            }
        )
