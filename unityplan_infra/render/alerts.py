"""Prometheus alert rules (`alerts.yml`, beside `prometheus.yml` in the config dir).

One group per area: scrape targets, NATS/JetStream, PostgreSQL, Redis, hosts and, in the
multi-host layout only, WireGuard. Every alert carries `severity` and the identifying labels
of the series it comes from (`pod`/`territory` for pod exporters, `host` for host
exporters); its annotations are a `summary` and a `runbook` hint drawn from the reference
guide's Troubleshooting section.

Metric names are those of the exporters the program runs, read in their sources (first at
the versions named below, checked again at the current defaults: nats-exporter 0.20.1,
postgres-exporter v0.20.1, redis_exporter v1.88.0, node-exporter v1.12.1):

- nats `natsio/prometheus-nats-exporter:0.16.0` with `-jsz=all` (collector/jsz.go): one
  `jetstream_server_*` series per server (labels `server_name`, `cluster`, `meta_leader`,
  `is_meta_leader`) and, for every stream *replica the scraped server holds*,
  `jetstream_stream_*` (plus `account`, `stream_name`, `stream_leader`,
  `is_stream_leader`, `stream_raft_group`). `stream_leader` is the leader as that
  replica sees it: empty while the stream has none. The exporter exports no replica lag and
  no cluster size (those are only in the JSON), so both are derived from these series. Its
  `gnatsd_varz_*` gauges keep their last value when the server stops answering, so they
  cannot tell a dead server; the `jetstream_*` series disappear instead. Route counts are
  no cluster size either: nats-server 2.10 pools routes (8 route connections in a healthy
  cluster of three, measured on 2.10).
- `postgres-exporter:v0.16.0`: `pg_up`, `pg_stat_activity_count` (by `datname`, `state`,
  `usename`, `application_name`, `server`), `pg_settings_max_connections` (`server`).
- `redis_exporter:v1.67.0`: `redis_up`, `redis_memory_used_bytes` (INFO used_memory),
  `redis_memory_max_bytes` (INFO maxmemory: 0 means unlimited, the program's setting).
- `node-exporter:v1.8.2`: `node_filesystem_{avail,size}_bytes`, `node_filesystem_readonly`
  (labels `device`, `mountpoint`, `fstype`, `device_error`), `node_memory_*_bytes`.
- WireGuard (`mindflavor/prometheus-wireguard-exporter`, job `wireguard`):
  `wireguard_latest_handshake_seconds{interface, public_key, allowed_ips}`, the UNIX time
  of the last handshake (0: never).

Pod series carry no `host` label, node series no `pod`. To compare a Redis with its host's
memory, the rule file records one `unityplan:pod_host:info{pod, territory, host} 1` series
per pod, rendered from the same plan as the scrape config, and joins on it.

Cluster-wide facts rendered into expressions (the number of pods, the WireGuard subnets)
come from the deployment, so adding a pod changes this file; Prometheus applies it on
reload.

Pure: dicts emitted with `yaml.safe_dump` (a territory called "no" stays a string).
"""

from __future__ import annotations

from typing import Any

import yaml

from unityplan_infra.topology.plan import MESH_NETWORK, Deployment, vpn_network

ALERT_RULES_FILE = "alerts.yml"

# --- alert names (Alertmanager routing and inhibition refer to them) --------------------
TARGET_DOWN = "TargetDown"
NATS_SERVER_UNREACHABLE = "NatsServerUnreachable"
NATS_CLUSTER_SMALL = "NatsClusterSmall"
JETSTREAM_STREAM_NO_LEADER = "JetStreamStreamNoLeader"
JETSTREAM_REPLICA_LAGGING = "JetStreamReplicaLagging"
POSTGRES_DOWN = "PostgresDown"
POSTGRES_NEAR_MAX_CONNECTIONS = "PostgresNearMaxConnections"
REDIS_DOWN = "RedisDown"
REDIS_MEMORY_NEAR_LIMIT = "RedisMemoryNearLimit"
REDIS_MEMORY_HIGH_NO_LIMIT = "RedisMemoryHighNoLimit"
HOST_DISK_FILLING_UP = "HostDiskFillingUp"
HOST_MEMORY_LOW = "HostMemoryLow"
WIREGUARD_PEER_NO_HANDSHAKE = "WireGuardPeerNoHandshake"
BACKUP_TOO_OLD = "BackupTooOld"
BACKUP_FAILED = "BackupFailed"
BACKUP_NEVER_RAN = "BackupNeverRan"
BACKUP_DRILL_FAILED = "BackupDrillFailed"

