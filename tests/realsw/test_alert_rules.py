"""The generated alert rules (`alerts.yml`) pass the real `promtool check rules`, and every
alert fires on failing series, with exactly the labels and annotations it carries, and stays
silent on healthy ones (`promtool test rules`).

Input series look like what the exporters the program runs expose (metric names and label
sets from their sources, see render/alerts.py), with the target labels the generated
prometheus.yml adds (`job`, `instance`, `pod`/`territory` or `host`). Each case is one
promtool unit-test file, generated from dicts.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deployments import (
    backups_deployment,
    dev_deployment,
    nordic_deployment,
    with_pod,
)
from tests.support.tools import run_checker
from unityplan_infra.render.alerts import (
    ALERT_RULES_FILE,
    BACKUP_DRILL_FAILED,
    BACKUP_FAILED,
    BACKUP_NEVER_RAN,
    BACKUP_TOO_OLD,
    HOST_DISK_FILLING_UP,
    HOST_MEMORY_LOW,
    JETSTREAM_REPLICA_LAGGING,
    JETSTREAM_STREAM_NO_LEADER,
    NATS_CLUSTER_SMALL,
    NATS_SERVER_UNREACHABLE,
    POSTGRES_DOWN,
    POSTGRES_NEAR_MAX_CONNECTIONS,
    REDIS_DOWN,
    REDIS_MEMORY_HIGH_NO_LIMIT,
    REDIS_MEMORY_NEAR_LIMIT,
    TARGET_DOWN,
    WIREGUARD_PEER_NO_HANDSHAKE,
    alert_rules,
    render_alert_rules,
)
from unityplan_infra.topology.plan import Deployment, HostPlan, PodPlan

pytestmark = pytest.mark.timeout(60)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
DEV, NORDIC = dev_deployment(), nordic_deployment()
BACKED_UP = backups_deployment("dev")
FOUR_PODS = with_pod("dev", {"code": "fi", "name": "finland", "slot": 4})
GIB = 1024**3
CONFIG = (
    "docker exec monitoring-prometheus cat /config/prometheus.yml; after a change:"
    " curl -X POST <prometheus>/-/reload"
)


# --- series as the exporters expose them --------------------------------------------
def series(name: str, labels: Mapping[str, str]) -> str:
    inner = ",".join(f"{key}={json.dumps(value)}" for key, value in labels.items())
    return f"{name}{{{inner}}}"


def pod_target(pod: PodPlan, job: str) -> dict[str, str]:
    """Labels prometheus.yml gives a pod exporter's series."""
    return {"job": job, "instance": pod.exporter_target(job), "pod": pod.pod.name,
            "territory": pod.code, "host": pod.host}  # fmt: skip


def host_target(host: HostPlan, job: str = "node") -> dict[str, str]:
    instance = host.node_exporter_target() if job == "node" else host.cadvisor_target()
    return {"job": job, "instance": instance, "host": host.name}


def jsz_server(pod: PodPlan, meta_leader: str) -> dict[str, str]:
    """Labels of `jetstream_server_*` (prometheus-nats-exporter 0.16, collector/jsz.go)."""
    name = pod.nats_server_name
    labels = {**pod_target(pod, "nats"), "server_id": f"http://{name}:8222",
              "server_name": name, "cluster": "unityplan-global"}  # fmt: skip
    if meta_leader:  # an empty label is no label
        labels["meta_leader"] = meta_leader
    labels["is_meta_leader"] = str(meta_leader == name).lower()
    return labels


def jsz_stream(pod: PodPlan, stream: str, leader: str, meta_leader: str) -> dict[str, str]:
    """Labels of `jetstream_stream_*`: one series per replica the scraped server holds."""
    labels = {**jsz_server(pod, meta_leader), "account": "$G", "account_id": "$G",
              "stream_name": stream, "stream_raft_group": f"S-R3F-{stream}"}  # fmt: skip
    if leader:
        labels["stream_leader"] = leader
    labels["is_stream_leader"] = str(leader == pod.nats_server_name).lower()
    return labels


def filesystem(host: HostPlan, fstype: str = "ext4", mountpoint: str = "/") -> dict[str, str]:
    """node-exporter 1.8 labels (device_error is empty, i.e. absent, on a healthy disk)."""
    device = "/dev/sda1" if fstype == "ext4" else fstype
    return {**host_target(host), "device": device, "fstype": fstype, "mountpoint": mountpoint}


