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
import pulumi_tls as tls

from unityplan_infra.components.host import RemoteHost
from unityplan_infra.config.models import HcloudHost, SshHost
from unityplan_infra.render.cloudinit import HostKey, render_cloud_config
from unityplan_infra.render.firewall import APPLY_SCRIPT as FIREWALL_SCRIPT
from unityplan_infra.render.firewall import docker_user_rules
from unityplan_infra.render.ssh import (
    SSHD_DROP_IN_PATH,
    host_key_line,
    sshd_drop_in,
    sshd_effective_check,
)
from unityplan_infra.topology.plan import WIREGUARD_PORT, Deployment, HostPlan

ANYWHERE = ["0.0.0.0/0", "::/0"]
# Waits for cloud-init (hcloud), checks the tools the program drives, and gives sshd the
# settings a first deploy needs (both kinds; cloud-init already did it on hcloud). The drop-in
# arrives on stdin; a config sshd refuses is put back as it was, so a bad one cannot lock
# anyone out at the next restart; then sshd's effective settings are checked.
READINESS = f"""set -eu
if command -v cloud-init >/dev/null; then cloud-init status --wait >/dev/null || true; fi
for tool in docker wg wg-quick iptables-restore; do
  command -v "$tool" >/dev/null || {{ echo "missing on this host: $tool" >&2; exit 1; }}
done
docker info >/dev/null
drop_in={SSHD_DROP_IN_PATH}
install -d -m 0755 "$(dirname "$drop_in")"
cat > "$drop_in.new"
if ! cmp -s "$drop_in.new" "$drop_in"; then
  if [ -e "$drop_in" ]; then cp -p "$drop_in" "$drop_in.old"; fi
  mv -f "$drop_in.new" "$drop_in"
  if ! sshd -t; then
    if [ -e "$drop_in.old" ]; then mv -f "$drop_in.old" "$drop_in"; else rm -f "$drop_in"; fi
    echo "sshd refused the drop-in; the previous config is back" >&2
    exit 1
  fi
  rm -f "$drop_in.old"
  systemctl reload ssh 2>/dev/null || systemctl reload sshd
else
  rm -f "$drop_in.new"
fi
{sshd_effective_check()}"""