CRITICAL = "critical"
WARNING = "warning"

POD_HOST_INFO = "unityplan:pod_host:info"

# Template snippets for f-strings of annotations (Prometheus expands them per alert).
CODE = "{{ $labels.territory }}"
JOB = "{{ $labels.job }}"
STREAM = "{{ $labels.stream_name }}"
HOST = "{{ $labels.host }}"
MOUNTPOINT = "{{ $labels.mountpoint }}"
VALUE = "{{ $value }}"

# --- thresholds ----------------------------------------------------------------------
TARGET_DOWN_FOR = "3m"
# Longer than TargetDown's: when a host goes down, the TargetDown of its NATS exporter
# exists before the cluster counts as small, so it mutes this page (INHIBITIONS).
NATS_CLUSTER_SMALL_FOR = "4m"
POSTGRES_CONNECTIONS_RATIO = 0.8  # of max_connections (3 of them reserved for superusers)
REDIS_MEMORY_RATIO = 0.9  # of maxmemory, when one is set
# Without maxmemory: half the host's RAM. An AOF rewrite forks Redis; copy-on-write can
# need as much again, so past half the host can run out of memory.
REDIS_UNBOUNDED_HOST_RATIO = 0.5
HOST_MEMORY_AVAILABLE_RATIO = 0.1
# A replica is lagging when it is still below where the most advanced replica was this
# long ago (exporters are scraped at different moments, so "below the max now" is normal).
REPLICA_LAG_WINDOW = "1m"
# Backups run daily: one missed night (plus a slow run) is 26 h, not 24.
BACKUP_MAX_AGE_SECONDS = 26 * 3600
BACKUP_MAX_AGE_FOR = "26h"
WIREGUARD_HANDSHAKE_SECONDS = 300  # handshakes renew every 2 min while keepalives flow
# Filesystems that are not disks (node-exporter already drops overlay, squashfs, nsfs...).
NOT_DISK_FSTYPES = "tmpfs|ramfs|devtmpfs|overlay|squashfs|nsfs|fuse.lxcfs"


def _alert(
    name: str,
    expr: str,
    *,
    for_: str | None,
    severity: str,
    summary: str,
    runbook: str,
) -> dict[str, Any]:
    rule: dict[str, Any] = {"alert": name, "expr": expr}
    if for_:
        rule["for"] = for_
    rule["labels"] = {"severity": severity}
    rule["annotations"] = {"summary": summary, "runbook": runbook}
    return rule


def _on_pod_host(deployment: Deployment) -> str:
    """Where a pod's `docker` commands run: the local engine, or the pod's own host."""
    if deployment.config.layout != "multi-host":
        return ""
    if all(pod.host == pod.code for pod in deployment.pods):
        return f"on host {CODE}: "
    return "on the pod's host: "


def _codes(deployment: Deployment) -> str:
    return ", ".join(pod.code for pod in deployment.pods)


# --- groups --------------------------------------------------------------------------
def _topology_group(deployment: Deployment) -> dict[str, Any]:
    """One constant series per pod naming its host, for joins of pod and host series."""
    return {
        "name": "unityplan-topology",
        "rules": [
            {
                "record": POD_HOST_INFO,
                "expr": "vector(1)",
                "labels": {"pod": pod.pod.name, "territory": pod.code, "host": pod.host},
            }
            for pod in deployment.pods
        ],
    }


def _targets_group(deployment: Deployment) -> dict[str, Any]:
    # Guide, Troubleshooting: "Prometheus Not Scraping Exporters". One rule for every job
    # (promtool refuses two alerting rules with the same name and labels); the template
    # names the container by what kind of target is down.
    where = _on_pod_host(deployment)
    container = (
        "{{ if $labels.territory }}"
        f"{where}docker logs monitoring-{JOB}-exporter-{CODE}; "
        "{{ else if $labels.host }}"
        "on host {{ $labels.host }}: docker ps -a --filter name=monitoring- (is the host up?); "
        "{{ end }}"
    )
    return {
        "name": "unityplan-targets",
        "rules": [
            _alert(
                TARGET_DOWN, "up == 0", for_=TARGET_DOWN_FOR, severity=CRITICAL,
                summary="{{ $labels.job }} target {{ $labels.instance }} is down"
                "{{ with $labels.pod }} (pod {{ . }}){{ end }}"
                "{{ with $labels.host }} (host {{ . }}){{ end }}",
                runbook="docker exec monitoring-prometheus wget -qO- http://{{ $labels.instance }}"
                f"/metrics | head (on the monitoring host); {container}docker exec"
                " monitoring-prometheus cat /config/prometheus.yml; after a change: curl -X POST"
                " <prometheus>/-/reload",
            ),
        ],
    }  # fmt: skip


