"""Real Synapse homeservers run the program's generated files and federate with each other.

Why: unit tests compare the rendered homeserver.yaml with expectations; only Synapse can tell
whether it accepts the config, the database the init script creates, the signing key file
and the TLS certificate, and whether two pods really federate with each other (and with
nobody else) over the 8448 listener with the program's whitelist settings.

The deployment is the dev stack with `meshSubnet` set to the lab's subnet, a legitimate user
setting: `ip_range_whitelist` then covers the lab addresses (they lie in 198.18.0.0/15, which
Synapse blocks by default, as it blocks Docker's private ranges). Each of the pods dk and no
is an emulated host (network namespace, tests/support/netns.py) running its own PostgreSQL
15 and its own Synapse; `/etc/hosts` of both namespaces resolves `service-postgres-<code>`,
`service-matrix-<code>` and `<code>.unityplan.local` as Docker's network DNS does.

Per pod, as the program does: role `unityplan` with a generated password, the generated
init SQL run with `psql -v ON_ERROR_STOP=1 -f`, the generated homeserver.yaml, a signing key
file from `synapse_signing_key(<32 random bytes>)` and a self-signed ECDSA P-256 certificate
for the server name (generated with `cryptography` as pulumi-tls does). The only change to
homeserver.yaml: its path values under /config and /data point into temp dirs (`relocate`).
Synapse runs with the venv's python, as root (it does not object; the image would drop to
UID 991), started as the image's start.py does: `-m synapse.app.homeserver --config-path`.

HTTP requests come from inside the namespaces (the test process has no way into the lab),
made by a small helper script with the venv's python. Each namespace also runs a stub DNS
server that answers NXDOMAIN at once, as Docker's DNS does for Synapse's SRV lookups (see
DNS_STUB_SCRIPT). Two negative controls run beside dk's server (`start_variant`): one on a
database without C collation, one without ip_range_whitelist.

Two tests check the lab's premises against the program's Docker layout instead (Pulumi
mocks, plan): that each Synapse container resolves its peers' server names on a whitelisted
network, as the lab's hosts files let it, and that multi-host peers find federation on 8448.
"""

from __future__ import annotations

import base64
import copy
import functools
import hashlib
import ipaddress
import json
import secrets
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from signedjson.key import decode_signing_key_base64, decode_verify_key_bytes
from signedjson.sign import sign_json, verify_signed_json
from synapse.config.server import DEFAULT_IP_RANGE_BLOCKLIST

from tests.support.deployments import (
    deployment_of,
    dev_deployment,
    multi_host_deployment,
    with_pod,
)
from tests.support.mocks import Graph, run_program
from tests.support.netns import DEFAULT_SUBNET, Background, NetnsLab, wait_until
from tests.support.postgres import Cluster, sql_identifier
from tests.support.stackfile import as_pulumi_config, stack_values
from unityplan_infra.crypto.keys import synapse_key_id, synapse_signing_key, synapse_verify_key
from unityplan_infra.render.postgres import DB_OWNER, SYNAPSE_DATABASE, postgres_init_sql
from unityplan_infra.render.synapse import (
    CONFIG_DIR,
    DATA_DIR,
    SIGNING_KEY_FILE,
    TLS_CERT_FILE,
    TLS_KEY_FILE,
    SynapseSecrets,
    homeserver_config,
    render_hosts_file,
)
from unityplan_infra.topology.plan import Deployment, PodPlan

pytestmark = pytest.mark.timeout(150)

REPO = Path(__file__).resolve().parents[2]
CODES = ("dk", "no")  # two pods are enough to federate; the deployment keeps all three
START_SECONDS = 90.0
FEDERATION_PORT = 8448
# The container healthcheck of pod.py (without its `>/dev/null`: the body must be "OK").
HEALTHCHECK = "curl -fsS http://127.0.0.1:8008/health"
# Paths homeserver.yaml names; the only values `relocate` may change.
RELOCATED_KEYS = {
    "pid_file", "tls_certificate_path", "tls_private_key_path", "media_store_path",
    "signing_key_path",
}  # fmt: skip
OUTSIDER = "evil.example"  # a server outside the mesh
OUTSIDER_ADDRESS = "198.19.200.1"  # benchmark range, outside the lab's (= mesh) subnet
# Negative controls: dk's config with one change each, own database, ports and data dir.
WRONG_COLLATION = "wrong-collation"  # a database created with the cluster's default locale
NO_IP_WHITELIST = "no-ip-whitelist"  # without the program's IP lists (Synapse's defaults)
# The Synapse database options of postgres_init_sql, for the variant that must start.
C_LOCALE = " ENCODING 'UTF8' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0"

