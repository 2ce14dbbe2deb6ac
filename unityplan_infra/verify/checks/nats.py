"""NATS: every server in `unityplan-global` with routes to all other pods, JetStream with a
meta leader over all of them, and every stream with its replicas, placement and a current
copy on each replica. All from the servers' HTTP monitoring endpoints (varz, routez, jsz)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from unityplan_infra.verify.http import HttpError, fetch_json
from unityplan_infra.verify.model import (
    MESH,
    Check,
    Context,
    Finding,
    down_cause,
    down_fix,
    failed,
    passed,
    per_pod,
)  # fmt: skip
from unityplan_infra.verify.outputs import StreamOutputs

# Guide, Troubleshooting: "NATS Cluster Not Forming".
NOT_FORMING_CAUSE = (
    "routes are down: the mesh network attachment (single-host: unityplan-mesh-network;"
    " multi-host: WireGuard), the route URLs, or the route credentials"
)
NOT_FORMING_FIX = (
    "docker logs service-nats-<code> | grep -i route; docker inspect service-nats-<code>"
    " (networks); multi-host: wg show wg0 (handshakes); then `./scripts/up.sh STACK`"
)


@dataclass
class Snapshot:
    """What every reachable server says about itself, fetched once for all NATS checks."""

    varz: dict[str, dict[str, Any]] = field(default_factory=dict)
    routez: dict[str, dict[str, Any]] = field(default_factory=dict)
    jsz: dict[str, dict[str, Any]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


def checks(context: Context) -> list[Check]:
    shared = SharedSnapshot(context)
    found = per_pod(context, "nats", "nats.server", partial(_pod_findings, shared=shared))
    found.append(
        Check("nats", "nats.streams", MESH, partial(_stream_findings, context, shared),
              "no NATS server answered", "start with the nats.server findings")
    )  # fmt: skip
    return found


class SharedSnapshot:
    """One snapshot for all NATS checks, taken by whichever check needs it first."""

    def __init__(self, context: Context) -> None:
        self._context = context
        self._lock = threading.Lock()
        self._taken: Snapshot | None = None

    def get(self) -> Snapshot:
        with self._lock:
            if self._taken is None:
                self._taken = _snapshot(self._context)
            return self._taken


def _snapshot(context: Context) -> Snapshot:
    shot = Snapshot()
    for code, pod in context.outputs.pods.items():
        base = context.url(pod.host, pod.endpoints.nats_monitor).rstrip("/")
        try:
            shot.varz[code] = fetch_json(f"{base}/varz", timeout=context.timeout)
            shot.routez[code] = fetch_json(f"{base}/routez", timeout=context.timeout)
            shot.jsz[code] = fetch_json(
                f"{base}/jsz?accounts=true&streams=true&config=true", timeout=context.timeout
            )
        except HttpError as error:
            shot.errors[code] = str(error)
    return shot


def _pod_findings(context: Context, code: str, *, shared: SharedSnapshot) -> list[Finding]:
    shot = shared.get()
    outputs = context.outputs
    pod = outputs.pods[code]
    if code in shot.errors:
        container = f"service-nats-{code}"
        return [failed("nats.server", code, shot.errors[code], down_cause(container),
                       down_fix(container))]  # fmt: skip
    varz = shot.varz[code]
    cluster = (varz.get("cluster") or {}).get("name")
    name = varz.get("server_name")
    findings: list[Finding] = []
    if cluster != outputs.nats.cluster or name != pod.nats_server_name:
        findings.append(failed(
            "nats.server", code, f"server {name!r} in cluster {cluster!r}",
            f"expected server {pod.nats_server_name!r} in cluster {outputs.nats.cluster!r}:"
            " the container runs another config",
            "cat the config the container mounts (nats.json) and rerun `./scripts/up.sh STACK`",
        ))  # fmt: skip
    else:
        findings.append(passed("nats.server", code, f"{name} in {cluster}"))

    # Routes: by the peer's server name where the server reports it (2.10+), else by the
    # server ID that the peer's own varz gave.
    names_by_id = {v.get("server_id"): v.get("server_name") for v in shot.varz.values()}
    routed = set()
    for route in shot.routez[code].get("routes") or []:
        routed.add(route.get("remote_name") or names_by_id.get(route.get("remote_id")))
    expected = {p.nats_server_name for c, p in outputs.pods.items() if c != code}
    missing = sorted(expected - routed)
    if missing:
        findings.append(failed(
            "nats.routes", code, f"no route to {', '.join(missing)}",
            NOT_FORMING_CAUSE, NOT_FORMING_FIX.replace("<code>", code),
        ))  # fmt: skip
    else:
        findings.append(passed("nats.routes", code, f"routes to all {len(expected)} peers"))

    meta = shot.jsz[code].get("meta_cluster") or {}
    size, leader = meta.get("cluster_size"), meta.get("leader")
    if not leader or size != len(outputs.pods):
        findings.append(failed(
            "nats.jetstream", code, f"meta leader {leader or 'none'}, meta group of {size}",
            "JetStream has no quorum: fewer servers in the meta group than pods (a server is"
            " down, or did not join)",
            "bring every NATS server up (see nats.server/nats.routes); a server that left"
            " for good must be removed: nats server raft peer-remove",
        ))  # fmt: skip
    else:
        findings.append(passed("nats.jetstream", code, f"meta leader {leader}, {size} servers"))
    return findings


def _streams_seen(shot: Snapshot) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """Each stream as every reachable server holding a replica reports it."""
    seen: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for code, jsz in shot.jsz.items():
        server = shot.varz[code].get("server_name") or ""
        for account in jsz.get("account_details") or []:
            for detail in account.get("stream_detail") or []:
                seen.setdefault(detail["name"], []).append((server, detail))
    return seen


def _stream_findings(context: Context, shared: SharedSnapshot) -> list[Finding]:
    shot = shared.get()
    if not shot.jsz:
        raise HttpError("no NATS server answered on its monitoring port")
    seen = _streams_seen(shot)
    pods_by_tag = {f"territory:{code}": code for code in context.outputs.pods}
    return [_stream_finding(stream, seen.get(stream.name, []), pods_by_tag, context)
            for stream in context.outputs.nats.streams]  # fmt: skip


def _stream_finding(
    stream: StreamOutputs,
    reports: list[tuple[str, dict[str, Any]]],
    pods_by_tag: dict[str, str],
    context: Context,
) -> Finding:
    check = f"nats.stream.{stream.name}"
    owner = next((pods_by_tag[tag] for tag in stream.placement_tags if tag in pods_by_tag), None)
    scope = owner or MESH
    if not reports:
        return failed(
            check, scope, "no reachable server holds it",
            "the stream job did not run or failed, or every server holding it is down",
            "rerun `./scripts/up.sh STACK` (its stream job is idempotent) and read its output",
        )
    # The leader's own report has the freshest view of its followers.
    leaders = [d for server, d in reports if (d.get("cluster") or {}).get("leader") == server]
    detail = leaders[0] if leaders else reports[0][1]
    config = detail.get("config") or {}
    group = detail.get("cluster") or {}
    leader, followers = group.get("leader"), group.get("replicas") or []
    problems = []
    if config.get("num_replicas") != stream.replicas:
        problems.append(f"{config.get('num_replicas')} replicas configured, not {stream.replicas}")
    tags = (config.get("placement") or {}).get("tags") or []
    if sorted(tags) != sorted(stream.placement_tags):
        problems.append(f"placement tags {tags}, not {stream.placement_tags}")
    if not leader:
        problems.append("no leader")
    elif owner is not None and leader != context.outputs.pods[owner].nats_server_name:
        problems.append(f"led by {leader}, not by its own pod's server")
    if len(followers) != stream.replicas - 1:
        problems.append(f"{len(followers)} followers, expected {stream.replicas - 1}")
    lagging = [f"{f.get('name')} (lag {f.get('lag', 0)})" for f in followers
               if not f.get("current") or f.get("lag")]  # fmt: skip
    if lagging:
        problems.append(f"not current: {', '.join(lagging)}")
    if problems:
        return failed(
            check, scope, "; ".join(problems),
            "a replica's server is down or cut off, or the stream's config drifted",
            "check nats.server/nats.routes first; a drifted config is reset by"
            " `./scripts/up.sh STACK` (the stream job updates it)",
        )
    return passed(
        check, scope,
        f"R{stream.replicas}, leader {leader}, {len(followers)} current follower(s)"
        + (f", placement {tags}" if tags else ""),
    )  # fmt: skip