def _nats_group(deployment: Deployment) -> dict[str, Any]:
    pods = len(deployment.pods)
    where = _on_pod_host(deployment)
    multi_host = deployment.config.layout == "multi-host"
    # Guide, Troubleshooting: "NATS Cluster Not Forming".
    network = (
        "wg show wg0 on each host (handshakes)"
        if multi_host
        else f"docker network inspect {MESH_NETWORK} (every service-nats-<code> attached)"
    )
    not_forming = (
        f"for each pod ({_codes(deployment)}): docker logs service-nats-<code> | grep -i route;"
        f" {network}; curl <nats monitor>/varz | jq .cluster; then restart the NATS"
        " containers one at a time"
    )
    # Servers that agree on one JetStream meta leader: those in the cluster and in quorum.
    # A stopped server, one its exporter cannot reach, and one cut off from the majority
    # (it reports no meta leader) are not counted.
    agreeing = 'max(count by (meta_leader) (jetstream_server_total_streams{meta_leader!=""}))'
    replicas = "jetstream_stream_last_seq"
    return {
        "name": "unityplan-nats",
        "rules": [
            _alert(
                NATS_SERVER_UNREACHABLE,
                'up{job="nats"} == 1 unless on (pod, territory) jetstream_server_total_streams',
                for_="2m", severity=CRITICAL,
                summary="NATS server of pod {{ $labels.pod }} ({{ $labels.territory }}) does not"
                " answer its exporter",
                runbook=f"{where}docker ps -a --filter name=service-nats-{CODE};"
                " docker logs service-nats-{{ $labels.territory }} | tail -50",
            ),
            _alert(
                NATS_CLUSTER_SMALL, f"({agreeing} or vector(0)) < {pods}",
                for_=NATS_CLUSTER_SMALL_FOR, severity=CRITICAL,
                summary=f"NATS cluster has {VALUE} of {pods} servers in JetStream quorum",
                runbook=not_forming,
            ),
            _alert(
                JETSTREAM_STREAM_NO_LEADER,
                f'count by (account, stream_name) ({replicas}{{stream_leader=""}})'
                " unless on (account, stream_name)"
                f' count by (account, stream_name) ({replicas}{{stream_leader!=""}})',
                for_="1m", severity=CRITICAL,
                summary="JetStream stream {{ $labels.stream_name }} has no leader"
                " ({{ $value }} replicas up without one)",
                runbook="a stream needs a majority of its replicas' servers: see NatsClusterSmall"
                " first; nats stream info {{ $labels.stream_name }};"
                " docker logs service-nats-<code> | grep -i {{ $labels.stream_name }}",
            ),
            _alert(
                JETSTREAM_REPLICA_LAGGING,
                f"(max by (account, stream_name) ({replicas} offset {REPLICA_LAG_WINDOW})"
                " - on (account, stream_name) group_right ()"
                f" max by (account, stream_name, pod, territory) ({replicas})) > 0",
                for_="5m", severity=WARNING,
                summary="JetStream stream {{ $labels.stream_name }}: the replica on pod"
                " {{ $labels.pod }} ({{ $labels.territory }}) is {{ $value }} messages behind"
                f" where the others were {REPLICA_LAG_WINDOW} ago",
                runbook=f"nats stream info {STREAM} (replicas: current, lag);"
                f" {where}docker logs service-nats-{CODE} | grep -i"
                " -e catchup -e {{ $labels.stream_name }}; its disk (HostDiskFillingUp) and"
                " its routes (docker logs ... | grep -i route)",
            ),
        ],
    }  # fmt: skip