# One HTTP(S) request, described as JSON on stdin; prints status, body and the TLS facts.
# Certificates are not verified, as Synapse's federation_verify_certificates: false.
REQUEST_SCRIPT = r"""
import hashlib, http.client, json, ssl, sys, urllib.parse
spec = json.load(sys.stdin)
url = urllib.parse.urlsplit(spec["url"])
if url.scheme == "https":
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    connection = http.client.HTTPSConnection(url.hostname, url.port, timeout=30, context=context)
else:
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
connection.connect()
tls = {}
if url.scheme == "https":
    tls = {"version": connection.sock.version(),
           "cert_sha256": hashlib.sha256(connection.sock.getpeercert(True)).hexdigest()}
body = json.dumps(spec["body"]).encode() if spec.get("body") is not None else None
headers = dict(spec.get("headers", {}))
if body is not None:
    headers["Content-Type"] = "application/json"
path = url.path + ("?" + url.query if url.query else "")
connection.request(spec.get("method", "GET"), path, body=body, headers=headers)
response = connection.getresponse()
print(json.dumps({"status": response.status, "body": response.read().decode(), "tls": tls}))
"""


# Docker's DNS answers names it does not know at once (NXDOMAIN from upstream); the lab has
# no DNS server, and Twisted's resolver then retries 127.0.0.1:53 for 1+3+11+45 s, longer
# than Synapse's 10 s federation timeout. Synapse looks up `_matrix-fed._tcp.<server name>`
# (SRV) before it connects to <server name>:8448, so each namespace gets this stub: no
# records at all, every query NXDOMAIN. Names still come from the hosts files only.
DNS_STUB_SCRIPT = """
from twisted.internet import reactor
from twisted.names import dns, server
factory = server.DNSServerFactory(clients=[])  # no resolvers: every query is NXDOMAIN
reactor.listenUDP(53, dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
reactor.listenTCP(53, factory, interface="127.0.0.1")
print("listening", flush=True)
reactor.run()
"""


# --- the program's files ---------------------------------------------------------------------
def lab_values() -> dict[str, Any]:
    """The dev stack with the lab's subnet as mesh subnet (`unityplan-infra:meshSubnet`)."""
    values = copy.deepcopy(stack_values("dev"))
    values["unityplan-infra:meshSubnet"] = str(DEFAULT_SUBNET)
    return values


def lab_deployment() -> Deployment:
    return deployment_of(lab_values())


@functools.cache
def lab_graph() -> Graph:
    """The program's resources for the lab's stack config, under Pulumi mocks."""
    return run_program(as_pulumi_config(lab_values()))


def random_b64(size: int = 32) -> str:
    """What pulumi-random's RandomBytes stores: `size` random bytes, base64."""
    return base64.b64encode(secrets.token_bytes(size)).decode()


def relocate(config: dict[str, Any], config_dir: Path, data_dir: Path) -> dict[str, Any]:
    """`config` with its /config and /data path values moved into `config_dir`, `data_dir`.

    The container's bind mount and volume become temp dirs; every other value stays as
    rendered (asserted by `test_only_paths_are_relocated`).
    """
    mounts = {CONFIG_DIR: config_dir, DATA_DIR: data_dir}

    def move(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: move(item) for key, item in value.items()}
        if isinstance(value, list):
            return [move(item) for item in value]
        if isinstance(value, str):
            for mount, directory in mounts.items():
                if value == mount or value.startswith(mount + "/"):
                    return str(directory) + value[len(mount) :]
        return value

    moved: dict[str, Any] = move(config)
    return moved


