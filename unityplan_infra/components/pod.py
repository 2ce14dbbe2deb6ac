"""`PodStack`: one territory's pod on its host.

PostgreSQL, Redis, NATS (JetStream), IPFS (kubo), Matrix Synapse and the three exporters,
named as in the reference guide. Stateful data lives in retained volumes; configuration in
files under the host's config root, bind-mounted read-only and applied by reload, so peer
changes never replace a container.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pulumi
import pulumi_docker as docker
import pulumi_tls as tls

from unityplan_infra.components.host import (
    Attachment,
    HostAccess,
    container,
    restart,
    sha256,
    signal_reload,
    volume,
)
from unityplan_infra.components.mesh import MeshSecrets
from unityplan_infra.components.secrets import password, random_bytes, secret_base64
from unityplan_infra.crypto.keys import ipfs_swarm_key, synapse_signing_key
from unityplan_infra.render import ipfs as ipfs_render
from unityplan_infra.render import redis as redis_render
from unityplan_infra.render.nats import render_nats_config
from unityplan_infra.render.postgres import DB_OWNER, postgres_init_sql
from unityplan_infra.render.synapse import (
    SIGNING_KEY_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    SynapseSecrets,
    render_homeserver_config,
    render_hosts_file,
)
from unityplan_infra.topology.plan import Deployment, PodPlan
from unityplan_infra.topology.stop import stop_grace_seconds

# The users the images run their service as (uid:gid), who alone may read its secrets:
# Synapse drops to 991:991, kubo to ipfs (1000, group users), nats-server stays root.
SYNAPSE_USER = "991:991"
KUBO_USER = "1000:100"
NATS_USER = "0:0"


class PodStack(pulumi.ComponentResource):
    """All containers, volumes, files and secrets of one pod."""

    containers: dict[str, docker.Container]
    """Containers by kind: postgres, redis, nats, ipfs, matrix, *-exporter."""
    volumes: dict[str, docker.Volume]
    """Data volumes by kind: postgres, redis, nats, ipfs, matrix."""
    postgres_password: pulumi.Output[str]
    redis_password: pulumi.Output[str]
    endpoints: dict[str, str]
    """URLs of the pod's services on its host."""
    network_id: pulumi.Output[str]
    """The pod's own Docker network."""
    synapse_registration_secret: pulumi.Output[str]
    """Synapse's shared-secret registration key (the Matrix alert relay's bootstrap)."""

    def __init__(
        self,
        deployment: Deployment,
        pod: PodPlan,
        *,
        host: HostAccess,
        mesh: MeshSecrets,
        mesh_network: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("unityplan:infra:PodStack", f"pod-{pod.code}", None, opts)
        self._deployment, self._pod, self._host = deployment, pod, host
        self.endpoints = pod.endpoints()
        images = deployment.config.images
        code = pod.code

        network = docker.Network(
            pod.network,
            name=pod.network,
            labels=[docker.NetworkLabelArgs(label="unityplan.pod", value=code)],
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=host.docker_provider,
                depends_on=list(host.ready),
                delete_before_replace=True,  # a name exists once per engine
            ),
        )

        self.network_id = network.id

        def networks(*aliases: str, mesh_aliases: Sequence[str] = ()) -> list[Attachment]:
            # Short aliases (`postgres`) only on the pod network: on the mesh they would
            # clash between pods. Docker resolves an alias only on its own network.
            attached = [Attachment(network.id, aliases)]
            if mesh_network is not None:
                attached.append(Attachment(mesh_network, mesh_aliases))
            return attached

        self.postgres_password = password(f"{code}-postgres-password", self)
        self.redis_password = password(f"{code}-redis-password", self)
        self.containers = {}
        self.volumes = {}

        # --- PostgreSQL -----------------------------------------------------------
        init_sql = postgres_init_sql(pod, DB_OWNER)
        init_file = host.config_file(
            f"{code}-postgres-init", f"pods/{code}/postgres-init/10-databases.sql", init_sql,
            parent=self,
        )  # fmt: skip
        postgres = self._add(
            "postgres",
            container(
                pod.service("postgres"),
                host=host,
                image=images.postgres,
                parent=self,
                grace_seconds=stop_grace_seconds("postgres"),
                bindings=pod.ports_of(pod.service("postgres")),
                networks=networks("postgres"),
                envs=pulumi.Output.all(self.postgres_password).apply(
                    lambda secret: [
                        f"POSTGRES_USER={DB_OWNER}",
                        f"POSTGRES_PASSWORD={secret[0]}",
                        f"POSTGRES_DB={pod.database}",
                    ]
                ),
                # Over TCP: the initdb phase's temporary server listens on the socket only.
                healthcheck=f"pg_isready -h 127.0.0.1 -U {DB_OWNER} -d postgres",
                volumes=[(self._volume("postgres"), "/var/lib/postgresql/data")],
                binds=[(host.path(f"pods/{code}/postgres-init"), "/docker-entrypoint-initdb.d")],
                depends_on=[init_file],
            ),
        )  # fmt: skip
        # The initdb script runs only on an empty volume; running it on every deploy (it is
        # idempotent) also covers volumes from older layouts.
        databases = host.run(
            f"{code}-postgres-databases",
            create=(
                f"docker exec -i {pod.service('postgres')} psql -v ON_ERROR_STOP=1 -q"
                f" -U {DB_OWNER} -d postgres -f -"
            ),
            stdin=init_sql,
            triggers=[sha256(init_sql), postgres.id],
            parent=self,
            depends_on=[postgres],
        )

        # --- Redis ----------------------------------------------------------------
        self._add(
            "redis",
            container(
                pod.service("redis"),
                host=host,
                image=images.redis,
                parent=self,
                grace_seconds=stop_grace_seconds("redis"),
                bindings=pod.ports_of(pod.service("redis")),
                networks=networks("redis"),
                envs=self.redis_password.apply(lambda secret: [f"REDIS_PASSWORD={secret}"]),
                command_args=redis_render.COMMAND,
                healthcheck=redis_render.HEALTHCHECK,
                volumes=[(self._volume("redis"), "/data")],
            ),
        )  # fmt: skip

        # --- NATS -----------------------------------------------------------------
        nats_config = pulumi.Output.all(mesh.nats_route_password, mesh.nats_client_password).apply(
            lambda secrets: render_nats_config(
                deployment, pod, route_password=secrets[0], client_password=secrets[1]
            )
        )
        nats_file = host.config_file(
            f"{code}-nats-config", f"pods/{code}/nats/nats.json", nats_config,
            parent=self, reload=signal_reload(pod.service("nats")), secret_for=NATS_USER,
        )  # fmt: skip
        monitor_port = pod.nats_ports["monitor"]
        self._add(
            "nats",
            container(
                pod.service("nats"),
                host=host,
                image=images.nats,
                parent=self,
                grace_seconds=stop_grace_seconds("nats"),
                bindings=pod.ports_of(pod.service("nats")),
                networks=networks("nats"),
                command_args=["--config", "/config/nats.json"],
                healthcheck=(
                    f"wget -q -O /dev/null "
                    f"'http://127.0.0.1:{monitor_port}/healthz?js-enabled-only=true'"
                ),
                volumes=[(self._volume("nats"), "/data")],
                binds=[(host.path(f"pods/{code}/nats"), "/config")],
                depends_on=[nats_file],
            ),
        )  # fmt: skip

        # --- IPFS (kubo), private swarm ---------------------------------------------
        swarm_key = host.config_file(
            f"{code}-ipfs-swarm-key", f"pods/{code}/ipfs/swarm.key",
            mesh.ipfs_swarm_key_hex.apply(ipfs_swarm_key), parent=self, secret_for=KUBO_USER,
        )  # fmt: skip
        init_script = host.config_file(
            f"{code}-ipfs-init", f"pods/{code}/ipfs-init/{ipfs_render.INIT_SCRIPT}",
            ipfs_render.INIT_SCRIPT_BODY, parent=self, mode="0755",
        )  # fmt: skip
        self._add(
            "ipfs",
            container(
                pod.service("ipfs"),
                host=host,
                image=images.ipfs,
                parent=self,
                grace_seconds=stop_grace_seconds("ipfs"),
                bindings=pod.ports_of(pod.service("ipfs")),
                networks=networks("ipfs"),
                envs=[
                    f"IPFS_SWARM_KEY_FILE={ipfs_render.MOUNT}/swarm.key",
                    "LIBP2P_FORCE_PNET=1",  # refuse to start without the private swarm key
                    # No IPFS_PROFILE=server: it filters private addresses, and the swarm
                    # lives on private ones (Docker network, WireGuard).
                ],
                healthcheck="ipfs --api=/ip4/127.0.0.1/tcp/5001 id >/dev/null",
                volumes=[(self._volume("ipfs"), "/data/ipfs")],
                binds=[
                    (host.path(f"pods/{code}/ipfs"), ipfs_render.MOUNT),
                    (host.path(f"pods/{code}/ipfs-init"), "/container-init.d"),
                ],
                depends_on=[swarm_key, init_script],
            ),
        )  # fmt: skip

        # --- Matrix Synapse ----------------------------------------------------------
        matrix_files = self._synapse_files()
        matrix_volume = self._volume("matrix")
        # The image runs Synapse as 991:991 and chowns /data only in `generate` mode; a new
        # named volume is root's, so hand it over once before the first start.
        matrix_owner = host.run(
            f"{code}-synapse-data-owner",
            create=(
                f"docker run --rm --user 0 --entrypoint chown -v {pod.volume('matrix')}:/data"
                f" {images.matrix} -R 991:991 /data"
            ),
            triggers=[matrix_volume.name],
            parent=self,
            depends_on=[matrix_volume, host.image(images.matrix)],
        )
        self._add(
            "matrix",
            container(
                pod.service("matrix"),
                host=host,
                image=images.matrix,
                parent=self,
                grace_seconds=stop_grace_seconds("matrix"),
                bindings=pod.ports_of(pod.service("matrix")),
                # Peers federate with <code>.<matrixDomain>: resolvable on the mesh.
                networks=networks("matrix", mesh_aliases=[pod.matrix_server_name]),
                envs=["SYNAPSE_CONFIG_PATH=/config/homeserver.yaml"],
                healthcheck="curl -fsS http://127.0.0.1:8008/health >/dev/null",
                volumes=[(matrix_volume, "/data")],
                binds=[
                    (host.path(f"pods/{code}/matrix"), "/config"),
                    # Multi-host: peers' server names resolve to their WireGuard addresses.
                    *([(host.path(f"pods/{code}/matrix-hosts/hosts"), "/etc/hosts")]
                      if pod.multi_host else []),
                ],
                depends_on=[*matrix_files, databases, matrix_owner],
            ),
        )  # fmt: skip

        # --- Exporters ------------------------------------------------------------
        self._exporters(networks)

        self.register_outputs(
            {
                "endpoints": self.endpoints,
                "containers": {kind: c.name for kind, c in self.containers.items()},
                "postgresPassword": self.postgres_password,
                "redisPassword": self.redis_password,
            }
        )

    def _volume(self, kind: str) -> docker.Volume:
        self.volumes[kind] = volume(self._pod.volume(kind), host=self._host, parent=self)
        return self.volumes[kind]

    def _add(self, kind: str, created: docker.Container) -> docker.Container:
        self.containers[kind] = created
        return created

    def _synapse_files(self) -> Sequence[pulumi.Resource]:
        deployment, pod, host, code = self._deployment, self._pod, self._host, self._pod.code
        self.synapse_registration_secret = password(f"{code}-synapse-registration-secret", self)
        secrets = pulumi.Output.all(
            self.postgres_password,
            self.synapse_registration_secret,
            password(f"{code}-synapse-macaroon-secret", self),
            password(f"{code}-synapse-form-secret", self),
        ).apply(lambda values: SynapseSecrets(DB_OWNER, *values))
        homeserver: pulumi.Output[str] = pulumi.Output.secret(
            secrets.apply(lambda s: render_homeserver_config(deployment, pod, s))
        )
        signing_seed = secret_base64(random_bytes(f"{code}-synapse-signing-key", self))
        tls_key = tls.PrivateKey(
            f"{code}-synapse-tls-key",
            algorithm="ECDSA",
            ecdsa_curve="P256",
            opts=pulumi.ResourceOptions(parent=self),
        )
        tls_cert = tls.SelfSignedCert(
            f"{code}-synapse-tls-cert",
            private_key_pem=tls_key.private_key_pem,
            subject=tls.SelfSignedCertSubjectArgs(common_name=pod.matrix_server_name),
            dns_names=[pod.matrix_server_name],
            validity_period_hours=10 * 365 * 24,
            allowed_uses=["key_encipherment", "digital_signature", "server_auth"],
            opts=pulumi.ResourceOptions(parent=self),
        )
        matrix = pod.service("matrix")
        directory = f"pods/{code}/matrix"
        hosts_files: list[pulumi.Resource] = []
        if pod.multi_host:
            hosts_files.append(
                host.config_file(
                    f"{code}-synapse-hosts", f"pods/{code}/matrix-hosts/hosts",
                    render_hosts_file(deployment, pod), parent=self, in_place=True,
                )
            )  # fmt: skip
        return [
            *hosts_files,
            host.config_file(
                f"{code}-synapse-config", f"{directory}/homeserver.yaml", homeserver,
                parent=self, reload=restart(matrix),  # Synapse reads its config at start only
                secret_for=SYNAPSE_USER,
            ),
            host.config_file(
                f"{code}-synapse-signing-key", f"{directory}/{SIGNING_KEY_FILE}",
                signing_seed.apply(synapse_signing_key), parent=self, reload=restart(matrix),
                secret_for=SYNAPSE_USER,
            ),
            host.config_file(
                f"{code}-synapse-tls-key", f"{directory}/{TLS_KEY_FILE}",
                pulumi.Output.secret(tls_key.private_key_pem), parent=self,
                reload=restart(matrix), secret_for=SYNAPSE_USER,
            ),
            host.config_file(
                f"{code}-synapse-tls-cert", f"{directory}/{TLS_CERT_FILE}",
                tls_cert.cert_pem, parent=self, reload=restart(matrix),
            ),
        ]  # fmt: skip

    def _exporters(self, attach: Callable[..., list[Attachment]]) -> None:
        """One exporter per stateful service; each sits beside the service it watches."""
        pod, images = self._pod, self._deployment.config.images
        postgres_dsn = f"{pod.service('postgres')}:5432/{pod.database}?sslmode=disable"
        monitor = f"http://{pod.service('nats')}:{pod.nats_ports['monitor']}"
        exporters: list[tuple[str, str, int, pulumi.Input[list[str]] | None, list[str] | None]] = [
            ("postgres", images.postgres_exporter, 9187,
             self.postgres_password.apply(lambda secret: [
                 f"DATA_SOURCE_URI={postgres_dsn}", f"DATA_SOURCE_USER={DB_OWNER}",
                 f"DATA_SOURCE_PASS={secret}"]),
             None),
            ("redis", images.redis_exporter, 9121,
             self.redis_password.apply(lambda secret: [
                 f"REDIS_ADDR=redis://{pod.service('redis')}:6379", f"REDIS_PASSWORD={secret}"]),
             None),
            ("nats", images.nats_exporter, 7777, None,
             ["-varz", "-connz", "-routez", "-subz", "-jsz=all", "-port=7777", monitor]),
        ]  # fmt: skip
        for kind, image, port, envs, args in exporters:
            self._add(
                f"{kind}-exporter",
                container(
                    pod.exporter(kind),
                    host=self._host,
                    image=image,
                    parent=self,
                    grace_seconds=stop_grace_seconds("exporter"),
                    bindings=pod.ports_of(pod.exporter(kind)),
                    networks=attach(),
                    envs=envs,
                    command_args=args,
                    healthcheck=f"wget -q -O /dev/null http://127.0.0.1:{port}/metrics",
                    depends_on=[self.containers[kind]],
                ),
            )