def _postgres_group(deployment: Deployment) -> dict[str, Any]:
    where = _on_pod_host(deployment)
    # Guide, Troubleshooting: "Database Connection Failed".
    psql = (
        "docker exec -it service-postgres-{{ $labels.territory }} psql -U unityplan"
        " -d unityplan_{{ $labels.territory }}"
    )
    return {
        "name": "unityplan-postgres",
        "rules": [
            _alert(
                POSTGRES_DOWN, "pg_up == 0", for_="1m", severity=CRITICAL,
                summary="PostgreSQL of pod {{ $labels.pod }} ({{ $labels.territory }}) is down"
                " or refuses its exporter",
                runbook=f"{where}docker logs service-postgres-{CODE}; {psql}",
            ),
            _alert(
                POSTGRES_NEAR_MAX_CONNECTIONS,
                "sum by (pod, territory) (pg_stat_activity_count)"
                " / on (pod, territory) max by (pod, territory) (pg_settings_max_connections)"
                f" > {POSTGRES_CONNECTIONS_RATIO}",
                for_="5m", severity=WARNING,
                summary="PostgreSQL of pod {{ $labels.pod }} ({{ $labels.territory }}) uses"
                " {{ $value | humanizePercentage }} of max_connections",
                runbook=f"{where}{psql} -c 'SELECT usename, application_name, state, count(*)"
                " FROM pg_stat_activity GROUP BY 1, 2, 3 ORDER BY 4 DESC'",
            ),
        ],
    }  # fmt: skip


def _redis_group(deployment: Deployment) -> dict[str, Any]:
    where = _on_pod_host(deployment)
    cli = (
        "docker exec service-redis-{{ $labels.territory }} sh -c"
        " 'REDISCLI_AUTH=\"$REDIS_PASSWORD\" redis-cli INFO memory'"
    )
    return {
        "name": "unityplan-redis",
        "rules": [
            _alert(
                REDIS_DOWN, "redis_up == 0", for_="1m", severity=CRITICAL,
                summary="Redis of pod {{ $labels.pod }} ({{ $labels.territory }}) is down"
                " or refuses its exporter",
                runbook=f"{where}docker logs service-redis-{CODE}",
            ),
            _alert(
                REDIS_MEMORY_NEAR_LIMIT,
                f"redis_memory_used_bytes / (redis_memory_max_bytes > 0) > {REDIS_MEMORY_RATIO}",
                for_="5m", severity=WARNING,
                summary="Redis of pod {{ $labels.pod }} ({{ $labels.territory }}) uses"
                " {{ $value | humanizePercentage }} of its maxmemory",
                runbook=f"{where}{cli}; raise maxmemory or find what grows"
                " (redis-cli --bigkeys)",
            ),
            _alert(
                REDIS_MEMORY_HIGH_NO_LIMIT,
                "(redis_memory_used_bytes and on (pod, territory) redis_memory_max_bytes == 0)"
                f" * on (pod, territory) group_left (host) {POD_HOST_INFO}"
                " / on (host) group_left () node_memory_MemTotal_bytes"
                f" > {REDIS_UNBOUNDED_HOST_RATIO}",
                for_="5m", severity=WARNING,
                summary="Redis of pod {{ $labels.pod }} ({{ $labels.territory }}) has no"
                " maxmemory and uses {{ $value | humanizePercentage }} of host"
                " {{ $labels.host }}'s memory",
                runbook=f"{where}{cli}; an AOF rewrite forks Redis and can need as much"
                " again: set maxmemory or give the host more memory",
            ),
        ],
    }  # fmt: skip


def _host_group() -> dict[str, Any]:
    # The fstype filter on the first operand is enough: `and` keeps only its series.
    avail = f'node_filesystem_avail_bytes{{fstype!~"{NOT_DISK_FSTYPES}"}}'

    def filling(hours: int, free_below: float, severity: str, for_: str) -> dict[str, Any]:
        return _alert(
            HOST_DISK_FILLING_UP,
            f"{avail} / node_filesystem_size_bytes < {free_below}"
            f" and predict_linear(node_filesystem_avail_bytes[6h], {hours} * 3600) < 0"
            " and node_filesystem_readonly == 0",
            for_=for_, severity=severity,
            summary=f"host {HOST}: {MOUNTPOINT} will be full"
            f" within {hours} hours at the rate of the last 6",
            runbook="on host {{ $labels.host }}: df -h {{ $labels.mountpoint }}; docker system df"
            " -v (volumes pod-<code>-<kind>-data: JetStream, PostgreSQL, kubo); docker"
            " image prune",
        )  # fmt: skip

    return {
        "name": "unityplan-host",
        "rules": [
            filling(24, 0.4, WARNING, "1h"),
            filling(4, 0.2, CRITICAL, "30m"),
            _alert(
                HOST_MEMORY_LOW,
                "node_memory_MemAvailable_bytes / node_memory_MemTotal_bytes"
                f" < {HOST_MEMORY_AVAILABLE_RATIO}",
                for_="10m", severity=WARNING,
                summary="host {{ $labels.host }} has only {{ $value | humanizePercentage }}"
                " of its memory available",
                runbook="on host {{ $labels.host }}: docker stats --no-stream; free -m",
            ),
        ],
    }  # fmt: skip