def self_signed_certificate(server_name: str) -> tuple[bytes, bytes]:
    """(certificate PEM, key PEM) as pulumi-tls makes them in pod.py: ECDSA P-256 key,
    self-signed, CN and DNS name = server name, server_auth, 10 years."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_name)])
    now = datetime.now(UTC)
    usage = x509.KeyUsage(
        digital_signature=True, key_encipherment=True, content_commitment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )  # fmt: skip
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + timedelta(hours=10 * 365 * 24))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(server_name)]), critical=False)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(  # "EC PRIVATE KEY", as pulumi-tls's private_key_pem
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    return certificate.public_bytes(serialization.Encoding.PEM), key_pem


# --- the lab -----------------------------------------------------------------------------------
@dataclass
class Homeserver:
    """One pod's Synapse with what the program generated for it."""

    pod: PodPlan
    lab: NetnsLab
    cluster: Cluster
    seed: str  # base64 random bytes of the signing key
    rendered: dict[str, Any]  # homeserver_config() as the program renders it
    config: dict[str, Any]  # the file Synapse runs with (relocated paths)
    certificate_sha256: str
    init_sql_output: str
    process: Background | None = None

    @property
    def name(self) -> str:
        return self.pod.matrix_server_name

    @property
    def key_id(self) -> str:
        return f"ed25519:{synapse_key_id(self.seed)}"

    def healthy(self) -> bool:
        return healthy(self.lab, self.pod.code)