def _warn_pending_resize(host: str, actual: str, spec: HcloudHost) -> None:
    if actual and actual != spec.server_type and not spec.allow_resize:
        pulumi.log.warn(
            f"server of pod {host} is {actual}, the config says {spec.server_type}: not applied."
            " A resize powers the server off (hard) for a few minutes; to do it, set"
            " allowResize: true on that pod's host and run `up` again"
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
        self.host_keys: dict[str, pulumi.Output[str]] = {}
        # A retired pod's server stays, with its data, as long as the pod has a `host`:
        # `protect: false` lifts the protections (one `up`), removing `host` then deletes
        # the server (the next); the engine refuses to delete a protected resource.
        kept = [host for host in deployment.retired_hosts if isinstance(host.spec, HcloudHost)]
        hcloud_hosts = [host for host in (*deployment.hosts, *kept) if host.is_hcloud]
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
                self.servers[host.name] = self._server(
                    host, settings.backups, ssh_key_id, (web if host.runs_monitoring else base),
                    spread,
                )  # fmt: skip
        for host in deployment.hosts:
            self.remote_hosts[host.name] = self._connect(host)
        self.register_outputs(
            {"servers": {name: server.ipv4_address for name, server in self.servers.items()}}
        )

    def _server(
        self,
        host: HostPlan,
        backups: bool,
        ssh_key_id: pulumi.Input[str],
        firewall: hcloud.Firewall,
        spread: hcloud.PlacementGroup,
    ) -> hcloud.Server:
        spec = host.spec
        assert isinstance(spec, HcloudHost)
        pod = host.pods[0]
        # The server's SSH host key: generated here, installed by cloud-init, pinned by
        # every connection. Only its public half leaves the (encrypted) state.
        key = tls.PrivateKey(
            f"server-{host.name}-ssh-host-key",
            algorithm="ED25519",
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.host_keys[host.name] = (
            pulumi.Output.from_input(spec.host_key)
            if spec.host_key is not None  # a server from before generated keys
            else pulumi.Output.unsecret(key.public_key_openssh).apply(host_key_line)
        )
        user_data: pulumi.Output[str] = pulumi.Output.secret(
            pulumi.Output.all(key.private_key_openssh, key.public_key_openssh).apply(
                lambda pair: render_cloud_config(HostKey(pair[0], pair[1]))
            )
        )
        ignored = ["user_data", "ssh_keys"]  # fixed at creation by design (both force a new server)
        if not spec.allow_resize:
            ignored.append("server_type")
        server = hcloud.Server(
            f"server-{host.name}",
            # Stack in the name: two stacks in one Hetzner project must not clash.
            name=f"unityplan-{pulumi.get_stack()}-{pod.code}",
            server_type=spec.server_type,
            location=spec.location,
            image=spec.image,
            ssh_keys=[ssh_key_id],
            firewall_ids=[firewall.id.apply(int)],
            placement_group_id=spread.id.apply(int),
            labels={"app": "unityplan", "pod": pod.pod.name, "territory": pod.code},
            backups=backups,
            user_data=user_data,
            public_nets=[hcloud.ServerPublicNetArgs(ipv4_enabled=True, ipv6_enabled=True)],
            # The pod's data lives on this disk: neither Hetzner nor Pulumi deletes or rebuilds
            # it until the operator sets protect: false (README, "Retiring a pod").
            delete_protection=spec.protect,
            rebuild_protection=spec.protect,
            # A resize changes CPU and RAM only: a grown disk could never shrink back.
            keep_disk=True,
            shutdown_before_deletion=True,  # services stop cleanly, not by power cut
            opts=pulumi.ResourceOptions(
                parent=self,
                protect=spec.protect,
                ignore_changes=ignored,
                # Server names are unique in a Hetzner project: a replacement (after
                # protect: false) must delete the old server first.
                delete_before_replace=True,
            ),
        )
        server.server_type.apply(
            lambda actual: _warn_pending_resize(host.name, actual, spec)
        )
        return server

    def _connect(self, host: HostPlan) -> RemoteHost:
        spec = host.spec
        if isinstance(spec, SshHost):
            address: pulumi.Output[str] = pulumi.Output.from_input(spec.address)
            user, port = spec.user, spec.port
            self.host_keys[host.name] = pulumi.Output.from_input(spec.host_key)
        else:
            address, user, port = self.servers[host.name].ipv4_address, "root", 22
        # No credential here: the provider authenticates through the ssh-agent of whoever
        # runs `up` (SSH_AUTH_SOCK), as `ssh` and the Docker provider do. A connection is an
        # input of every remote command, and a changed input re-runs the command: a rotated
        # key must not restart every service.
        host_key = self.host_keys[host.name]
        connection = command.remote.ConnectionArgs(
            host=address,
            user=user,
            port=port,
            host_key=host_key,  # anything else is refused: no trust on first use
            dial_error_limit=60,  # a new server takes a minute or two to accept SSH
            per_dial_timeout=15,
        )
        ready = command.remote.Command(
            f"{host.name}-ready",
            connection=connection,
            create=READINESS,
            stdin=sshd_drop_in(),
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=[self.servers[host.name]] if host.name in self.servers else [],
            ),
        )
        # Before any container exists, published ports are closed to all but WireGuard peers.
        firewall = command.remote.Command(
            f"{host.name}-firewall",
            connection=connection,
            create=FIREWALL_SCRIPT,
            stdin=docker_user_rules(host.public_ports()),
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[ready]),
        )
        return RemoteHost(host.name, address, user, port, host_key, connection, [ready, firewall])

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
                "sshHostKey": remote.host_key,
            }
        return {"hosts": hosts}