def _wireguard_group(deployment: Deployment) -> dict[str, Any]:
    subnets = ", ".join(f"{vpn_network(host.slot)} = {host.name}" for host in deployment.hosts)
    return {
        "name": "unityplan-wireguard",
        "rules": [
            _alert(
                WIREGUARD_PEER_NO_HANDSHAKE,
                f"time() - wireguard_latest_handshake_seconds > {WIREGUARD_HANDSHAKE_SECONDS}",
                for_=None, severity=CRITICAL,
                summary="host {{ $labels.host }}: no WireGuard handshake with peer"
                " {{ $labels.allowed_ips }} for {{ $value | humanizeDuration }}"
                f" (peers: {subnets})",
                runbook="on host {{ $labels.host }}: wg show wg0 (latest handshake, endpoint,"
                " transfer); ping the peer's 10.0.<slot>.1; on the peer: systemctl status"
                " wg-quick@wg0; the peer's 51820/udp must be reachable (cloud firewall)",
            ),
        ],
    }  # fmt: skip


def _backup_group(deployment: Deployment) -> dict[str, Any]:
    """Backups (the backup job writes node-exporter textfile metrics, labelled per pod)."""
    where = _on_pod_host(deployment)
    logs = f"{where}docker logs service-backup-{CODE} | tail -50"
    never = [
        _alert(
            BACKUP_NEVER_RAN,
            f'absent(unityplan_backup_last_run_timestamp_seconds{{territory="{pod.code}"}})',
            for_=BACKUP_MAX_AGE_FOR, severity=CRITICAL,
            summary=f"pod {pod.pod.name} ({pod.code}) has reported no backup run for"
            f" {BACKUP_MAX_AGE_FOR}",
            runbook=f"{logs}; is service-backup-{pod.code} running (docker ps -a)? node-exporter"
            " reads its metrics from the unityplan-node-textfile volume",
        )
        for pod in deployment.pods
    ]
    return {
        "name": "unityplan-backups",
        "rules": [
            _alert(
                BACKUP_TOO_OLD,
                f"time() - unityplan_backup_last_success_timestamp_seconds > {BACKUP_MAX_AGE_SECONDS}",
                for_=None, severity=CRITICAL,
                summary="pod {{ $labels.pod }} ({{ $labels.territory }}): last successful backup"
                " {{ $value | humanizeDuration }} ago",
                runbook=f"{logs}; the S3 endpoint and credentials (backups.s3,"
                " backupS3AccessKey/backupS3SecretKey); README, Backups and restore",
            ),
            _alert(
                BACKUP_FAILED, "unityplan_backup_last_run_success == 0",
                for_=None, severity=WARNING,
                summary="pod {{ $labels.pod }} ({{ $labels.territory }}): the last backup run"
                " failed",
                runbook=f"{logs} (each failure names the step and the fix); the next run"
                " retries on schedule",
            ),
            _alert(
                BACKUP_DRILL_FAILED, "unityplan_backup_drill_last_run_success == 0",
                for_=None, severity=CRITICAL,
                summary="pod {{ $labels.territory }}: the restore drill failed: the latest"
                " backup did not restore",
                runbook=f"{logs} (the drill's lines name the database and the error); restore"
                " a pod by hand only from a snapshot a drill passed",
            ),
            *never,
        ],
    }  # fmt: skip


def alert_rules(deployment: Deployment) -> dict[str, Any]:
    """The rule file of `deployment` as a dict (YAML-serialisable)."""
    groups = [
        _topology_group(deployment),
        _targets_group(deployment),
        _nats_group(deployment),
        _postgres_group(deployment),
        _redis_group(deployment),
        _host_group(),
    ]
    if deployment.config.layout == "multi-host":
        groups.append(_wireguard_group(deployment))
    if deployment.config.backups.enabled:
        groups.append(_backup_group(deployment))
    return {"groups": groups}


def render_alert_rules(deployment: Deployment) -> str:
    """`alerts.yml` of `deployment`, as YAML text."""
    return yaml.safe_dump(alert_rules(deployment), sort_keys=False, width=100)