def request(
    lab: NetnsLab,
    host: str,
    url: str,
    *,
    method: str = "GET",
    body: Any = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Make a request from inside `host`; returns status, body (JSON-decoded if JSON), tls."""
    spec = {"url": url, "method": method, "body": body, "headers": headers or {}}
    result = lab.run(host, [sys.executable, "-c", REQUEST_SCRIPT], stdin=json.dumps(spec))
    reply: dict[str, Any] = json.loads(result.stdout)
    try:
        reply["json"] = json.loads(reply["body"])
    except ValueError:
        reply["json"] = None
    return reply


def federation_url(server: Homeserver, path: str) -> str:
    return f"https://{server.name}:{FEDERATION_PORT}{path}"


def x_matrix(origin: str, seed: str, destination: str, method: str, uri: str, content: Any) -> str:
    """Authorization header of a federation request signed by `origin` with key `seed`."""
    key_id = synapse_key_id(seed)
    key = decode_signing_key_base64("ed25519", key_id, seed)
    signed = sign_json(
        {"method": method, "uri": uri, "origin": origin, "destination": destination,
         "content": content},
        origin, key,
    )  # fmt: skip
    signature = signed["signatures"][origin][f"ed25519:{key_id}"]
    return (
        f'X-Matrix origin="{origin}",destination="{destination}",'
        f'key="ed25519:{key_id}",sig="{signature}"'
    )


def prepare(lab: NetnsLab, deployment: Deployment, code: str, cluster: Cluster) -> Homeserver:
    """Database, role and files of one pod, as the program makes them."""
    pod = deployment.pod(code)
    password = secrets.token_urlsafe(24)  # as components.secrets.password: generated
    cluster.create_login(DB_OWNER, password)
    init = cluster.run_script(postgres_init_sql(pod, DB_OWNER))
    assert init.returncode == 0, init.stdout

    base = lab.workdir / code
    config_dir, data_dir = base / "config", base / "data"
    config_dir.mkdir(parents=True)
    data_dir.mkdir()
    synapse_secrets = SynapseSecrets(
        database_user=DB_OWNER,
        database_password=password,
        registration_shared_secret=secrets.token_urlsafe(24),
        macaroon_secret_key=secrets.token_urlsafe(24),
        form_secret=secrets.token_urlsafe(24),
    )
    rendered = homeserver_config(deployment, pod, synapse_secrets)
    config = relocate(rendered, config_dir, data_dir)
    seed = random_b64()
    (config_dir / SIGNING_KEY_FILE).write_text(synapse_signing_key(seed))
    certificate, key = self_signed_certificate(pod.matrix_server_name)
    (config_dir / TLS_CERT_FILE).write_bytes(certificate)
    (config_dir / TLS_KEY_FILE).write_bytes(key)
    (config_dir / "homeserver.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    der = x509.load_pem_x509_certificate(certificate).public_bytes(serialization.Encoding.DER)
    return Homeserver(
        pod, lab, cluster, seed, rendered, config, hashlib.sha256(der).hexdigest(), init.stdout
    )


def synapse_argv(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "synapse.app.homeserver", "--config-path", str(config_path)]


@dataclass
class Variant:
    """A negative control: dk's Synapse with one change, beside the real one."""

    name: str
    config: dict[str, Any]
    process: Background

    def port(self, listener: int) -> int:
        return int(self.config["listeners"][listener]["port"])


def start_variant(
    server: Homeserver, name: str, port_offset: int, create_database: str, **changes: Any
) -> Variant:
    """dk's relocated config with `changes`, its own database (`create_database` is the
    statement's options) and, so that it cannot clash with the real server, its own ports,
    pid file and media store; started in dk's namespace."""
    database = "synapse_" + name.replace("-", "_")
    server.cluster.psql(
        "-c", f"CREATE DATABASE {database} OWNER {sql_identifier(DB_OWNER)}{create_database}"
    )  # fmt: skip
    base = server.lab.workdir / name
    base.mkdir()
    config = copy.deepcopy(server.config)
    config["database"]["args"]["database"] = database
    config["pid_file"] = str(base / "homeserver.pid")
    config["media_store_path"] = str(base / "media_store")
    for listener in config["listeners"]:
        listener["port"] += port_offset
    for key, value in changes.items():
        if value is None:
            del config[key]
        else:
            config[key] = value
    path = base / "homeserver.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    process = server.lab.spawn(server.pod.code, synapse_argv(path), name=f"synapse-{name}")
    return Variant(name, config, process)


@dataclass
class Federation:
    lab: NetnsLab
    deployment: Deployment
    servers: dict[str, Homeserver]
    variants: dict[str, Variant]


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Federation]:
    deployment = lab_deployment()
    with ExitStack() as cleanup:
        lab = cleanup.enter_context(
            NetnsLab(list(CODES), subnet=DEFAULT_SUBNET, workdir=tmp_path_factory.mktemp("synapse"))
        )
        clusters: dict[str, tuple[Cluster, Background]] = {}
        for code in CODES:
            dns = lab.spawn(code, [sys.executable, "-c", DNS_STUB_SCRIPT], name="dns-stub")
            cleanup.callback(dns.stop)
            dns.wait_for_output("listening")
            pod = deployment.pod(code)
            lab.alias(code, pod.service("postgres"), pod.service("matrix"), pod.matrix_server_name)
        # A pod's name without a Synapse of its own, at no's address (inside the mesh), and
        # a server outside the mesh.
        lab.alias("no", deployment.pod("se").matrix_server_name)
        lab.resolve(OUTSIDER, OUTSIDER_ADDRESS)
        for code in CODES:
            cluster = Cluster.create(host_networks=[str(DEFAULT_SUBNET)])
            # Registered after the lab, so undone before it; the server is stopped first.
            cleanup.callback(cluster.remove)
            postgres = lab.spawn(
                code, cluster.server_argv(listen=str(lab.hosts[code].address)), name="postgres"
            )
            cleanup.callback(postgres.stop)
            clusters[code] = cluster, postgres
        for cluster, postgres in clusters.values():
            cluster.wait_ready(postgres.running)
        servers = {code: prepare(lab, deployment, code, clusters[code][0]) for code in CODES}
        for code, server in servers.items():
            server.process = lab.spawn(
                code, synapse_argv(lab.workdir / code / "config" / "homeserver.yaml"),
                name="synapse",
            )  # fmt: skip
            cleanup.callback(server.process.stop)
        variants = {
            variant.name: variant
            for variant in (
                start_variant(servers["dk"], WRONG_COLLATION, 10000, ""),
                start_variant(servers["dk"], NO_IP_WHITELIST, 20000, C_LOCALE,
                              ip_range_whitelist=None, federation_ip_range_blacklist=None),
            )
        }  # fmt: skip
        for variant in variants.values():
            cleanup.callback(variant.process.stop)
        wait_healthy(
            lab,
            [(code, server.process, 8008) for code, server in servers.items()]
            + [("dk", variants[NO_IP_WHITELIST].process, variants[NO_IP_WHITELIST].port(0))],
        )
        yield Federation(lab, deployment, servers, variants)


