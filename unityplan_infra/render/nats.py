"""nats-server configuration of one pod.

nats-server reads JSON as well as its own format, so the config is a dict emitted with
`json.dumps`: no hand-built syntax, no quoting bugs. Everything in it that changes when
peers change (routes) or secrets rotate (authorization) is reloadable with SIGHUP.

Two users: `unityplan` (every client, and the stream job) in the global account, as before,
and `unityplan-system` in the system account `$SYS`, for what only the system account may
do: remove a retired pod's server from the JetStream meta group (`$JS.API.SERVER.REMOVE`)
and read the meta group's members (nats/retire.py). nats-server creates `$SYS` by itself and
makes it the system account; the config only gives it a user. The global account keeps
JetStream: nats-server enables it there as long as no account other than the global and the
system one is configured. Adding the system account to a running server's config takes
effect with SIGHUP, without a restart, and leaves the client user's connections open (both
releases: tests/realsw/test_nats_system_account.py).
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from unityplan_infra.topology.plan import Deployment, PodPlan

CLUSTER_NAME = "unityplan-global"
ROUTE_USER = "route"
CLIENT_USER = "unityplan"
SYSTEM_USER = "unityplan-system"
SYSTEM_ACCOUNT = "$SYS"  # nats-server's default system account, created by the server itself
STORE_DIR = "/data/jetstream"


def route_urls(deployment: Deployment, pod: PodPlan, route_password: str) -> list[str]:
    """Routes from `pod` to every other pod, with the cluster credentials."""
    secret = quote(route_password, safe="")
    return [
        f"nats://{ROUTE_USER}:{secret}@{host}:{port}"
        for host, port in (peer.nats_route for peer in deployment.peers(pod))
    ]


def nats_config(
    deployment: Deployment,
    pod: PodPlan,
    *,
    route_password: str,
    client_password: str,
    system_password: str,
    store_dir: str = STORE_DIR,
) -> dict[str, Any]:
    """The server config of `pod` as a dict (JSON-serialisable). `system_password`: the
    password of `SYSTEM_USER` in the system account (the stack's generated secret)."""
    ports = pod.nats_ports
    host = pod.nats_host
    config: dict[str, Any] = {
        "server_name": pod.nats_server_name,
        "port": ports["client"],
        "http_port": ports["monitor"],
        "client_advertise": f"{host}:{ports['client']}",
        "server_tags": [pod.territory_tag, f"pod:{pod.pod.name}"],
        # A `users` list, not a single user/password: with the latter, nats-server closes
        # every client connection on each reload (measured in tests/integration).
        "authorization": {"users": [{"user": CLIENT_USER, "password": client_password}]},
        # fsync every write before its acknowledgement. The default (every 2 min) keeps a
        # process crash harmless but loses up to 2 min of acknowledged messages of an R1
        # territory stream when the host crashes (docs/stop-measurements.md).
        "jetstream": {"store_dir": store_dir, "sync_interval": "always"},
        # Notice a dead peer (a cut WAN link) in ~30 s instead of the default 2 min x 2.
        "ping_interval": "10s",
        "ping_max": 3,
        "cluster": {
            "name": CLUSTER_NAME,
            "port": ports["cluster"],
            "advertise": f"{host}:{ports['cluster']}",
            "authorization": {"user": ROUTE_USER, "password": route_password},
            "routes": route_urls(deployment, pod, route_password),
        },
        # Only the system account is configured, so the global account (and its JetStream)
        # stays what it was; `users`, as above, so a reload closes no connection.
        "accounts": {
            SYSTEM_ACCOUNT: {"users": [{"user": SYSTEM_USER, "password": system_password}]}
        },
    }
    return config


def render_nats_config(
    deployment: Deployment,
    pod: PodPlan,
    *,
    route_password: str,
    client_password: str,
    system_password: str,
) -> str:
    config = nats_config(
        deployment, pod, route_password=route_password, client_password=client_password,
        system_password=system_password,
    )  # fmt: skip
    return json.dumps(config, indent=2, sort_keys=True) + "\n"
