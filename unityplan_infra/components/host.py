"""`DockerHost`: one Docker engine, how the program reaches it, and its per-host exporters.

Every host, local (single-host) or remote (multi-host), is driven the same way: a
`docker.Provider` for containers, and shell commands (local or over SSH) for the files that
containers read from bind-mounted directories. Files that change when peers change are
rewritten in place and the service is told to reload, so its container is never replaced.
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from collections.abc import Sequence
from dataclasses import dataclass, field

import pulumi
import pulumi_command as command
import pulumi_docker as docker

from unityplan_infra.topology import health
from unityplan_infra.topology.plan import HostPlan, PortBinding
from unityplan_infra.topology.stop import stop_grace_seconds


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def if_running(container: str, action: str) -> str:
    """Shell: run `action` only when `container` is running (first deploy: not yet)."""
    state = f"docker inspect --format '{{{{.State.Running}}}}' {shlex.quote(container)}"
    return f'if [ "$({state} 2>/dev/null)" = true ]; then {action}; fi'


def signal_reload(container: str, signal: str = "HUP") -> str:
    return if_running(
        container, f"docker kill --signal {signal} {shlex.quote(container)} >/dev/null"
    )


def restart(container: str) -> str:
    return if_running(container, f"docker restart {shlex.quote(container)} >/dev/null")


def write_file_script(
    root: str,
    path: str,
    reload: str | None,
    in_place: bool = False,
    mode: str = "0644",
    base64_stdin: bool = False,
    owner: str | None = None,
) -> str:
    """Shell: write stdin to `path` atomically (temp file + rename), then reload.

    `base64_stdin`: stdin is the base64 text of a binary file (a command's stdin is text).
    `owner` ("uid:gid"): chown the file, so that a secret can be 0600 and still readable
    by the one service user that needs it (the script then runs as root).

    The root stays 0700 (secrets inside); leaf directories are 0755 and files 0644 because
    containers run as various users and only see the leaf directory they mount. A file that
    is bind-mounted by itself is rewritten `in_place`: a rename would leave the container
    looking at the old inode.
    """
    directory = posixpath.dirname(path)
    lines = [
        "set -eu",
        f"install -d -m 0700 {shlex.quote(root)}",
        f"install -d -m 0755 {shlex.quote(directory)}",
        f"tmp=$(mktemp {shlex.quote(directory)}/.tmp.XXXXXX)",
        'base64 -d > "$tmp"' if base64_stdin else 'cat > "$tmp"',
        f'chmod {mode} "$tmp"',
        *([f'chown {shlex.quote(owner)} "$tmp"'] if owner else []),
        f'cat "$tmp" > {shlex.quote(path)} && chmod {mode} {shlex.quote(path)} && rm -f "$tmp"'
        if in_place
        else f'mv -f "$tmp" {shlex.quote(path)}',
    ]
    if reload:
        lines.append(reload)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RemoteHost:
    """A server of the multi-host layout, as far as SSH is concerned."""

    name: str
    public_address: pulumi.Output[str]
    user: str
    port: int
    host_key: pulumi.Output[str]
    """The server's SSH host key, `<type> <base64>`: every connection pins it."""
    connection: command.remote.ConnectionArgs
    ready: Sequence[pulumi.Resource]
    """Resources that must finish before anything else touches the host (cloud-init)."""

    @property
    def docker_url(self) -> pulumi.Output[str]:
        """`ssh://user@host:port` for the Docker provider (IPv6 in brackets)."""
        return self.public_address.apply(
            lambda address: f"ssh://{self.user}@{_url_host(address)}:{self.port}"
        )

    @property
    def ssh_command(self) -> pulumi.Output[str]:
        return self.public_address.apply(
            lambda address: f"ssh -p {self.port} {self.user}@{address}"
        )


def _url_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


@dataclass
class HostAccess:
    """What components need to deploy onto one host."""

    plan: HostPlan
    docker_provider: docker.Provider
    config_root: pulumi.Input[str]
    """Where files for bind mounts live; an Output when it was pinned at the first `up`."""
    docker_host: str
    connection: command.remote.ConnectionArgs | None = None  # None: this machine
    ready: Sequence[pulumi.Resource] = ()
    images: dict[str, docker.RemoteImage] = field(default_factory=dict)
    image_parent: pulumi.Resource | None = None

    def path(self, *parts: str) -> pulumi.Output[str]:
        return pulumi.Output.from_input(self.config_root).apply(
            lambda root: posixpath.join(root, *parts)
        )

    def run(
        self,
        name: str,
        *,
        create: pulumi.Input[str],
        parent: pulumi.Resource,
        stdin: pulumi.Input[str] | None = None,
        triggers: Sequence[pulumi.Input[str]] | None = None,
        depends_on: Sequence[pulumi.Resource] = (),
    ) -> pulumi.CustomResource:
        """A shell command on this host; runs again whenever `triggers` change."""
        opts = pulumi.ResourceOptions(parent=parent, depends_on=[*self.ready, *depends_on])
        if self.connection is None:
            local: pulumi.CustomResource = command.local.Command(
                name,
                create=create,
                stdin=stdin,
                triggers=list(triggers or []),
                environment={"DOCKER_HOST": self.docker_host},
                logging=command.local.Logging.STDOUT_AND_STDERR,
                opts=opts,
            )
            return local
        remote: pulumi.CustomResource = command.remote.Command(
            name,
            connection=self.connection,
            create=create,
            stdin=stdin,
            triggers=list(triggers or []),
            logging=command.remote.Logging.STDOUT_AND_STDERR,
            opts=opts,
        )
        return remote

    def config_file(
        self,
        name: str,
        relative_path: str,
        content: pulumi.Input[str],
        *,
        parent: pulumi.Resource,
        reload: str | None = None,
        depends_on: Sequence[pulumi.Resource] = (),
        in_place: bool = False,
        mode: str = "0644",
        base64_stdin: bool = False,
        secret_for: str | None = None,
    ) -> pulumi.CustomResource:
        """Write a file under the config root; rewrite it (and reload) when it changes.

        The content travels on stdin, so secrets never appear on a command line or in logs.
        A binary file travels as base64 text (`base64_stdin`).

        `secret_for` ("uid:gid" of the container user that reads it): on a remote host
        (scripts run as root) the file is 0600 and owned by that user. On the local engine
        the operator's own user writes it and cannot chown: it stays 0644, closed to other
        local users by the 0700 config root.
        """
        owner = secret_for if self.connection is not None else None
        file_mode = "0600" if owner else mode
        script = pulumi.Output.from_input(self.config_root).apply(
            lambda root: write_file_script(
                root,
                posixpath.join(root, relative_path),
                reload,
                in_place,
                file_mode,
                base64_stdin,
                owner,
            )
        )
        digest = pulumi.Output.from_input(content).apply(sha256)
        return self.run(
            name,
            create=script,
            stdin=content,
            triggers=[digest],
            parent=parent,
            depends_on=depends_on,
        )

    def image(
        self, reference: str, built_by: pulumi.Resource | None = None
    ) -> docker.RemoteImage:
        """The pulled image `reference` on this host (one resource per host and image).

        `built_by`: the command that builds `reference` on the host; the provider then finds
        it locally and pulls nothing."""
        if reference not in self.images:
            self.images[reference] = docker.RemoteImage(
                # Named by repository and tag; a digest pin is in `name`, not in the URN.
                f"{self.plan.name}-image-"
                + reference.split("@")[0].replace("/", "-").replace(":", "-"),
                name=reference,
                keep_locally=True,  # destroy leaves the image: other stacks may use it
                opts=pulumi.ResourceOptions(
                    parent=self.image_parent,
                    provider=self.docker_provider,
                    depends_on=[*self.ready, *([built_by] if built_by else [])],
                ),
            )
        return self.images[reference]


@dataclass(frozen=True)
class Attachment:
    """A container's place on a Docker network."""

    network: pulumi.Input[str]
    """The network's ID: a replaced network changes it, so its containers follow."""
    aliases: Sequence[str] = ()


@dataclass(frozen=True)
class Bind:
    """A bind mount of a host path, read-only unless `writable`; `propagation` as in
    `docker run --mount`."""

    source: pulumi.Input[str]
    target: str
    propagation: str | None = None  # "rslave": mounts made on the host later show up too
    writable: bool = False


def _bind(spec: Bind | tuple[pulumi.Input[str], str]) -> Bind:
    return spec if isinstance(spec, Bind) else Bind(*spec)


def stack_networks(
    global_network: pulumi.Input[str], mesh_network: pulumi.Input[str] | None
) -> list[Attachment]:
    """Where monitoring and dev tools sit: the global net, plus the mesh on a single host."""
    attached = [Attachment(global_network)]
    if mesh_network is not None:
        attached.append(Attachment(mesh_network))
    return attached


def container(
    name: str,
    *,
    host: HostAccess,
    image: str,
    parent: pulumi.Resource,
    grace_seconds: int,
    bindings: Sequence[PortBinding] = (),
    networks: Sequence[Attachment] = (),
    envs: pulumi.Input[Sequence[pulumi.Input[str]]] | None = None,
    command_args: Sequence[str] | None = None,
    healthcheck: str | None = None,
    volumes: Sequence[tuple[docker.Volume, str]] = (),
    binds: Sequence[Bind | tuple[pulumi.Input[str], str]] = (),
    depends_on: Sequence[pulumi.Resource] = (),
    after: pulumi.Output[Sequence[pulumi.Resource]] | None = None,
    pid_mode: str | None = None,
    privileged: bool | None = None,
    resource_name: str | None = None,
    network_mode: str | None = None,
    capabilities: Sequence[str] = (),
    user: str | None = None,
) -> docker.Container:
    """A long-running, named container with the program's standard settings.

    Named containers are deleted before their replacement is created (a fixed name cannot
    exist twice); with a healthcheck, `pulumi up` waits until the service is healthy. Each
    port binds to the host address of its exposure (topology/plan.py `Exposure`).
    `resource_name` (default: the container name) must be unique in the stack: containers
    that run once per host share a container name but not a resource name.

    `grace_seconds` (topology/stop.py) is how long a stop waits before SIGKILL, whoever
    stops it: the provider on replace or destroy, `docker stop`, or the daemon at shutdown.
    Every input the provider reads back is written the way it reads it back (sorted ports,
    Go durations), so an unchanged program shows no diff: capabilities are stored as given
    (`NET_ADMIN`; the daemon only validates them), bind options as given.

    `network_mode="host"`: the container shares the host's network namespace; it publishes
    no ports and joins no network (Docker refuses both), and listens where its command says.

    `after`: more resources to wait for, known only once an output resolves (a rolling
    upgrade's previous pod, topology/rollout.py).
    """
    waits: pulumi.Input[Sequence[pulumi.Input[pulumi.Resource]]] = [*host.ready, *depends_on]
    if after is not None:
        waits = after.apply(lambda extra: [*host.ready, *depends_on, *extra])
    if network_mode == "host" and (bindings or networks):
        raise ValueError(f"{name}: a host-network container publishes no ports, joins no network")
    mounts = [_bind(spec) for spec in binds]
    return docker.Container(
        resource_name or name,
        name=name,
        image=host.image(image).image_id,
        restart="unless-stopped",
        must_run=True,
        # Read back sorted by container port (the provider's flattenContainerPorts).
        ports=[
            docker.ContainerPortArgs(
                internal=binding.container_port,
                external=binding.host_port,
                ip=host.plan.address_for(binding.exposure),
                protocol=binding.protocol,
            )
            for binding in sorted(bindings, key=lambda b: (b.container_port, b.protocol))
        ],
        networks_advanced=[
            docker.ContainerNetworksAdvancedArgs(name=net.network, aliases=list(net.aliases))
            for net in networks
        ],
        envs=envs,
        command=list(command_args) if command_args is not None else None,
        healthcheck=(
            docker.ContainerHealthcheckArgs(
                tests=["CMD-SHELL", healthcheck],
                interval=health.go_duration(health.INTERVAL),
                timeout=health.go_duration(health.TIMEOUT),
                retries=health.RETRIES,
                start_period=health.go_duration(health.START_PERIOD),
            )
            if healthcheck
            else None
        ),
        wait=healthcheck is not None,
        wait_timeout=300,
        destroy_grace_seconds=grace_seconds,
        stop_timeout=grace_seconds,
        volumes=[
            docker.ContainerVolumeArgs(volume_name=volume.name, container_path=path)
            for volume, path in volumes
        ],
        mounts=[
            docker.ContainerMountArgs(
                type="bind",
                source=mount.source,
                target=mount.target,
                read_only=not mount.writable,
                bind_options=(
                    docker.ContainerMountBindOptionsArgs(propagation=mount.propagation)
                    if mount.propagation
                    else None
                ),
            )
            for mount in mounts
        ],
        network_mode=network_mode,
        capabilities=(
            docker.ContainerCapabilitiesArgs(adds=list(capabilities)) if capabilities else None
        ),
        user=user,
        opts=pulumi.ResourceOptions(
            parent=parent,
            provider=host.docker_provider,
            depends_on=waits,
            delete_before_replace=True,
            # The provider's update ignores the healthcheck (it changes state, not Docker):
            # a new healthcheck only takes effect in a new container.
            replace_on_changes=["healthcheck"],
        ),
        pid_mode=pid_mode,
        privileged=privileged,
    )


def volume(
    name: str, *, host: HostAccess, parent: pulumi.Resource, resource_name: str | None = None
) -> docker.Volume:
    """A named volume that outlives its containers and `pulumi destroy`.

    `resource_name` (default: the volume name) must be unique in the stack: a volume that
    exists once per host shares its name across hosts, not its resource name."""
    return docker.Volume(
        resource_name or name,
        name=name,
        opts=pulumi.ResourceOptions(
            parent=parent, provider=host.docker_provider, retain_on_delete=True, protect=False
        ),
    )


class DockerHost(pulumi.ComponentResource):
    """One Docker engine: its provider and the exporters that run once per host."""

    access: HostAccess
    """How other components deploy onto this host."""

    def __init__(
        self,
        plan: HostPlan,
        *,
        docker_host: pulumi.Input[str],
        config_root: pulumi.Input[str],
        connection: command.remote.ConnectionArgs | None = None,
        ready: Sequence[pulumi.Resource] = (),
        ssh_opts: pulumi.Input[Sequence[str]] | None = None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("unityplan:infra:DockerHost", f"host-{plan.name}", None, opts)
        provider = docker.Provider(
            f"host-{plan.name}-docker",
            host=docker_host,
            ssh_opts=ssh_opts,
            opts=pulumi.ResourceOptions(parent=self, depends_on=list(ready)),
        )
        self.access = HostAccess(
            plan=plan,
            docker_provider=provider,
            config_root=config_root,
            docker_host=docker_host if isinstance(docker_host, str) else "",
            connection=connection,
            ready=ready,
            image_parent=self,
        )
        self.register_outputs({"dockerHost": docker_host})


TEXTFILE_VOLUME = "unityplan-node-textfile"
TEXTFILE_DIR = "/textfile"


class HostExporters(pulumi.ComponentResource):
    """Exporters that run once per host, not once per pod (the guide's port clash).

    - node-exporter, in the host's network and PID namespaces with the host's root mounted
      the way upstream documents (`/:/host:ro,rslave`), so NICs, `wg0` and filesystems are
      the host's. It listens on `HostPlan.host_network_address` only.
    - cAdvisor, privileged with upstream's mounts, on the stack networks.
    - multi-host: the WireGuard exporter, which needs the host's `wg0` (host network,
      NET_ADMIN) and listens on the WireGuard address only.
    """

    def __init__(
        self,
        host: HostAccess,
        *,
        networks: Sequence[Attachment] = (),
        address_owners: Sequence[pulumi.Resource] = (),
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """`address_owners`: what brings up the address the host-network exporters listen on
        beyond `host.ready` (single host: the mesh network, whose gateway it is)."""
        super().__init__(
            "unityplan:infra:HostExporters", f"host-{host.plan.name}-exporters", None, opts
        )
        plan = host.plan
        images = plan.config.images
        node_listen = plan.node_exporter_target()
        # Metrics that jobs write as files (the backup job's): node-exporter's textfile
        # collector reads them. Always mounted, so turning backups on replaces nothing.
        self.textfile_volume = volume(
            TEXTFILE_VOLUME, host=host, parent=self, resource_name=f"{plan.name}-{TEXTFILE_VOLUME}"
        )
        self.node_exporter = container(
            "monitoring-node-exporter",
            resource_name=f"{plan.name}-monitoring-node-exporter",
            host=host,
            image=images.node_exporter,
            parent=self,
            grace_seconds=stop_grace_seconds("exporter"),
            network_mode="host",
            command_args=["--path.rootfs=/host", f"--web.listen-address={node_listen}",
                          f"--collector.textfile.directory={TEXTFILE_DIR}"],
            healthcheck=f"wget -q -O /dev/null http://{node_listen}/metrics",
            binds=[Bind("/", "/host", propagation="rslave")],
            volumes=[(self.textfile_volume, TEXTFILE_DIR)],
            pid_mode="host",
            depends_on=address_owners,
        )
        self.cadvisor = container(
            "monitoring-cadvisor",
            resource_name=f"{plan.name}-monitoring-cadvisor",
            host=host,
            image=images.cadvisor,
            parent=self,
            grace_seconds=stop_grace_seconds("exporter"),
            bindings=plan.ports_of("monitoring-cadvisor"),
            networks=networks,
            healthcheck="wget -q -O /dev/null http://127.0.0.1:8080/healthz",
            # Upstream's README list. /var/run carries containerd's socket, through which
            # v0.54+ finds containers of Docker's containerd image store; /dev/kmsg (OOM
            # events) comes with privileged.
            binds=[
                ("/", "/rootfs"),
                ("/var/run", "/var/run"),
                ("/sys", "/sys"),
                ("/var/lib/docker", "/var/lib/docker"),
                ("/dev/disk", "/dev/disk"),
            ],
            privileged=True,
        )
        outputs: dict[str, pulumi.Input[str]] = {
            "nodeExporter": self.node_exporter.name,
            "cadvisor": self.cadvisor.name,
        }
        self.wireguard_exporter: docker.Container | None = None
        wireguard_target = plan.wireguard_exporter_target()
        if wireguard_target is not None:
            address, port = wireguard_target.rsplit(":", 1)
            self.wireguard_exporter = container(
                "monitoring-wireguard-exporter",
                resource_name=f"{plan.name}-monitoring-wireguard-exporter",
                host=host,
                image=images.wireguard_exporter,
                parent=self,
                grace_seconds=stop_grace_seconds("exporter"),
                network_mode="host",
                capabilities=["NET_ADMIN"],
                # `wg show` needs NET_ADMIN in the process itself: the image's own user
                # would need sudo, and its default `-a` (prepend sudo) is broken upstream
                # (issue #99). Root in the container, with one added capability.
                user="root",
                command_args=["-a", "false", "-l", address, "-p", port, "-i", "wg0"],
                healthcheck=f"wget -q -O /dev/null http://{wireguard_target}/metrics",
            )
            outputs["wireguardExporter"] = self.wireguard_exporter.name
        self.register_outputs(outputs)