def healthy(lab: NetnsLab, host: str, port: int = 8008) -> bool:
    """The container healthcheck of pod.py (`port` moved for the variants)."""
    command = HEALTHCHECK.replace(":8008/", f":{port}/")
    result = lab.run(host, ["sh", "-c", command], check=False, timeout=10)
    return result.returncode == 0 and result.stdout == "OK"


def wait_healthy(lab: NetnsLab, servers: list[tuple[str, Background | None, int]]) -> None:
    """Wait (bounded) until every server's healthcheck passes; fail early if one exits."""
    deadline = time.monotonic() + START_SECONDS
    waiting = list(servers)
    while waiting:
        for entry in list(waiting):
            host, process, port = entry
            assert process is not None
            if healthy(lab, host, port):
                waiting.remove(entry)
            elif not process.running():
                raise AssertionError(f"{process} exited:\n{process.output()}")
        if waiting and time.monotonic() > deadline:
            logs = "\n".join(f"--- {p}\n{p.output() if p else ''}" for _, p, _ in waiting)
            raise AssertionError(f"not healthy in {START_SECONDS}s:\n{logs}")
        time.sleep(0.3)


# --- tests: the lab's premises in the program's Docker layout ------------------------------------
def docker_dns(graph: Graph, container: str) -> dict[str, set[str]]:
    """What Docker's embedded DNS answers `container`: every name it resolves (container
    names, aliases) with the networks it resolves on. Aliases are network-scoped: a
    container resolves another's alias only on a network both joined with it."""
    containers = graph.containers()
    joined = {net["name"] for net in containers[container].inputs["networksAdvanced"]}
    names: dict[str, set[str]] = {}
    for other in containers.values():
        for net in other.inputs.get("networksAdvanced", []):
            if net["name"] in joined:
                for name in [other.inputs["name"], *net.get("aliases", [])]:
                    names.setdefault(name, set()).add(net["name"])
    return names


def test_docker_dns_gives_each_synapse_its_peers_server_names() -> None:
    # The lab's hosts files resolve every pod's server name in every namespace. On Docker
    # (single host), each Synapse must likewise resolve its peers' server names, and on a
    # network inside ip_range_whitelist (the mesh), else federation cannot start.
    deployment, graph = lab_deployment(), lab_graph()
    subnets = {  # Docker picks the subnet of a network without ipamConfigs (never whitelisted)
        net.id: [ipaddress.IPv4Network(c["subnet"]) for c in net.inputs.get("ipamConfigs", [])]
        for net in graph.of_type("docker:index/network:Network")
    }  # fmt: skip  (containers join networks by ID)
    unresolved = []
    for pod in deployment.pods:
        config = homeserver_config(deployment, pod, SynapseSecrets(DB_OWNER, "-", "-", "-", "-"))
        allowed = [ipaddress.IPv4Network(net) for net in config["ip_range_whitelist"]]
        names = docker_dns(graph, pod.service("matrix"))
        assert pod.service("postgres") in names
        for peer in deployment.peers(pod):
            on = names.get(peer.matrix_server_name, set())
            usable = [n for n in on if any(s.subnet_of(a) for s in subnets[n] for a in allowed)]
            if not usable:
                unresolved.append(
                    f"{pod.service('matrix')} cannot resolve {peer.matrix_server_name} on a"
                    f" network in {config['ip_range_whitelist']} (resolves it on: {sorted(on)})"
                )
    assert not unresolved, "\n".join(unresolved)


def test_multi_host_peers_find_federation_on_port_8448() -> None:
    # A server name without a port (and no .well-known, no SRV record) means port 8448. In the
    # multi-host layout Synapse resolves peers' names to their WireGuard addresses (the hosts
    # file the program renders), so every host must publish the federation listener there,
    # on 8448: one pod per host, so no two pods compete for the port.
    deployment = multi_host_deployment()
    wrong = []
    for pod in deployment.pods:
        for peer in deployment.peers(pod):
            assert (
                f"{peer.vpn_address}\t{peer.matrix_server_name}"
                in render_hosts_file(deployment, pod).splitlines()
            )
        federation = [b for b in pod.ports_of(pod.service("matrix")) if b.container_port == 8448]
        assert [pod.address_for(b.exposure) for b in federation] == [str(pod.vpn_address)]
        published = {b.host_port for b in federation}
        if published != {FEDERATION_PORT}:
            wrong.append(f"{pod.matrix_server_name}: federation published on {published}")
    assert not wrong, "\n".join(wrong)


