"""IPFS (kubo): the RPC API answers with the pod's own peer ID, and the private swarm has
every other pod as a connected peer. kubo's RPC API takes POST only."""

from __future__ import annotations

from unityplan_infra.verify.http import fetch_json
from unityplan_infra.verify.model import Check, Context, Finding, failed, passed, per_pod


def checks(context: Context) -> list[Check]:
    return per_pod(context, "ipfs", "ipfs.api", _probe)


def _probe(context: Context, code: str) -> list[Finding]:
    outputs = context.outputs
    pod = outputs.pods[code]
    base = context.url(pod.host, pod.endpoints.ipfs_api).rstrip("/")
    identity = fetch_json(f"{base}/api/v0/id", method="POST", timeout=context.timeout)
    own = identity.get("ID")
    findings: list[Finding] = []
    if own != pod.ipfs_peer_id:
        findings.append(failed(
            "ipfs.api", code, f"peer ID {own}, the stack knows {pod.ipfs_peer_id}",
            "the node's identity changed (a new data volume): peers dial the old ID",
            "rerun `./scripts/up.sh STACK`: it reads the IDs again and rewrites every peer list",
        ))  # fmt: skip
    else:
        findings.append(passed("ipfs.api", code, f"peer ID {own}"))
    swarm = fetch_json(f"{base}/api/v0/swarm/peers", method="POST", timeout=context.timeout)
    connected = {peer.get("Peer") for peer in swarm.get("Peers") or []}
    missing = sorted(c for c, p in outputs.pods.items() if c != code and p.ipfs_peer_id not in connected)
    if missing:
        findings.append(failed(
            "ipfs.swarm", code, f"not connected to {', '.join(missing)}",
            "peering is not applied, the swarm keys differ, or the swarm port is unreachable"
            " over the mesh",
            f"docker exec service-ipfs-{code} ipfs config Peering.Peers; compare"
            " /data/ipfs/swarm.key across pods; then `./scripts/up.sh STACK`",
        ))  # fmt: skip
    else:
        findings.append(passed("ipfs.swarm", code, f"{len(connected)} peer(s), all pods present"))
    return findings
