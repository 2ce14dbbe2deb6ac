"""nats-server configuration of one pod.

nats-server reads JSON as well as its own format, so the config is a dict emitted with
`json.dumps`: no hand-built syntax, no quoting bugs. Everything in it that changes when
peers change (routes) or secrets rotate (authorization) is reloadable with SIGHUP.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from unityplan_infra.topology.plan import Deployment, PodPlan

CLUSTER_NAME = "unityplan-global"
ROUTE_USER = "route"
CLIENT_USER = "unityplan"
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
    store_dir: str = STORE_DIR,
) -> dict[str, Any]:
    """The server config of `pod` as a dict (JSON-serialisable)."""
    ports = pod.nats_ports
    host = pod.nats_host
    return {
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
    }


def render_nats_config(
    deployment: Deployment, pod: PodPlan, *, route_password: str, client_password: str
) -> str:
    config = nats_config(
        deployment, pod, route_password=route_password, client_password=client_password
    )
    return json.dumps(config, indent=2, sort_keys=True) + "\n"