# --- tests: real servers ------------------------------------------------------------------------
def test_federation_reaches_the_mesh_range_and_nothing_else(federation: Federation) -> None:
    # The premise of the federation tests: the lab's addresses are the mesh range, which
    # federation may reach; every other IPv4 and IPv6 address is blocked, by address: no
    # list of server names that a new pod would have to be added to.
    config = federation.servers["dk"].rendered
    assert "federation_domain_whitelist" not in config
    assert config["ip_range_whitelist"] == [str(DEFAULT_SUBNET)]
    blocked = [ipaddress.ip_network(net) for net in config["federation_ip_range_blacklist"]]
    v4 = [net for net in blocked if isinstance(net, ipaddress.IPv4Network)]
    assert not any(net.overlaps(DEFAULT_SUBNET) for net in v4)
    assert sum(net.num_addresses for net in v4) + DEFAULT_SUBNET.num_addresses == 2**32
    assert ipaddress.ip_network("::/0") in blocked
    assert all(h.address in DEFAULT_SUBNET for h in federation.lab.hosts.values())
    assert ipaddress.ip_address(OUTSIDER_ADDRESS) not in DEFAULT_SUBNET
    # ... and Synapse blocks the lab's addresses by default, as it blocks the default Docker
    # mesh subnet, so the negative control (Synapse's own defaults) cannot federate.
    defaults = [net for net in map(ipaddress.ip_network, DEFAULT_IP_RANGE_BLOCKLIST)
                if isinstance(net, ipaddress.IPv4Network)]  # fmt: skip
    for subnet in (DEFAULT_SUBNET, ipaddress.IPv4Network(dev_deployment().config.mesh_subnet)):
        assert any(subnet.subnet_of(net) for net in defaults), subnet


def test_a_new_pod_changes_no_homeserver_config() -> None:
    # Routine change: the config of dk is the same with a fourth pod in the stack.
    secrets = SynapseSecrets(DB_OWNER, "db", "registration", "macaroon", "form")
    bigger = with_pod("dev", {"code": "fi", "name": "finland", "slot": 4})
    dk_before, dk_after = dev_deployment().pod("dk"), bigger.pod("dk")
    assert homeserver_config(dev_deployment(), dk_before, secrets) == homeserver_config(
        bigger, dk_after, secrets
    )


def test_only_paths_are_relocated(federation: Federation) -> None:
    for server in federation.servers.values():
        changed = {k for k in server.rendered if server.rendered[k] != server.config[k]}
        assert changed == RELOCATED_KEYS
        for key in RELOCATED_KEYS:
            assert server.rendered[key].startswith((CONFIG_DIR + "/", DATA_DIR + "/"))


@pytest.mark.parametrize("code", CODES)
def test_synapse_runs_on_the_generated_database(federation: Federation, code: str) -> None:
    server = federation.servers[code]
    assert server.process is not None and server.process.running()
    assert server.healthy()
    # Synapse created its schema in the `synapse` database, which has the C locale.
    assert server.init_sql_output.count("CREATE DATABASE") == 2, server.init_sql_output
    cluster = server.cluster
    locale = cluster.query(
        f"SELECT datcollate, datctype FROM pg_database WHERE datname = '{SYNAPSE_DATABASE}'"
    )
    assert locale == [("C", "C")]
    tables = cluster.query(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_version'",
        database=SYNAPSE_DATABASE,
    )
    assert tables == [("1",)]
    # ... through TCP with the generated password, as role unityplan.
    clients = cluster.query(
        "SELECT DISTINCT usename, client_addr FROM pg_stat_activity"
        f" WHERE datname = '{SYNAPSE_DATABASE}'"
    )
    assert clients == [(DB_OWNER, str(server.lab.hosts[code].address))]