def alert(labels: Mapping[str, str], severity: str, **annotations: str) -> dict[str, Any]:
    return {"exp_labels": {**labels, "severity": severity}, "exp_annotations": annotations}


@dataclass(frozen=True)
class Case:
    name: str
    alert: str
    deployment: Deployment
    series: dict[str, str]  # series -> promtool values ("1x10", "0+60x20", ...)
    eval_time: str
    expected: list[dict[str, Any]] = field(default_factory=list)  # empty: must not fire
    quiet_at: tuple[str, ...] = ()  # more evaluation times at which nothing fires

    @property
    def id(self) -> str:
        return f"{self.alert}-{self.name}"


def cases() -> list[Case]:
    dk, no, se = DEV.pods
    _, nno, nse = NORDIC.pods
    local = DEV.hosts[0]
    found: list[Case] = []

    # --- TargetDown ------------------------------------------------------------------
    nats_no = pod_target(no, "nats")
    node_se = host_target(NORDIC.hosts[2])
    prometheus = {"job": "prometheus", "instance": "localhost:9090"}
    found += [
        Case("pod-exporter", TARGET_DOWN, DEV, {series("up", nats_no): "1 0x10"}, "5m",
             quiet_at=("3m",), expected=[
            alert(nats_no, "critical",
                  summary="nats target monitoring-nats-exporter-no:7777 is down (pod norway) (host local)",
                  runbook="docker exec monitoring-prometheus wget -qO-"
                  " http://monitoring-nats-exporter-no:7777/metrics | head (on the monitoring"
                  " host); docker logs monitoring-nats-exporter-no; " + CONFIG),
        ]),
        Case("multi-host-pod-exporter", TARGET_DOWN, NORDIC,
             {series("up", pod_target(nse, "postgres")): "0x10"}, "5m", [
            alert(pod_target(nse, "postgres"), "critical",
                  summary="postgres target 10.0.3.1:9189 is down (pod sweden) (host se)",
                  runbook="docker exec monitoring-prometheus wget -qO- http://10.0.3.1:9189/metrics"
                  " | head (on the monitoring host); on host se: docker logs"
                  " monitoring-postgres-exporter-se; " + CONFIG),
        ]),
        Case("host-exporter", TARGET_DOWN, NORDIC, {series("up", node_se): "0x10"}, "5m", [
            alert(node_se, "critical",
                  summary="node target 10.0.3.1:9100 is down (host se)",
                  runbook="docker exec monitoring-prometheus wget -qO- http://10.0.3.1:9100/metrics"
                  " | head (on the monitoring host); on host se: docker ps -a --filter"
                  " name=monitoring- (is the host up?); " + CONFIG),
        ]),
        Case("other-job", TARGET_DOWN, DEV, {series("up", prometheus): "0x10"}, "5m", [
            alert(prometheus, "critical",
                  summary="prometheus target localhost:9090 is down",
                  runbook="docker exec monitoring-prometheus wget -qO-"
                  " http://localhost:9090/metrics | head (on the monitoring host); " + CONFIG),
        ]),
        Case("all-up", TARGET_DOWN, DEV, {
            series("up", nats_no): "1x10", series("up", prometheus): "1x10",
            series("up", host_target(local)): "1x10",
        }, "5m"),
        Case("down-shorter-than-3m", TARGET_DOWN, DEV,
             {series("up", nats_no): "1 1 1 0 0 0 1 1 1"}, "4m", quiet_at=("5m", "6m", "7m")),
    ]  # fmt: skip

    # --- NATS ------------------------------------------------------------------------
    def servers(pods: tuple[PodPlan, ...], leaders: Mapping[str, str]) -> dict[str, str]:
        return {series("jetstream_server_total_streams", jsz_server(pod, leaders[pod.code])):
                "2x10" for pod in pods}  # fmt: skip

    leader = no.nats_server_name
    agreed = {"dk": leader, "no": leader, "se": leader}
    up_nats = {series("up", pod_target(pod, "nats")): "1x10" for pod in DEV.pods}
    found += [
        Case("server-gone", NATS_SERVER_UNREACHABLE, DEV,
             {**up_nats, **servers((no, se), agreed)}, "5m", [
            alert(pod_target(dk, "nats"), "critical",
                  summary="NATS server of pod denmark (dk) does not answer its exporter",
                  runbook="docker ps -a --filter name=service-nats-dk;"
                  " docker logs service-nats-dk | tail -50"),
        ]),
        Case("multi-host-server-gone", NATS_SERVER_UNREACHABLE, NORDIC,
             {series("up", pod_target(nno, "nats")): "1x10"}, "5m", [
            alert(pod_target(nno, "nats"), "critical",
                  summary="NATS server of pod norway (no) does not answer its exporter",
                  runbook="on host no: docker ps -a --filter name=service-nats-no;"
                  " docker logs service-nats-no | tail -50"),
        ]),
        Case("all-answer", NATS_SERVER_UNREACHABLE, DEV,
             {**up_nats, **servers(DEV.pods, agreed)}, "5m"),
    ]  # fmt: skip
    not_forming = (
        "for each pod ({codes}): docker logs service-nats-<code> | grep -i route; {network};"
        " curl <nats monitor>/varz | jq .cluster; then restart the NATS containers one at a time"
    )
    mesh = "docker network inspect unityplan-mesh-network (every service-nats-<code> attached)"
    found += [
        Case("one-without-meta-leader", NATS_CLUSTER_SMALL, DEV,
             servers(DEV.pods, {**agreed, "se": ""}), "5m",
             quiet_at=("1m",), expected=[
            alert({}, "critical",
                  summary="NATS cluster has 2 of 3 servers in JetStream quorum",
                  runbook=not_forming.format(codes="dk, no, se", network=mesh)),
        ]),
        Case("no-jetstream-series", NATS_CLUSTER_SMALL, NORDIC, {
            series("up", pod_target(pod, "nats")): "1x10" for pod in NORDIC.pods
        }, "5m", [
            alert({}, "critical",
                  summary="NATS cluster has 0 of 3 servers in JetStream quorum",
                  runbook=not_forming.format(codes="dk, no, se",
                                             network="wg show wg0 on each host (handshakes)")),
        ]),
        Case("fourth-pod-not-joined", NATS_CLUSTER_SMALL, FOUR_PODS,
             servers(DEV.pods, agreed), "5m", [
            alert({}, "critical",
                  summary="NATS cluster has 3 of 4 servers in JetStream quorum",
                  runbook=not_forming.format(codes="dk, no, se, fi", network=mesh)),
        ]),
        Case("all-agree", NATS_CLUSTER_SMALL, DEV, servers(DEV.pods, agreed), "5m"),
        Case("leader-change-blip", NATS_CLUSTER_SMALL, DEV, {
            **servers((dk, no), agreed),
            # For 90 s, se still names the old meta leader (its series ends: stale marker).
            series("jetstream_server_total_streams", jsz_server(se, dk.nats_server_name)):
            "2 2 stale",
            series("jetstream_server_total_streams", jsz_server(se, leader)): "_ _ 2x8",
        }, "1m", quiet_at=("2m", "3m", "5m")),
    ]  # fmt: skip

    stream = "GLOBAL_EVENTS"

    def stream_series(
        values: Mapping[str, str], leader: str, meta_leader: str = leader
    ) -> dict[str, str]:
        by_code = {pod.code: pod for pod in DEV.pods}
        return {
            series("jetstream_stream_last_seq",
                   jsz_stream(by_code[code], stream, leader, meta_leader)): value
            for code, value in values.items()
        }  # fmt: skip

    no_leader = {"account": "$G", "stream_name": stream}
    found += [
        Case("quorum-lost", JETSTREAM_STREAM_NO_LEADER, DEV,
             stream_series({"dk": "100x10", "no": "100x10"}, leader="", meta_leader=""), "5m", [
            alert(no_leader, "critical",
                  summary="JetStream stream GLOBAL_EVENTS has no leader"
                  " (2 replicas up without one)",
                  runbook="a stream needs a majority of its replicas' servers: see NatsClusterSmall"
                  " first; nats stream info GLOBAL_EVENTS;"
                  " docker logs service-nats-<code> | grep -i GLOBAL_EVENTS"),
        ]),
        Case("led", JETSTREAM_STREAM_NO_LEADER, DEV,
             stream_series({"dk": "100x10", "no": "100x10", "se": "100x10"}, leader=leader),
             "5m"),
        Case("one-replica-cut-off", JETSTREAM_STREAM_NO_LEADER, DEV, {
            **stream_series({"dk": "100x10", "no": "100x10"}, leader=leader),
            **stream_series({"se": "90x10"}, leader="", meta_leader=""),
        }, "5m"),
    ]  # fmt: skip
    lagging = {"account": "$G", "stream_name": stream, "pod": "sweden", "territory": "se"}
    found += [
        Case("replica-stuck", JETSTREAM_REPLICA_LAGGING, DEV, stream_series(
            {"dk": "100+10x20", "no": "100+10x20", "se": "100x20"}, leader=leader), "10m", [
            alert(lagging, "warning",
                  summary="JetStream stream GLOBAL_EVENTS: the replica on pod sweden (se) is 90"
                  " messages behind where the others were 1m ago",
                  runbook="nats stream info GLOBAL_EVENTS (replicas: current, lag);"
                  " docker logs service-nats-se | grep -i -e catchup -e GLOBAL_EVENTS; its disk"
                  " (HostDiskFillingUp) and its routes (docker logs ... | grep -i route)"),
        ]),
        Case("in-step", JETSTREAM_REPLICA_LAGGING, DEV, stream_series(
            {"dk": "100+10x20", "no": "100+10x20", "se": "100+10x20"}, leader=leader), "10m"),
        # Exporters are scraped at different moments: se's copy is always seen a few
        # messages behind, but never behind where the leader was a minute earlier.
        Case("scrape-skew", JETSTREAM_REPLICA_LAGGING, DEV, stream_series(
            {"dk": "100+10x20", "no": "100+10x20", "se": "95+10x20"}, leader=leader), "10m"),
        Case("idle-stream", JETSTREAM_REPLICA_LAGGING, DEV, stream_series(
            {"dk": "100x20", "no": "100x20", "se": "100x20"}, leader=leader), "10m"),
    ]  # fmt: skip

    # --- PostgreSQL ------------------------------------------------------------------
    pg_dk = pod_target(dk, "postgres")
    psql_dk = "docker exec -it service-postgres-dk psql -U unityplan -d unityplan_dk"

    def connections(active: int, idle: int, pod: PodPlan = dk) -> dict[str, str]:
        labels = {**pod_target(pod, "postgres"), "server": f"service-postgres-{pod.code}:5432",
                  "datname": pod.database, "usename": "unityplan"}  # fmt: skip
        return {
            series("pg_stat_activity_count",
                   {**labels, "state": "active", "application_name": "synapse"}): f"{active}x10",
            series("pg_stat_activity_count",
                   {**labels, "state": "idle", "application_name": "synapse"}): f"{idle}x10",
            series("pg_settings_max_connections",
                   {**pod_target(pod, "postgres"), "server": labels["server"]}): "100x10",
        }  # fmt: skip

    found += [
        Case("down", POSTGRES_DOWN, DEV, {series("pg_up", pg_dk): "1 1 0x10"}, "5m",
             quiet_at=("2m",), expected=[
            alert(pg_dk, "critical",
                  summary="PostgreSQL of pod denmark (dk) is down or refuses its exporter",
                  runbook=f"docker logs service-postgres-dk; {psql_dk}"),
        ]),
        Case("up", POSTGRES_DOWN, DEV, {series("pg_up", pg_dk): "1x10"}, "5m"),
        Case("90-of-100", POSTGRES_NEAR_MAX_CONNECTIONS, DEV, connections(50, 40), "10m", [
            alert({"pod": "denmark", "territory": "dk"}, "warning",
                  summary="PostgreSQL of pod denmark (dk) uses 90% of max_connections",
                  runbook=f"{psql_dk} -c 'SELECT usename, application_name, state, count(*)"
                  " FROM pg_stat_activity GROUP BY 1, 2, 3 ORDER BY 4 DESC'"),
        ]),
        # 50 % on dk, and on no 80 %: the threshold itself, not above it.
        Case("50-and-80-of-100", POSTGRES_NEAR_MAX_CONNECTIONS, DEV,
             {**connections(30, 20), **connections(70, 10, no)}, "10m"),
    ]  # fmt: skip

    # --- Redis -----------------------------------------------------------------------
    redis_no, nredis_no = pod_target(no, "redis"), pod_target(nno, "redis")
    info = (
        'docker exec service-redis-no sh -c \'REDISCLI_AUTH="$REDIS_PASSWORD" redis-cli INFO'
        " memory'"
    )

    def redis(target: dict[str, str], used: float, maximum: float) -> dict[str, str]:
        return {series("redis_memory_used_bytes", target): f"{used:.0f}x10",
                series("redis_memory_max_bytes", target): f"{maximum:.0f}x10"}  # fmt: skip

    def memory(host: HostPlan, total: float, available: float) -> dict[str, str]:
        labels = host_target(host)
        return {series("node_memory_MemTotal_bytes", labels): f"{total:.0f}x20",
                series("node_memory_MemAvailable_bytes", labels): f"{available:.0f}x20"}  # fmt: skip

    found += [
        Case("down", REDIS_DOWN, DEV, {series("redis_up", redis_no): "0x10"}, "5m", [
            alert(redis_no, "critical",
                  summary="Redis of pod norway (no) is down or refuses its exporter",
                  runbook="docker logs service-redis-no"),
        ]),
        Case("up", REDIS_DOWN, DEV, {series("redis_up", redis_no): "1x10"}, "5m"),
        Case("95-percent", REDIS_MEMORY_NEAR_LIMIT, DEV, redis(redis_no, 0.95 * GIB, GIB), "10m", [
            alert(redis_no, "warning",
                  summary="Redis of pod norway (no) uses 95% of its maxmemory",
                  runbook=f"{info}; raise maxmemory or find what grows (redis-cli --bigkeys)"),
        ]),
        Case("half", REDIS_MEMORY_NEAR_LIMIT, DEV, redis(redis_no, 0.5 * GIB, GIB), "10m"),
        Case("unlimited", REDIS_MEMORY_NEAR_LIMIT, DEV, redis(redis_no, 7 * GIB, 0), "10m"),
        Case("unlimited-single-host", REDIS_MEMORY_HIGH_NO_LIMIT, DEV, {
            **redis(redis_no, 5 * GIB, 0), **redis(pod_target(dk, "redis"), GIB, 0),
            **memory(local, 8 * GIB, 2 * GIB),
        }, "10m", [
            alert({**redis_no, "host": "local"}, "warning",
                  summary="Redis of pod norway (no) has no maxmemory and uses 62.5% of host"
                  " local's memory",
                  runbook=f"{info}; an AOF rewrite forks Redis and can need as much again: set"
                  " maxmemory or give the host more memory"),
        ]),
        Case("unlimited-multi-host", REDIS_MEMORY_HIGH_NO_LIMIT, NORDIC, {
            **redis(nredis_no, 3 * GIB, 0), **memory(NORDIC.hosts[1], 4 * GIB, GIB),
            **memory(NORDIC.hosts[0], 16 * GIB, 8 * GIB),
        }, "10m", [
            alert({**nredis_no, "host": "no"}, "warning",
                  summary="Redis of pod norway (no) has no maxmemory and uses 75% of host"
                  " no's memory",
                  runbook=f"on host no: {info}; an AOF rewrite forks Redis and can need as much"
                  " again: set maxmemory or give the host more memory"),
        ]),
        Case("unlimited-small", REDIS_MEMORY_HIGH_NO_LIMIT, DEV,
             {**redis(redis_no, GIB, 0), **memory(local, 8 * GIB, 4 * GIB)}, "10m"),
        Case("limited", REDIS_MEMORY_HIGH_NO_LIMIT, DEV,
             {**redis(redis_no, 5 * GIB, 6 * GIB), **memory(local, 8 * GIB, 2 * GIB)}, "10m"),
    ]  # fmt: skip

    # --- hosts -----------------------------------------------------------------------
    nordic_se = NORDIC.hosts[2]
    root = filesystem(nordic_se)
    disk_runbook = (
        "on host se: df -h /; docker system df -v (volumes pod-<code>-<kind>-data: JetStream,"
        " PostgreSQL, kubo); docker image prune"
    )

    def disk(avail: str, labels: dict[str, str] = root) -> dict[str, str]:
        return {series("node_filesystem_avail_bytes", labels): avail,
                series("node_filesystem_size_bytes", labels): "100000000000x480",
                series("node_filesystem_readonly", labels): "0x480"}  # fmt: skip

    found += [
        # 30 GB free of 100, losing 1.8 GB an hour: empty in ~17 h at 7 h.
        Case("within-a-day", HOST_DISK_FILLING_UP, NORDIC, disk("30000000000-30000000x480"),
             "7h", [
            alert(root, "warning",
                  summary="host se: / will be full within 24 hours at the rate of the last 6",
                  runbook=disk_runbook),
        ]),
        # 30 GB free, losing 6 GB an hour: 12 GB left at 3 h, so both severities.
        Case("within-hours", HOST_DISK_FILLING_UP, NORDIC, disk("30000000000-100000000x480"),
             "3h", [
            alert(root, "warning",
                  summary="host se: / will be full within 24 hours at the rate of the last 6",
                  runbook=disk_runbook),
            alert(root, "critical",
                  summary="host se: / will be full within 4 hours at the rate of the last 6",
                  runbook=disk_runbook),
        ]),
        Case("steady", HOST_DISK_FILLING_UP, NORDIC, disk("30000000000+0x480"), "7h"),
        Case("tmpfs-filling", HOST_DISK_FILLING_UP, NORDIC, disk(
            "30000000000-100000000x480", filesystem(nordic_se, "tmpfs", "/run")), "3h"),
        Case("plenty-free", HOST_DISK_FILLING_UP, NORDIC,
             disk("80000000000-10000000x480"), "7h"),
        Case("5-percent", HOST_MEMORY_LOW, DEV, memory(local, 8 * GIB, 0.05 * 8 * GIB), "15m", [
            alert(host_target(local), "warning",
                  summary="host local has only 5% of its memory available",
                  runbook="on host local: docker stats --no-stream; free -m"),
        ]),
        Case("half-free", HOST_MEMORY_LOW, DEV, memory(local, 8 * GIB, 4 * GIB), "15m"),
    ]  # fmt: skip

    # --- WireGuard (multi-host only) -------------------------------------------------
    def peer(host: HostPlan, other: HostPlan) -> dict[str, str]:
        """MindFlavor exporter labels (default flags) plus the scrape target's."""
        return {"job": "wireguard", "instance": f"{host.vpn_address}:9586", "host": host.name,
                "interface": "wg0", "public_key": f"{other.name}-public-key=",
                "allowed_ips": f"10.0.{other.slot}.0/24"}  # fmt: skip

    ndk_host, nno_host, nse_host = NORDIC.hosts
    stale, never = peer(ndk_host, nno_host), peer(ndk_host, nse_host)
    wg_runbook = (
        "on host dk: wg show wg0 (latest handshake, endpoint, transfer); ping the peer's"
        " 10.0.<slot>.1; on the peer: systemctl status wg-quick@wg0; the peer's 51820/udp must"
        " be reachable (cloud firewall)"
    )
    peers = "(peers: 10.0.1.0/24 = dk, 10.0.2.0/24 = no, 10.0.3.0/24 = se)"
    found += [
        Case("stale-and-never", WIREGUARD_PEER_NO_HANDSHAKE, NORDIC, {
            series("wireguard_latest_handshake_seconds", stale): "60x20",
            series("wireguard_latest_handshake_seconds", never): "0x20",
        }, "10m", [
            alert(stale, "critical",
                  summary="host dk: no WireGuard handshake with peer 10.0.2.0/24 for 9m 0s"
                  f" {peers}",
                  runbook=wg_runbook),
            alert(never, "critical",
                  summary="host dk: no WireGuard handshake with peer 10.0.3.0/24 for 10m 0s"
                  f" {peers}",
                  runbook=wg_runbook),
        ]),
        # A handshake every 2 minutes (keepalives flowing): the value is the handshake time.
        Case("renewing", WIREGUARD_PEER_NO_HANDSHAKE, NORDIC, {
            series("wireguard_latest_handshake_seconds", stale): "0 0 120 120 240 240 360 360"
            " 480 480 600 600",
        }, "11m"),
        Case("single-host-has-none", WIREGUARD_PEER_NO_HANDSHAKE, DEV, {
            series("wireguard_latest_handshake_seconds", stale): "0x20",
        }, "10m"),
    ]  # fmt: skip

    # --- backups (textfile metrics of the backup job, scraped with the host's node job) -----
    bdk, bno, bse = BACKED_UP.pods

    def backup(pod: PodPlan) -> dict[str, str]:
        return {**host_target(BACKED_UP.hosts[0]), "pod": pod.pod.name, "territory": pod.code}

    def ran(pod: PodPlan, minutes: int = 1700) -> dict[str, str]:
        """A backup run reported every minute (its value: a Unix time)."""
        return {series("unityplan_backup_last_run_timestamp_seconds", backup(pod)):
                f"0+60x{minutes}"}  # fmt: skip

    every_pod_ran = {**ran(bdk), **ran(bno), **ran(bse)}
    def logs(code: str) -> str:
        return f"docker logs service-backup-{code} | tail -50"

    found += [
        # Last success at t=0; at 27 h it is 27 h old (> 26 h).
        Case("a-day-and-more", BACKUP_TOO_OLD, BACKED_UP, {
            series("unityplan_backup_last_success_timestamp_seconds", backup(bno)): "0x1700",
        }, "27h", quiet_at=("25h",), expected=[
            alert(backup(bno), "critical",
                  summary="pod norway (no): last successful backup 1d 3h 0m 0s ago",
                  runbook=f"{logs('no')}; the S3 endpoint and credentials (backups.s3,"
                  " backupS3AccessKey/backupS3SecretKey); README, Backups and restore"),
        ]),
        # Succeeding every hour: never more than an hour old.
        Case("recent", BACKUP_TOO_OLD, BACKED_UP, {
            series("unityplan_backup_last_success_timestamp_seconds", backup(bno)):
            "0+3600x30",
        }, "27h"),
        Case("last-run-failed", BACKUP_FAILED, BACKED_UP, {
            series("unityplan_backup_last_run_success", backup(bse)): "1 1 0 0",
        }, "3m", quiet_at=("1m",), expected=[
            alert(backup(bse), "warning",
                  summary="pod sweden (se): the last backup run failed",
                  runbook=f"{logs('se')} (each failure names the step and the fix); the next run"
                  " retries on schedule"),
        ]),
        Case("runs-succeed", BACKUP_FAILED, BACKED_UP, {
            series("unityplan_backup_last_run_success", backup(bse)): "1x10",
        }, "10m"),
        # dk and se report runs, no does not: after 26 h, no's absence pages.
        Case("one-pod-silent", BACKUP_NEVER_RAN, BACKED_UP, {**ran(bdk), **ran(bse)},
             "26h10m", quiet_at=("25h50m",), expected=[
            alert({"territory": "no"}, "critical",
                  summary="pod norway (no) has reported no backup run for 26h",
                  runbook="docker logs service-backup-no | tail -50; is service-backup-no"
                  " running (docker ps -a)? node-exporter reads its metrics from the"
                  " unityplan-node-textfile volume"),
        ]),
        Case("all-report", BACKUP_NEVER_RAN, BACKED_UP, every_pod_ran, "27h"),
        Case("drill-failed", BACKUP_DRILL_FAILED, BACKED_UP, {
            series("unityplan_backup_drill_last_run_success",
                   {**host_target(BACKED_UP.hosts[0]), "territory": "dk"}): "1 0 0",
        }, "2m", quiet_at=("0m",), expected=[
            alert({**host_target(BACKED_UP.hosts[0]), "territory": "dk"}, "critical",
                  summary="pod dk: the restore drill failed: the latest backup did not restore",
                  runbook=f"{logs('dk')} (the drill's lines name the database and the error);"
                  " restore a pod by hand only from a snapshot a drill passed"),
        ]),
        Case("drill-passed", BACKUP_DRILL_FAILED, BACKED_UP, {
            series("unityplan_backup_drill_last_run_success",
                   {**host_target(BACKED_UP.hosts[0]), "territory": "dk"}): "1x5",
        }, "5m"),
    ]  # fmt: skip
    return found


