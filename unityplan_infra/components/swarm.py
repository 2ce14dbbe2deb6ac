"""`IpfsSwarm`: every pod's kubo keeps every other pod as a permanent peer.

Peer IDs come from the program (each pod's identity is generated from pulumi-random bytes,
`PodStack.ipfs_peer_id`), so each pod's peer list is plain config, known before any
container starts: it is written to the pod's config dir (read by the init script at every
start) and applied to the running daemon, with no read from a running node on the way.
Adding a pod reruns these commands only.

Nodes deployed before identities came from the program made their own at first start; the
first `up` with program identities gives each such node the program's identity once (its
container is replaced: kubo reads its identity only at start), and rewrites every pod's
peer list with the new IDs in the same `up`.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial

import pulumi

from unityplan_infra.components.host import HostAccess
from unityplan_infra.components.pod import PodStack
from unityplan_infra.render import ipfs as ipfs_render
from unityplan_infra.topology.plan import Deployment


class IpfsSwarm(pulumi.ComponentResource):
    """Peer IDs of all pods and the peering of each pod with the others."""

    peer_ids: dict[str, pulumi.Output[str]]
    """kubo peer ID by territory code."""

    def __init__(
        self,
        deployment: Deployment,
        *,
        pods: Mapping[str, PodStack],
        hosts: Mapping[str, HostAccess],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("unityplan:infra:IpfsSwarm", "ipfs-swarm", None, opts)
        self.peer_ids = {pod.code: pods[pod.code].ipfs_peer_id for pod in deployment.pods}

        all_ids = pulumi.Output.all(**self.peer_ids)
        for pod in deployment.pods:
            host = hosts[pod.host]
            node = pods[pod.code].containers["ipfs"]
            directory = f"pods/{pod.code}/ipfs"
            peers_json = host.config_file(
                f"{pod.code}-ipfs-peers", f"{directory}/peers.json",
                all_ids.apply(partial(ipfs_render.render_peers_json, deployment, pod)),
                parent=self,
            )  # fmt: skip
            peer_list = all_ids.apply(partial(ipfs_render.render_peer_list, deployment, pod))
            peers_txt = host.config_file(
                f"{pod.code}-ipfs-peer-list", f"{directory}/peers.txt", peer_list, parent=self
            )
            # The running daemon takes a changed list without a restart. It waits for the
            # node (docker exec) and the files, nothing else: no step reads from a node.
            host.run(
                f"{pod.code}-ipfs-peering",
                create=f"docker exec -i {pod.service('ipfs')} sh -s",
                stdin=ipfs_render.LIVE_APPLY,
                triggers=[peer_list, node.id],
                parent=self,
                depends_on=[node, peers_json, peers_txt],
            )
        self.register_outputs({"peerIds": self.peer_ids})