def test_synapse_refuses_a_database_without_c_collation(federation: Federation) -> None:
    # Negative control for the test above: dk's config, but its database was created without
    # the init script's C options (ports, pid file and media store differ too, see Variant).
    wrong = federation.variants[WRONG_COLLATION].process
    wrong.popen.wait(timeout=START_SECONDS)
    assert wrong.popen.returncode != 0
    assert "Database has incorrect collation of 'C.UTF-8'. Should be 'C'" in wrong.output()


@pytest.mark.parametrize(("code", "client"), [("dk", "no"), ("no", "dk")])
def test_federation_listener_serves_the_signing_key(
    federation: Federation, code: str, client: str
) -> None:
    server = federation.servers[code]
    reply = request(federation.lab, client, federation_url(server, "/_matrix/key/v2/server"))
    assert reply["status"] == 200, reply
    # TLS with the generated certificate.
    assert reply["tls"]["version"] in {"TLSv1.2", "TLSv1.3"}
    assert reply["tls"]["cert_sha256"] == server.certificate_sha256
    keys = reply["json"]
    assert keys["server_name"] == server.name
    assert keys["verify_keys"] == {server.key_id: {"key": synapse_verify_key(server.seed)}}
    # Signed by the key in the signing key file: Synapse read the file as the program wrote it.
    verify_key = decode_verify_key_bytes(
        server.key_id, base64.b64decode(synapse_verify_key(server.seed) + "=")
    )
    verify_signed_json(keys, server.name, verify_key)


def notary_query(federation: Federation, notary: str, server_name: str, key_id: str) -> Any:
    """`POST /_matrix/key/v2/query` to `notary`'s Synapse for one key of `server_name`."""
    url = federation_url(federation.servers[notary], "/_matrix/key/v2/query")
    # Synapse requires the criterion the spec calls optional; 0: any still-valid key.
    body = {"server_keys": {server_name: {key_id: {"minimum_valid_until_ts": 0}}}}
    return request(federation.lab, notary, url, method="POST", body=body)


@pytest.mark.parametrize(("notary", "remote"), [("dk", "no"), ("no", "dk")])
def test_pods_fetch_each_others_keys_over_federation(
    federation: Federation, notary: str, remote: str
) -> None:
    # The notary API makes `notary`'s Synapse fetch `remote`'s keys itself (trusted_key_servers
    # is empty): name resolution, 8448 TLS with a self-signed certificate, ip_range_whitelist
    # and federation_domain_whitelist all have to let it through. Asked for a key id, as a
    # server verifying a signature asks: for "all keys" Synapse 1.163 answers from its cache
    # only (`GET /_matrix/key/v2/query/<server>` returns nothing for a server it never saw).
    asking, asked = federation.servers[notary], federation.servers[remote]
    reply = notary_query(federation, notary, asked.name, asked.key_id)
    assert reply["status"] == 200, reply
    [keys] = reply["json"]["server_keys"]
    assert keys["server_name"] == asked.name
    assert keys["verify_keys"] == {asked.key_id: {"key": synapse_verify_key(asked.seed)}}
    assert set(keys["signatures"]) == {asked.name, asking.name}


def signed_keys_query(federation: Federation, origin: str, seed: str) -> dict[str, Any]:
    """An authenticated federation request from no's host to dk, signed as `origin` with
    the signing key `seed`; answered 200 only after authentication."""
    dk = federation.servers["dk"]
    uri = "/_matrix/federation/v1/user/keys/query"
    content: dict[str, Any] = {"device_keys": {f"@nobody:{dk.name}": []}}
    header = x_matrix(origin, seed, dk.name, "POST", uri, content)
    return request(
        federation.lab, "no", federation_url(dk, uri), method="POST", body=content,
        headers={"Authorization": header},
    )  # fmt: skip


def test_signed_requests_from_a_pod_are_accepted(federation: Federation) -> None:
    # dk checks the signature with no's key, fetched over federation.
    no = federation.servers["no"]
    reply = signed_keys_query(federation, no.name, no.seed)
    assert reply["status"] == 200, reply
    assert "device_keys" in reply["json"]