CASES = cases()


def promtool_test(tmp_path: Path, case: Case) -> subprocess.CompletedProcess[str]:
    rules = tmp_path / ALERT_RULES_FILE
    rules.write_text(render_alert_rules(case.deployment))
    unit = {
        "rule_files": [str(rules)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": name, "values": values}
                             for name, values in case.series.items()],
            "alert_rule_test": [
                {"eval_time": case.eval_time, "alertname": case.alert,
                 "exp_alerts": case.expected},
                *({"eval_time": time, "alertname": case.alert, "exp_alerts": []}
                  for time in case.quiet_at),
            ],
        }],
    }  # fmt: skip
    path = tmp_path / "test.yml"
    path.write_text(yaml.safe_dump(unit, sort_keys=False))
    return run_checker([PROMTOOL, "test", "rules", str(path)])


def promtool_check(path: Path) -> subprocess.CompletedProcess[str]:
    return run_checker([PROMTOOL, "check", "rules", str(path)])


@pytest.mark.parametrize("deployment", [DEV, NORDIC], ids=["dev", "nordic"])
def test_rendered_rules_pass_promtool(tmp_path: Path, deployment: Deployment) -> None:
    path = tmp_path / ALERT_RULES_FILE
    path.write_text(render_alert_rules(deployment))
    result = promtool_check(path)
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    # Negative control: the same check must fail on a broken rule, or passing means nothing.
    rules = alert_rules(DEV)
    rules["groups"][1]["rules"][0]["expr"] = "up == "
    path = tmp_path / ALERT_RULES_FILE
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    result = promtool_check(path)
    assert result.returncode != 0, result.stdout
    assert "SUCCESS" not in result.stdout
    assert "parse error" in result.stdout


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_alert(tmp_path: Path, case: Case) -> None:
    result = promtool_test(tmp_path, case)
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout


