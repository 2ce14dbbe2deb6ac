"""kubo (IPFS) private swarm: which peers each pod keeps connected to.

Peer IDs are read from the running nodes at deploy time (their identities live in the
data volumes), so only the addresses come from the plan.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

from unityplan_infra.topology.plan import Deployment, PodPlan

MOUNT = "/unityplan"  # bind-mounted config dir inside the container
INIT_SCRIPT = "10-unityplan-private-swarm.sh"


def swarm_multiaddr(pod: PodPlan) -> str:
    host, port = pod.ipfs_swarm
    kind = "ip4" if pod.multi_host else "dns4"
    return f"/{kind}/{host}/tcp/{port}"


def peering(
    deployment: Deployment, pod: PodPlan, peer_ids: Mapping[str, str]
) -> list[dict[str, object]]:
    """kubo `Peering.Peers` of `pod`: every other pod, by ID and address."""
    return [
        {"ID": peer_ids[peer.code], "Addrs": [swarm_multiaddr(peer)]}
        for peer in deployment.peers(pod)
    ]


def render_peers_json(deployment: Deployment, pod: PodPlan, peer_ids: Mapping[str, str]) -> str:
    return json.dumps(peering(deployment, pod, peer_ids), indent=2) + "\n"


def render_peer_list(deployment: Deployment, pod: PodPlan, peer_ids: Mapping[str, str]) -> str:
    """One `/…/p2p/<id>` multiaddr per line, for `ipfs swarm peering add`."""
    lines = [
        f"{address}/p2p/{entry['ID']}"
        for entry in peering(deployment, pod, peer_ids)
        for address in entry["Addrs"]  # type: ignore[attr-defined]
    ]
    return "".join(f"{line}\n" for line in lines)


# Runs before the daemon on every container start (kubo's /container-init.d, under set -e):
# no public bootstrap nodes, the current swarm key (kubo copies IPFS_SWARM_KEY_FILE only
# into a new repo), the pods as permanent peers. On the very first start the peer list
# does not exist yet: the program writes it once every node has an identity.
INIT_SCRIPT_BODY = f"""#!/bin/sh
set -eu
ipfs bootstrap rm --all >/dev/null
install -m 0400 {MOUNT}/swarm.key "${{IPFS_PATH:-/data/ipfs}}/swarm.key"
if [ -s {MOUNT}/peers.json ]; then
  ipfs config --json Peering.Peers "$(cat {MOUNT}/peers.json)"
fi
"""

# Applies a changed peer list to the running daemon without restarting it.
LIVE_APPLY = f"""set -eu
ipfs config --json Peering.Peers "$(cat {MOUNT}/peers.json)"
while read -r address; do ipfs swarm peering add "$address" >/dev/null; done < {MOUNT}/peers.txt
"""
