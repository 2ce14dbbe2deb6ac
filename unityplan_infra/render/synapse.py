"""Synapse homeserver.yaml of one pod, emitted with PyYAML from a dict.

Federation runs only between the pods of the stack (whitelist), over TLS on 8448 with a
certificate the program generates. The certificates are self-signed, so certificate
verification is off; the traffic never leaves the mesh (Docker network or WireGuard).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

import yaml

from unityplan_infra.render.postgres import SYNAPSE_DATABASE
from unityplan_infra.topology.plan import Deployment, PodPlan

CONFIG_DIR = "/config"  # bind-mounted, read-only
DATA_DIR = "/data"  # named volume
SIGNING_KEY_FILE = "signing.key"
TLS_CERT_FILE = "tls.crt"
TLS_KEY_FILE = "tls.key"


@dataclass(frozen=True)
class SynapseSecrets:
    """Generated secrets of one homeserver (plain values inside an `apply`)."""

    database_user: str
    database_password: str
    registration_shared_secret: str
    macaroon_secret_key: str
    form_secret: str


def homeserver_config(
    deployment: Deployment, pod: PodPlan, secrets: SynapseSecrets
) -> dict[str, Any]:
    return {
        "server_name": pod.matrix_server_name,
        "pid_file": f"{DATA_DIR}/homeserver.pid",
        "public_baseurl": f"http://{pod.service('matrix')}:8008/",
        "listeners": [
            {
                "port": 8008,
                "type": "http",
                "tls": False,
                # Nothing proxies Synapse: trusting X-Forwarded-For would let any client
                # choose the address Synapse logs and rate-limits.
                "x_forwarded": False,
                "bind_addresses": ["0.0.0.0"],
                "resources": [{"names": ["client"], "compress": False}],
            },
            {
                "port": 8448,
                "type": "http",
                "tls": True,
                "bind_addresses": ["0.0.0.0"],
                "resources": [{"names": ["federation"], "compress": False}],
            },
        ],
        "tls_certificate_path": f"{CONFIG_DIR}/{TLS_CERT_FILE}",
        "tls_private_key_path": f"{CONFIG_DIR}/{TLS_KEY_FILE}",
        "database": {
            "name": "psycopg2",
            "args": {
                "user": secrets.database_user,
                "password": secrets.database_password,
                "database": SYNAPSE_DATABASE,
                "host": pod.service("postgres"),
                "port": 5432,
                "cp_min": 5,
                "cp_max": 10,
            },
        },
        "media_store_path": f"{DATA_DIR}/media_store",
        "signing_key_path": f"{CONFIG_DIR}/{SIGNING_KEY_FILE}",
        "registration_shared_secret": secrets.registration_shared_secret,
        "macaroon_secret_key": secrets.macaroon_secret_key,
        "form_secret": secrets.form_secret,
        "enable_registration": False,
        "report_stats": False,
        # Keys are fetched from the pods themselves, never from matrix.org.
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "federation_verify_certificates": False,
        # Federation reaches the mesh and nothing else, by address, not by a list of server
        # names: a new pod then changes no homeserver.yaml and restarts no Synapse. A server
        # outside the mesh is never contacted, so its requests cannot be verified (its keys
        # are unreachable) and are refused. (Synapse applies this list, and only this one,
        # to federation and identity servers; push gateways and URL previews keep the
        # general lists below.)
        "federation_ip_range_blacklist": federation_blocklist(deployment),
        # Synapse refuses private addresses by default; the mesh is private by design.
        "ip_range_whitelist": [deployment_mesh_range(deployment)],
    }


def federation_blocklist(deployment: Deployment) -> list[str]:
    """Every address but the mesh range: IPv4 outside it, and all of IPv6."""
    mesh = ipaddress.IPv4Network(deployment_mesh_range(deployment))
    outside = sorted(ipaddress.IPv4Network("0.0.0.0/0").address_exclude(mesh))
    return [str(network) for network in outside] + ["::/0"]


def deployment_mesh_range(deployment: Deployment) -> str:
    """Addresses pods federate over: the WireGuard range or the Docker mesh subnet."""
    if deployment.config.layout == "multi-host":
        return "10.0.0.0/16"
    return deployment.config.mesh_subnet


def render_homeserver_config(deployment: Deployment, pod: PodPlan, secrets: SynapseSecrets) -> str:
    return yaml.safe_dump(homeserver_config(deployment, pod, secrets), sort_keys=False)


def render_hosts_file(deployment: Deployment, pod: PodPlan) -> str:
    """/etc/hosts of a multi-host Synapse: other pods' server names -> WireGuard addresses.

    Docker's DNS knows only the local host's containers; federation needs the others.
    """
    lines = ["127.0.0.1\tlocalhost", "::1\tlocalhost ip6-localhost ip6-loopback"]
    lines += [f"{peer.vpn_address}\t{peer.matrix_server_name}" for peer in deployment.peers(pod)]
    return "\n".join(lines) + "\n"
