"""`HetznerHosts`: the servers of the multi-host layout and their readiness.

Pods of kind `hcloud` get a Hetzner Cloud server (in a spread placement group, behind one
Cloud Firewall); pods of kind `ssh` use an existing server. Either way one remote command
per host waits until the host is ready, and everything else on the host depends on it.
"""

from __future__ import annotations

from typing import Any

import pulumi
import pulumi_command as command
import pulumi_hcloud as hcloud

from unityplan_infra.components.host import RemoteHost
from unityplan_infra.config.models import HcloudHost, SshHost
from unityplan_infra.render.cloudinit import render_cloud_config
from unityplan_infra.topology.plan import WIREGUARD_PORT, Deployment, HostPlan

ANYWHERE = ["0.0.0.0/0", "::/0"]
# Waits for cloud-init (hcloud) and checks the tools the program drives (both kinds).
READINESS = (
    "set -eu\n"
    "if command -v cloud-init >/dev/null; then cloud-init status --wait >/dev/null || true; fi\n"
    "for tool in docker wg wg-quick; do\n"
    '  command -v "$tool" >/dev/null || { echo "missing on this host: $tool" >&2; exit 1; }\n'
    "done\n"
    "docker info >/dev/null\n"
)


def firewall_rules(admin_cidrs: list[str], ports: list[int]) -> list[hcloud.FirewallRuleArgs]:
    """Inbound rules: SSH from admin networks, WireGuard from anywhere, `ports` (web)."""
    rules = [
        hcloud.FirewallRuleArgs(
            direction="in", protocol="tcp", port="22", source_ips=admin_cidrs,
            description="SSH from admin networks",
        ),
        hcloud.FirewallRuleArgs(
            direction="in", protocol="udp", port=str(WIREGUARD_PORT), source_ips=ANYWHERE,
            description="WireGuard mesh",
        ),
    ]  # fmt: skip
    rules += [
        hcloud.FirewallRuleArgs(
            direction="in", protocol="tcp", port=str(port), source_ips=ANYWHERE,
            description="Traefik",
        )
        for port in ports
    ]  # fmt: skip
    return rules


class HetznerHosts(pulumi.ComponentResource):
    """Servers (created or existing), their readiness and SSH access."""

    remote_hosts: dict[str, RemoteHost]
    servers: dict[str, hcloud.Server]

    def __init__(
        self,
        deployment: Deployment,
        *,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("unityplan:infra:HetznerHosts", "servers", None, opts)
        self._deployment = deployment
        config = deployment.config
        self.servers = {}
        self.remote_hosts = {}
        hcloud_hosts = [host for host in deployment.hosts if host.is_hcloud]
        if hcloud_hosts:
            assert config.hetzner is not None  # guaranteed by StackConfig validation
            settings = config.hetzner
            child = pulumi.ResourceOptions(parent=self)
            ssh_key_id: pulumi.Input[str]
            if settings.ssh_key_name is not None:
                existing = hcloud.get_ssh_key_output(
                    name=settings.ssh_key_name, opts=pulumi.InvokeOutputOptions(parent=self)
                )
                ssh_key_id = existing.id.apply(str)
            else:
                ssh_key_id = hcloud.SshKey(
                    "admin-ssh-key", public_key=settings.ssh_public_key, opts=child
                ).id
            base = hcloud.Firewall(
                "unityplan-base", rules=firewall_rules(settings.admin_cidrs, []), opts=child
            )
            web = hcloud.Firewall(
                "unityplan-web",
                rules=firewall_rules(
                    settings.admin_cidrs, deployment.monitoring_host.public_ports()
                ),
                opts=child,
            )
            spread = hcloud.PlacementGroup(
                "unityplan-spread", type="spread", labels={"app": "unityplan"}, opts=child
            )
            for host in hcloud_hosts:
                spec = host.spec
                assert isinstance(spec, HcloudHost)
                pod = host.pods[0]
                self.servers[host.name] = hcloud.Server(
                    f"server-{host.name}",
                    # Stack in the name: two stacks in one Hetzner project must not clash.
                    name=f"unityplan-{pulumi.get_stack()}-{pod.code}",
                    server_type=spec.server_type,
                    location=spec.location,
                    image=spec.image,
                    ssh_keys=[ssh_key_id],
                    firewall_ids=[(web if host.runs_monitoring else base).id.apply(int)],
                    placement_group_id=spread.id.apply(int),
                    labels={"app": "unityplan", "pod": pod.pod.name, "territory": pod.code},
                    backups=settings.backups,
                    user_data=render_cloud_config(spec.image),
                    public_nets=[hcloud.ServerPublicNetArgs(ipv4_enabled=True, ipv6_enabled=True)],
                    # user_data and ssh_keys force replacement; both are fixed by design.
                    opts=pulumi.ResourceOptions(
                        parent=self, ignore_changes=["user_data", "ssh_keys"]
                    ),
                )
        for host in deployment.hosts:
            self.remote_hosts[host.name] = self._connect(host)
        self.register_outputs(
            {"servers": {name: server.ipv4_address for name, server in self.servers.items()}}
        )

    def _connect(self, host: HostPlan) -> RemoteHost:
        spec = host.spec
        if isinstance(spec, SshHost):
            address: pulumi.Output[str] = pulumi.Output.from_input(spec.address)
            user, port = spec.user, spec.port
        else:
            address, user, port = self.servers[host.name].ipv4_address, "root", 22
        # No credential here: the provider authenticates through the ssh-agent of whoever
        # runs `up` (SSH_AUTH_SOCK), as `ssh` and the Docker provider do. A connection is an
        # input of every remote command, and a changed input re-runs the command: a rotated
        # key must not restart every service.
        connection = command.remote.ConnectionArgs(
            host=address,
            user=user,
            port=port,
            dial_error_limit=60,  # a new server takes a minute or two to accept SSH
            per_dial_timeout=15,
        )
        ready = command.remote.Command(
            f"{host.name}-ready",
            connection=connection,
            create=READINESS,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.servers[host.name]] if host.name in self.servers else [],
            ),
        )
        return RemoteHost(host.name, address, user, port, connection, [ready])

    def outputs(self, mesh: Any) -> dict[str, Any]:
        """Stack outputs of the multi-host layout: addresses, keys, SSH commands."""
        hosts: dict[str, Any] = {}
        for host in self._deployment.hosts:
            remote = self.remote_hosts[host.name]
            peer = mesh.peers[host.name]
            hosts[host.name] = {
                "publicAddress": remote.public_address,
                "wireguardAddress": peer.address,
                "wireguardPublicKey": peer.public_key,
                "ssh": remote.ssh_command,
                "sshUser": remote.user,
                "sshPort": remote.port,
            }
        return {"hosts": hosts}