def test_servers_outside_the_mesh_are_refused(federation: Federation) -> None:
    # The same request, signed the same way, from a server outside the mesh: dk cannot
    # fetch its keys (their address is blocked), so the signature cannot be checked.
    reply = signed_keys_query(federation, OUTSIDER, federation.servers["no"].seed)
    assert reply["status"] == 401, reply
    assert reply["json"]["errcode"] == "M_UNAUTHORIZED"
    dk = federation.servers["dk"].process
    assert dk is not None
    blocked = f"Blocked {OUTSIDER_ADDRESS} from DNS resolution to {OUTSIDER}"
    wait_until(lambda: blocked in dk.output(), timeout=10, what=blocked)


def key_requests_seen_by_no(federation: Federation) -> int:
    """How many `GET /_matrix/key/v2/server` no's Synapse has served (its access log)."""
    process = federation.servers["no"].process
    assert process is not None
    return process.output().count('"GET /_matrix/key/v2/server HTTP/1.1"')


def test_no_requests_go_to_servers_outside_the_mesh(federation: Federation) -> None:
    # evil.example resolves outside the mesh: asked for its keys, dk's Synapse refuses by
    # address before it connects. se.unityplan.local resolves to no's host (in the mesh),
    # where a Synapse listens on 8448: dk contacts it (the answer names no.unityplan.local,
    # so no keys come back).
    dk = federation.servers["dk"].process
    assert dk is not None
    before = key_requests_seen_by_no(federation)
    evil = notary_query(federation, "dk", OUTSIDER, "ed25519:a_0001")
    assert evil["status"] == 200, evil
    assert evil["json"]["server_keys"] == []
    assert dk.output().count(f"Blocked {OUTSIDER_ADDRESS} from DNS resolution") >= 1
    time.sleep(0.5)  # no logs a request after answering it: give a stray one time to show
    assert key_requests_seen_by_no(federation) == before

    se = federation.deployment.pod("se").matrix_server_name
    whitelisted = notary_query(federation, "dk", se, "ed25519:a_0000")
    assert whitelisted["status"] == 200, whitelisted
    assert whitelisted["json"]["server_keys"] == []
    wait_until(
        lambda: key_requests_seen_by_no(federation) > before, timeout=10,
        what=f"dk's request for {se}'s keys at no's address",
    )  # fmt: skip


def test_with_synapses_defaults_federation_is_blocked(federation: Federation) -> None:
    # Negative control for the federation tests: dk's config without the program's IP lists
    # cannot reach no, whose address is in Synapse's default blocklist.
    variant = federation.variants[NO_IP_WHITELIST]
    no = federation.servers["no"]
    url = f"https://{federation.servers['dk'].name}:{variant.port(1)}/_matrix/key/v2/query"
    body = {"server_keys": {no.name: {no.key_id: {"minimum_valid_until_ts": 0}}}}
    reply = request(federation.lab, "dk", url, method="POST", body=body)
    assert reply["status"] == 200, reply
    assert reply["json"]["server_keys"] == []
    blocked = f"Blocked {federation.lab.hosts['no'].address} from DNS resolution to {no.name}"
    wait_until(lambda: blocked in variant.process.output(), timeout=5, what=blocked)


@pytest.mark.timeout(120)
def test_verify_checks_matrix_health_and_federation(
    federation: Federation, tmp_path: Path
) -> None:
    """`verify --only matrix` on the real homeservers, from dk's host: /health, and each
    pod's notary fetching the other's key over federation."""
    outputs = copy.deepcopy(lab_graph().exports)
    outputs["pods"] = {code: outputs["pods"][code] for code in CODES}
    for code, server in federation.servers.items():
        endpoints = outputs["pods"][code]["endpoints"]
        endpoints["matrix"] = f"http://{server.pod.service('matrix')}:8008"
        endpoints["matrixFederation"] = f"https://{server.name}:{FEDERATION_PORT}"
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    argv = [sys.executable, "-m", "unityplan_infra", "verify", "--outputs", str(path),
            "--only", "matrix", "--json"]  # fmt: skip
    result = federation.lab.run("dk", argv, env={"PYTHONPATH": str(REPO)}, check=False,
                                timeout=60)  # fmt: skip
    report = json.loads(result.stdout)
    assert result.returncode == 0, report
    assert {(f["scope"], f["check"]) for f in report["findings"]} == {
        (code, check) for code in CODES for check in ("matrix.health", "matrix.federation")
    }
