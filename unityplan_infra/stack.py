"""Wiring of a whole stack from its validated plan: hosts, mesh, pods, services on top.

The two layouts differ only in how hosts come to exist and how they are reached; pods,
swarm, streams, monitoring and dev tools are placed the same way on whatever hosts exist.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pulumi
import pulumi_command as command

from unityplan_infra.components.backups import PodBackups, RetiredPodBackups
from unityplan_infra.components.devtools import DevTools
from unityplan_infra.components.hetzner import HetznerHosts
from unityplan_infra.components.host import Attachment, DockerHost, HostAccess, HostExporters
from unityplan_infra.components.matrix_alerts import MatrixAlertRelay
from unityplan_infra.components.mesh import MeshNetwork
from unityplan_infra.components.monitoring import MonitoringStack
from unityplan_infra.components.pod import PodStack
from unityplan_infra.components.rollout import Rollout, previous_outputs
from unityplan_infra.components.streams import NatsStreams
from unityplan_infra.components.swarm import IpfsSwarm
from unityplan_infra.render.nats import CLIENT_USER, CLUSTER_NAME
from unityplan_infra.render.postgres import DB_OWNER, SYNAPSE_DATABASE
from unityplan_infra.render.ssh import pinned_host_key_options
from unityplan_infra.topology.plan import Deployment

REMOTE_CONFIG_ROOT = "/opt/unityplan"
# The Docker provider opens an SSH session per API connection; sharing one master
# connection keeps a first deploy under sshd's MaxStartups. Host keys are pinned
# (render/ssh.py), never learned on first use.
SSH_OPTIONS = [
    # Never prompt in the middle of `up`; authenticate with the agent's keys only, as the
    # remote commands do (a passphrase-protected ~/.ssh/id_* would otherwise prompt).
    "-o", "BatchMode=yes",
    "-o", "IdentityFile=none",
    "-o", "ControlMaster=auto",
    "-o", "ControlPath=~/.ssh/unityplan-%C",
    "-o", "ControlPersist=120",
]  # fmt: skip


CONFIG_ROOT_VARIABLE = "UNITYPLAN_CONFIG_ROOT"


def ensure_ssh_dir(home: Path | None = None) -> Path:
    """~/.ssh, created (0700) if missing: ssh makes the Docker provider's control socket
    there (SSH_OPTIONS) but never the directory, and with known_hosts files off nothing
    else creates it (a fresh account or CI runner). Measured in test_ssh_pinning.py."""
    directory = (home or Path.home()) / ".ssh"
    if directory.parent.is_dir():  # a home that does not exist is not ours to make
        directory.mkdir(mode=0o700, exist_ok=True)
    return directory


def default_config_root(stack: str) -> str:
    """Where the single-host layout keeps config files: the data dir of whoever runs `up`."""
    return str(Path.home() / ".local" / "share" / "unityplan-infra" / stack)


def pinned_config_root(stack: str) -> pulumi.Output[str]:
    """`default_config_root` as it was at the first `up`, kept in the stack's state.

    Scripts and bind mounts contain this path. Were it computed on every run, another user
    (another home directory) running `up` would rewrite every file and replace every
    container that mounts one. The path is held by a command that runs nothing; with its
    `environment` ignored after creation, the state keeps the first value for good.
    """
    holder = command.local.Command(
        "config-root",
        environment={CONFIG_ROOT_VARIABLE: default_config_root(stack)},
        opts=pulumi.ResourceOptions(ignore_changes=["environment"]),
    )
    return holder.environment.apply(
        lambda environment: (environment or {})[CONFIG_ROOT_VARIABLE]
    )


def deploy(deployment: Deployment, *, stack: str) -> dict[str, Any]:
    """Register every resource of the stack; return the stack outputs."""
    if deployment.config.layout == "single-host":
        hosts, mesh = _single_host(deployment, stack)
        networks = [Attachment(mesh.mesh_network.id)] if mesh.mesh_network else []
        address_owners = [mesh.mesh_network] if mesh.mesh_network else []
        outputs: dict[str, Any] = {}
    else:
        hosts, mesh, outputs = _multi_host(deployment)
        networks, address_owners = [], []
    exporters = {
        name: HostExporters(host, networks=networks, address_owners=address_owners)
        for name, host in hosts.items()
    }

    mesh_id = mesh.mesh_network.id if mesh.mesh_network else None
    # The stream job's host: the first pod's, while it runs (leaving included; the job
    # connects to a server that stays). When the first pod is retired, it moves on.
    first = deployment.pods[0]
    streams = NatsStreams(
        deployment,
        host=hosts[first.host],
        client_password=mesh.secrets.nats_client_password,
        system_password=mesh.secrets.nats_system_password,
        # Multi-host: Docker's default bridge (not the host network, where the firewall's
        # DOCKER-USER rules would not keep it from the metadata service); it reaches the
        # cluster on the host's WireGuard address through Docker's published port.
        network=mesh.mesh_network.name if mesh.mesh_network else "bridge",
    )
    rollout = Rollout(deployment, previous_outputs())
    pods: dict[str, PodStack] = {}
    for plan in deployment.pods:
        pods[plan.code] = PodStack(
            deployment, plan, host=hosts[plan.host], mesh=mesh.secrets, mesh_network=mesh_id,
            after=rollout.waits(plan.code),
        )  # fmt: skip
        # A leaving pod has no gate: its server leaves JetStream in this very `up`.
        gate = None if plan.pod.leaving else streams.gate(plan, pods[plan.code].containers["nats"])
        rollout.done(plan.code, pods[plan.code], gate)
    streams.apply([pod.containers["nats"] for pod in pods.values()])
    if deployment.config.backups.enabled:
        outputs["backupRepositoryPasswords"] = _backups(deployment, pods, hosts, exporters, mesh)
    swarm = IpfsSwarm(deployment, pods=pods, hosts=hosts)

    monitoring_host = hosts[deployment.monitoring_host.name]
    config = deployment.config
    urls: dict[str, str] = {}
    if config.monitoring.enabled:
        monitoring = MonitoringStack(
            deployment,
            host=monitoring_host,
            global_network=mesh.global_network.id,
            mesh_network=mesh_id,
        )
        urls |= monitoring.urls
        matrix_alerts = config.alerting.matrix if config.alerting else None
        if matrix_alerts is not None:
            home = pods[config.monitoring_pod.code]
            MatrixAlertRelay(
                deployment, matrix_alerts, host=monitoring_host,
                global_network=mesh.global_network.id, pod_network=home.network_id,
                registration_secret=home.synapse_registration_secret,
                homeserver_ready=home.containers["matrix"],
            )  # fmt: skip
        outputs["grafanaAdminUser"] = "unityplan-admin"
        outputs["grafanaAdminPassword"] = monitoring.grafana_admin_password
    if config.dev_tools_enabled:
        tools = DevTools(
            deployment,
            host=monitoring_host,
            pods=pods,
            global_network=mesh.global_network.id,
            mesh_network=mesh_id,
        )
        urls |= tools.urls
    outputs["urls"] = urls
    # What an operator connects to, and what `verify` checks against (verify/outputs.py).
    outputs["pods"] = {
        plan.code: {
            "endpoints": pods[plan.code].endpoints,
            "host": plan.host,
            "postgresUser": DB_OWNER,
            "postgresPassword": pods[plan.code].postgres_password,
            "redisPassword": pods[plan.code].redis_password,
            "databases": [plan.database, SYNAPSE_DATABASE],
            "natsServerName": plan.nats_server_name,
            "matrixServerName": plan.matrix_server_name,
            "ipfsPeerId": swarm.peer_ids[plan.code],
        }
        for plan in deployment.pods
    }
    outputs["monitoringHost"] = deployment.monitoring_host.name
    outputs["nats"] = {
        "cluster": CLUSTER_NAME,
        "streams": [
            {
                "name": stream["name"],
                "replicas": stream["num_replicas"],
                "placementTags": stream.get("placement", {}).get("tags", []),
            }
            for stream in streams.definitions
        ],
    }
    outputs["natsClientUser"] = CLIENT_USER
    outputs["natsClientPassword"] = mesh.secrets.nats_client_password
    return outputs


def _single_host(deployment: Deployment, stack: str) -> tuple[dict[str, HostAccess], MeshNetwork]:
    config = deployment.config
    (plan,) = deployment.hosts
    docker_host = DockerHost(
        plan,
        docker_host=config.docker_host,
        config_root=config.config_dir or pinned_config_root(stack),
    )
    mesh = MeshNetwork(deployment, monitoring_host=docker_host.access)
    return {plan.name: docker_host.access}, mesh


def _multi_host(
    deployment: Deployment,
) -> tuple[dict[str, HostAccess], MeshNetwork, dict[str, Any]]:
    ensure_ssh_dir()
    servers = HetznerHosts(deployment)
    docker_hosts = {
        name: DockerHost(
            deployment.hosts_by_name[name],
            docker_host=remote.docker_url,
            config_root=REMOTE_CONFIG_ROOT,
            connection=remote.connection,
            ready=remote.ready,
            ssh_opts=remote.host_key.apply(
                lambda key: [*SSH_OPTIONS, *pinned_host_key_options(key)]
            ),
        )
        for name, remote in servers.remote_hosts.items()
    }
    mesh = MeshNetwork(
        deployment,
        monitoring_host=docker_hosts[deployment.monitoring_host.name].access,
        remote_hosts=servers.remote_hosts,
    )
    # Everything that publishes on a WireGuard address waits for that host's tunnel.
    hosts = {
        name: dataclasses.replace(
            docker_host.access, ready=[*docker_host.access.ready, mesh.peers[name]]
        )
        for name, docker_host in docker_hosts.items()
    }
    return hosts, mesh, servers.outputs(mesh)


def _backups(
    deployment: Deployment,
    pods: dict[str, PodStack],
    hosts: dict[str, HostAccess],
    exporters: dict[str, HostExporters],
    mesh: MeshNetwork,
) -> pulumi.Output[dict[str, str]]:
    """Every pod's backup job; returns the restic repository passwords (secret)."""
    settings = pulumi.Config()
    s3 = {"s3-access-key": settings.require_secret("backupS3AccessKey"),
          "s3-secret-key": settings.require_secret("backupS3SecretKey")}  # fmt: skip
    passwords: dict[str, pulumi.Input[str]] = {}
    for plan in deployment.pods:
        pod = pods[plan.code]
        backups = PodBackups(
            deployment, plan, host=hosts[plan.host], pod_network=pod.network_id,
            secrets={**s3, "postgres-password": pod.postgres_password,
                     "redis-password": pod.redis_password,
                     "nats-password": mesh.secrets.nats_client_password},
            volumes=pod.volumes, textfile_volume=exporters[plan.host].textfile_volume,
        )  # fmt: skip
        passwords[plan.code] = backups.restic_password
    for plan in deployment.retired:  # their snapshots stay readable
        passwords[plan.code] = RetiredPodBackups(plan).restic_password
    return pulumi.Output.secret(pulumi.Output.all(**passwords))