def test_promtool_test_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    # Negative control for the cases above: a firing alert expected silent, and a silent
    # one expected firing, must both fail.
    firing = next(case for case in CASES if case.alert == TARGET_DOWN and case.expected)
    silent = next(case for case in CASES if case.alert == TARGET_DOWN and not case.expected)
    for wrong in (
        Case(firing.name, firing.alert, firing.deployment, firing.series, firing.eval_time),
        Case(silent.name, silent.alert, silent.deployment, silent.series, silent.eval_time,
             firing.expected),
    ):  # fmt: skip
        result = promtool_test(tmp_path, wrong)
        assert result.returncode != 0, result.stdout
        assert "FAILED" in result.stdout


def test_every_alert_has_a_firing_and_a_silent_case() -> None:
    names = {
        rule["alert"]
        for deployment in (DEV, NORDIC, BACKED_UP)
        for group in alert_rules(deployment)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    assert {case.alert for case in CASES if case.expected} == names
    assert {case.alert for case in CASES if not case.expected} == names


def test_cluster_size_follows_the_pods() -> None:
    def expr(deployment: Deployment) -> str:
        groups = alert_rules(deployment)["groups"]
        (rule,) = (rule for group in groups for rule in group["rules"]
                   if rule.get("alert") == NATS_CLUSTER_SMALL)  # fmt: skip
        return str(rule["expr"])

    assert expr(DEV).endswith(" < 3")
    assert expr(FOUR_PODS).endswith(" < 4")


def test_wireguard_group_only_in_multi_host() -> None:
    def groups(deployment: Deployment) -> list[str]:
        return [group["name"] for group in alert_rules(deployment)["groups"]]

    assert "unityplan-wireguard" not in groups(DEV)
    assert "unityplan-wireguard" in groups(NORDIC)


def test_pod_host_series_keep_the_code_no_a_string() -> None:
    # The Norway problem: PyYAML must quote "no", or Prometheus would see a boolean.
    text = render_alert_rules(NORDIC)
    assert "territory: 'no'" in text
    assert "host: 'no'" in text
    assert yaml.safe_load(text)["groups"][0]["rules"][1]["labels"] == {
        "pod": "norway",
        "territory": "no",
        "host": "no",
    }


def test_backup_alerts_only_with_backups() -> None:
    def groups(deployment: Deployment) -> set[str]:
        return {group["name"] for group in alert_rules(deployment)["groups"]}

    assert "unityplan-backups" not in groups(DEV) | groups(NORDIC)
    assert "unityplan-backups" in groups(BACKED_UP)
