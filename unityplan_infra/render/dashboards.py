"""Grafana dashboards of the monitoring stack, as code, and the provider that loads them.

Every dashboard model is built with Grafana's own Python SDK (`grafana-foundation-sdk`, the
release line generated for Grafana 11.4) and serialised by its JSON encoder; nothing here
writes dashboard JSON by hand. Pure: knows the deployment plan, not Pulumi.

What the plan decides: which dashboards exist (WireGuard only in the multi-host layout) and
the healthy values of a few thresholds (cluster size, routes). What it does not decide: which
pods are shown. Pods and hosts come from the label values Prometheus has (`territory`,
`host`), so a new pod shows up in every panel and variable by itself.

Scrape jobs and labels are those of `render/prometheus.py`: jobs `postgres`, `redis`, `nats`
(labels `pod`, `territory`), `node`, `cadvisor` (label `host`), `prometheus`, plus `wireguard`
(label `host`) for MindFlavor/prometheus_wireguard_exporter on multi-host stacks.

Provisioning layout inside the Grafana container (one bind mount of the host directory that
holds `unityplan.yaml` and `json/`):

    /etc/grafana/provisioning/dashboards/unityplan.yaml   <- render_dashboard_provider()
    /etc/grafana/provisioning/dashboards/json/<file>.json <- render_dashboards()

Grafana reads only *.yaml/*.yml files in the provisioning directory, so the `json/`
subdirectory is left to the file provider. The overview becomes the home dashboard with
`GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH` (see `home_dashboard_settings`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from typing import Any, TypeAlias

import yaml
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as dashboard_builders
from grafana_foundation_sdk.builders import prometheus as prometheus_builders
from grafana_foundation_sdk.builders import stat as stat_builders
from grafana_foundation_sdk.builders import table as table_builders
from grafana_foundation_sdk.builders import timeseries as timeseries_builders
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models import dashboard as model
from grafana_foundation_sdk.models import prometheus as prometheus_model

from unityplan_infra.nats.streams import stream_configs
from unityplan_infra.topology.plan import Deployment, vpn_network

# --- provisioning ----------------------------------------------------------------------
PROVISIONING_DIR = "/etc/grafana/provisioning/dashboards"
DASHBOARDS_DIR = f"{PROVISIONING_DIR}/json"
PROVIDER_FILE = "unityplan.yaml"
FOLDER = "UnityPlan"
FOLDER_UID = "unityplan"
HOME_DASHBOARD = "overview.json"
HOME_DASHBOARD_PATH = f"{DASHBOARDS_DIR}/{HOME_DASHBOARD}"

# --- dashboards ------------------------------------------------------------------------
DATASOURCE_UID = "prometheus"  # render/grafana.py provisions it under this uid
TAG = "unityplan"
UIDS = {
    "overview.json": "unityplan-overview",
    "postgres.json": "unityplan-postgres",
    "redis.json": "unityplan-redis",
    "nats.json": "unityplan-nats",
    "hosts.json": "unityplan-hosts",
    "wireguard.json": "unityplan-wireguard",
}
POD_JOBS = "postgres|redis|nats"
# Containers of a pod: service-<kind>-<code>, and its exporters monitoring-<kind>-exporter-<code>.
SERVICE_KINDS = ("postgres", "redis", "nats", "ipfs", "matrix")
# nats-server 2.10 opens a pool of 3 route connections to each peer plus one dedicated to the
# system account (measured: 3 servers -> 8 routes each, 2 servers -> 4).
NATS_ROUTES_PER_PEER = 4
# WireGuard re-handshakes every 2 minutes while traffic flows (and keepalives make traffic).
HANDSHAKE_WARN_SECONDS = 180
HANDSHAKE_STALE_SECONDS = 300

# What a Grafana variable reference turns into when a query is run outside Grafana
# (`expand_variables`): the built-in intervals, and "match every value" for the rest.
DEFAULT_VARIABLE_VALUES = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
ANY_VALUE = ".+"

PanelBuilder: TypeAlias = stat_builders.Panel | timeseries_builders.Panel | table_builders.Panel


# --- small builders --------------------------------------------------------------------
def _datasource() -> model.DataSourceRef:
    return model.DataSourceRef(type_val="prometheus", uid=DATASOURCE_UID)


def _query(
    expr: str, legend: str = "", *, ref: str = "A", table: bool = False
) -> prometheus_builders.Dataquery:
    query = prometheus_builders.Dataquery().expr(expr).ref_id(ref).datasource(_datasource())
    if legend:
        query = query.legend_format(legend)
    if table:
        query = query.instant().format(prometheus_model.PromQueryFormat.TABLE)
    return query


def _thresholds(base: str, *steps: tuple[float, str]) -> dashboard_builders.ThresholdsConfig:
    return (
        dashboard_builders.ThresholdsConfig()
        .mode(model.ThresholdsMode.ABSOLUTE)
        .steps([model.Threshold(None, base), *(model.Threshold(v, c) for v, c in steps)])
    )


def _up_down() -> list[model.ValueMapping]:
    return [
        model.ValueMap(
            {
                "0": model.ValueMappingResult(text="DOWN", color="red", index=0),
                "1": model.ValueMappingResult(text="UP", color="green", index=1),
            }
        )
    ]


def _variable(name: str, label: str, selector: str) -> dashboard_builders.QueryVariable:
    """A multi-value variable over the values Prometheus has for `name`, "All" by default."""
    return (
        dashboard_builders.QueryVariable(name)
        .label(label)
        .datasource(_datasource())
        .query(f"label_values({selector}, {name})")
        .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(model.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .current(model.VariableOption(selected=True, text="All", value="$__all"))
    )


def _territory_variable() -> dashboard_builders.QueryVariable:
    return _variable("territory", "Territory", f'up{{job=~"{POD_JOBS}"}}')


def _host_variable() -> dashboard_builders.QueryVariable:
    return _variable("host", "Host", 'up{job="node"}')


def _stat(
    title: str, description: str, *queries: prometheus_builders.Dataquery
) -> stat_builders.Panel:
    panel = stat_builders.Panel().title(title).description(description).datasource(_datasource())
    return panel.targets(list(queries)).reduce_options(
        common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)
    )


def _up_stat(
    title: str, description: str, *queries: prometheus_builders.Dataquery
) -> stat_builders.Panel:
    return (
        _stat(title, description, *queries)
        .mappings(_up_down())
        .thresholds(_thresholds("red", (1, "green")))
        .color_mode(common.BigValueColorMode.BACKGROUND)
        .graph_mode(common.BigValueGraphMode.NONE)
        .text_mode(common.BigValueTextMode.VALUE_AND_NAME)
    )


def _graph(
    title: str, description: str, unit: str, *queries: prometheus_builders.Dataquery
) -> timeseries_builders.Panel:
    return (
        timeseries_builders.Panel()
        .title(title)
        .description(description)
        .datasource(_datasource())
        .targets(list(queries))
        .unit(unit)
        .fill_opacity(10)
        .legend(
            common_builders.VizLegendOptions()
            .display_mode(common.LegendDisplayMode.TABLE)
            .placement(common.LegendPlacement.BOTTOM)
            .show_legend(True)
            .calcs(["lastNotNull", "max"])
        )
    )


# Scrape job of a pod exporter's metrics, by the exporter's metric prefix.
JOB_OF_PREFIX = {"pg": "postgres", "redis": "redis", "gnatsd": "nats", "jetstream": "nats"}


def _pod(metric: str, extra: str = "") -> str:
    """Selector of a pod-exporter metric (its job from its prefix) for the selected
    territories, with `extra` matchers."""
    job = JOB_OF_PREFIX[metric.split("_", 1)[0]]
    matchers = f'job="{job}", territory=~"$territory"' + (f", {extra}" if extra else "")
    return f"{metric}{{{matchers}}}"


def _rate(metric: str, extra: str = "") -> str:
    return f"rate({_pod(metric, extra)}[$__rate_interval])"


# --- dashboard assembly ----------------------------------------------------------------
class _Board:
    """The SDK's dashboard builder plus panel ids: the SDK numbers nothing itself (rows get
    id 0, panels none), and Grafana links and sharing need unique, stable ids."""

    def __init__(self, file_name: str, title: str, kind: str, description: str) -> None:
        self._next_id = 1
        self.builder = (
            dashboard_builders.Dashboard(title)
            .uid(UIDS[file_name])
            .description(description)
            .tags([TAG, kind])
            .readonly()
            .time("now-3h", "now")
            .refresh("30s")
            .tooltip(model.DashboardCursorSync.CROSSHAIR)
            .annotation(
                # Grafana's built-in "Annotations & Alerts"; without it the SDK writes
                # `"annotations": {}` (no list).
                dashboard_builders.AnnotationQuery()
                .name("Annotations & Alerts")
                .datasource(model.DataSourceRef(type_val="grafana", uid="-- Grafana --"))
                .built_in(1)
                .enable(True)
                .hide(True)
                .icon_color("rgba(0, 211, 255, 1)")
                .type("dashboard")
            )
            .link(
                dashboard_builders.DashboardLink("UnityPlan dashboards")
                .type(model.DashboardLinkType.DASHBOARDS)
                .tags([TAG])
                .as_dropdown(True)
                .include_vars(True)
                .keep_time(True)
            )
        )

    def _take_id(self) -> int:
        self._next_id += 1
        return self._next_id - 1

    def variables(self, *variables: dashboard_builders.QueryVariable) -> _Board:
        for variable in variables:
            self.builder.with_variable(variable)
        return self

    def row(self, title: str) -> _Board:
        self.builder.with_row(dashboard_builders.Row(title).id(self._take_id()))
        return self

    def panel(self, panel: PanelBuilder, *, width: int = 12, height: int = 8) -> _Board:
        self.builder.with_panel(panel.id(self._take_id()).span(width).height(height))
        return self

    def json(self) -> dict[str, Any]:
        """The dashboard model as the SDK's encoder writes it, read back into plain data."""
        encoded: dict[str, Any] = json.loads(JSONEncoder().encode(self.builder.build()))
        return encoded


def _overview(deployment: Deployment) -> _Board:
    pods = len(deployment.pods)
    expected_routes = NATS_ROUTES_PER_PEER * (pods - 1)
    replicas = ", ".join(f"{s['name']} R{s['num_replicas']}" for s in stream_configs(deployment))
    board = _Board(
        "overview.json", "UnityPlan / Platform overview", "overview",
        "Every pod's services, the NATS cluster and JetStream at a glance.",
    ).variables(_territory_variable())  # fmt: skip

    board.row("Pods")
    board.panel(
        _up_stat(
            "Pod services up (scrape)",
            "`up` of each pod's exporters, by job and territory: DOWN means Prometheus cannot "
            "scrape the exporter (exporter stopped, or the pod unreachable).",
            _query(
                f'max by (job, pod, territory) (up{{job=~"{POD_JOBS}", territory=~"$territory"}})',
                "{{territory}} {{job}}",
            ),
        ),
        width=24, height=5,
    )  # fmt: skip
    board.panel(
        _up_stat(
            "Services answering their exporter",
            "PostgreSQL and Redis as their exporters see them (`pg_up`, `redis_up`); NATS is UP "
            "while its exporter gets JetStream data from it. DOWN also when the exporter is "
            "scraped but the service does not answer.",
            _query(_answering("pg_up", "postgres"), "{{territory}} postgres", ref="A"),
            _query(_answering("redis_up", "redis"), "{{territory}} redis", ref="B"),
            _query(
                _answering(
                    "jetstream_server_jetstream_disabled", "nats", value="== bool 0"
                ),
                "{{territory}} nats",
                ref="C",
            ),
        ),
        width=12, height=6,
    )  # fmt: skip
    board.panel(
        _up_stat(
            "Service containers running (cAdvisor)",
            "Each pod's service containers (service-<kind>-<code>) as cAdvisor sees them, "
            "including kubo (ipfs) and Synapse (matrix), which have no exporter. DOWN: the pod "
            "is known to Prometheus but the container is not running.",
            _query(_containers_running(), "{{territory}} {{service}}"),
        ),
        width=12, height=6,
    )  # fmt: skip

    board.row("NATS cluster")
    board.panel(
        _stat(
            "NATS cluster size",
            f"Servers answering with JetStream data, and the size of the JetStream meta group "
            f"(its configured peers, answering or not). This stack plans {pods}.",
            _query('count(jetstream_server_jetstream_disabled{job="nats"} == 0)',
                   "servers answering", ref="A"),
            _query('max(gnatsd_varz_jetstream_meta_cluster_size{job="nats"})',
                   "meta group size", ref="B"),
        ).thresholds(_thresholds("red", (pods, "green"))).text_mode(
            common.BigValueTextMode.VALUE_AND_NAME
        ),
        width=8, height=6,
    )  # fmt: skip
    board.panel(
        _stat(
            "NATS routes per server",
            f"Route connections of each server (`gnatsd_routez_num_routes`). nats-server 2.10 "
            f"opens {NATS_ROUTES_PER_PEER} per peer (a pool of 3 plus the system account's), so "
            f"a full mesh of {pods} servers shows {expected_routes} on each. The exporter keeps "
            f"the last value while a server is down: read it with the cluster size.",
            _query(
                f"max by (territory) ({_pod('gnatsd_routez_num_routes')})", "{{territory}}"
            ),
        ).thresholds(
            _thresholds("red", (1, "orange"), (max(expected_routes, 1), "green"))
            if expected_routes
            else _thresholds("green")
        ),
        width=10, height=6,
    )  # fmt: skip
    board.panel(
        _stat(
            "JetStream meta leader",
            "The meta leader as each server answering reports it; more than one name means the "
            "servers disagree (an election, or a split).",
            _query(
                'count by (meta_leader) (jetstream_server_jetstream_disabled{job="nats"} == 0)',
                "{{meta_leader}}",
            ),
        ).text_mode(common.BigValueTextMode.NAME).color_mode(common.BigValueColorMode.NONE),
        width=6, height=6,
    )  # fmt: skip

    board.row("JetStream")
    board.panel(
        _streams_table(
            f"Replicas: servers reporting the stream (configured: {replicas}). Replica lag: "
            f"messages the most behind replica misses. Streams are cluster-wide, so the "
            f"territory variable does not filter them."
        ),
        width=24, height=8,
    )  # fmt: skip
    board.panel(
        _graph(
            "Stream replica lag",
            "Last sequence of the most advanced replica minus that of the least advanced.",
            "short",
            _query(_replica_lag(), "{{stream_name}}"),
        ),
    )
    board.panel(
        _graph(
            "Consumer lag (messages pending)",
            "Messages of the stream not yet delivered to each consumer, as its leader reports.",
            "short",
            _query(
                "max by (stream_name, consumer_name) "
                '(jetstream_consumer_num_pending{job="nats", is_consumer_leader="true"})',
                "{{stream_name}} / {{consumer_name}}",
            ),
        ),
    )
    board.panel(
        _graph(
            "NATS messages/s",
            "Messages received and sent by each pod's server (clients and routes).",
            "suffix: msg/s",
            _query(f"sum by (territory) ({_rate('gnatsd_varz_in_msgs')})", "{{territory}} in",
                   ref="A"),
            _query(f"sum by (territory) ({_rate('gnatsd_varz_out_msgs')})", "{{territory}} out",
                   ref="B"),
        ),
    )  # fmt: skip
    board.panel(
        _graph(
            "JetStream stored messages/s",
            "Messages appended to each stream (its leader's last sequence).",
            "suffix: msg/s",
            _query(
                "sum by (stream_name) (rate(jetstream_stream_last_seq"
                '{job="nats", is_stream_leader="true"}[$__rate_interval]))',
                "{{stream_name}}",
            ),
        ),
    )
    return board


def _answering(metric: str, job: str, *, value: str = "") -> str:
    """1/0 per pod from `metric`, and 0 for a pod whose exporter is scraped but reports
    nothing (so a silent service shows DOWN instead of vanishing)."""
    selected = f"{_pod(metric)} {value}" if value else _pod(metric)
    reported = f"max by (pod, territory) ({selected})"
    scraped = f'max by (pod, territory) (up{{job="{job}", territory=~"$territory"}})'
    return f"{reported} or ({scraped} * 0)"


def _containers_running() -> str:
    """1 per running service container of a selected pod, 0 per expected one not running."""
    kinds = "|".join(SERVICE_KINDS)
    running = (
        'label_replace(label_replace(container_last_seen{job="cadvisor", '
        f'name=~"service-({kinds})-($territory)"}}, "service", "$1", "name", '
        '"service-([a-z]+)-.+"), "territory", "$1", "name", "service-[a-z]+-(.+)")'
    )
    known_pods = f'max by (territory) (up{{job=~"{POD_JOBS}", territory=~"$territory"}})'
    expected = " or ".join(
        f'label_replace({known_pods} * 0, "service", "{kind}", "", "")' for kind in SERVICE_KINDS
    )
    return f"(max by (territory, service) ({running}) * 0 + 1) or {expected}"


def _replica_lag() -> str:
    seq = 'jetstream_stream_last_seq{job="nats"}'
    return f"max by (stream_name) ({seq}) - min by (stream_name) ({seq})"


def _streams_table(description: str) -> table_builders.Panel:
    leader = 'job="nats", is_stream_leader="true"'
    columns = {
        "Replicas": 'count by (stream_name) (jetstream_stream_last_seq{job="nats"})',
        "Messages": f"max by (stream_name) (jetstream_stream_total_messages{{{leader}}})",
        "Bytes": f"max by (stream_name) (jetstream_stream_total_bytes{{{leader}}})",
        "Consumers": f"max by (stream_name) (jetstream_stream_consumer_count{{{leader}}})",
        "Replica lag": _replica_lag(),
    }
    refs = [chr(ord("A") + index) for index in range(len(columns))]
    rename = {f"Value #{ref}": name for ref, name in zip(refs, columns, strict=True)}
    return (
        table_builders.Panel()
        .title("JetStream streams")
        .description(description)
        .datasource(_datasource())
        .targets([
            _query(expr, ref=ref, table=True)
            for ref, expr in zip(refs, columns.values(), strict=True)
        ])
        .with_transformation(model.DataTransformerConfig(id_val="merge", options={}))
        .with_transformation(
            model.DataTransformerConfig(
                id_val="organize",
                options={
                    "excludeByName": {"Time": True},
                    "renameByName": {"stream_name": "Stream", **rename},
                },
            )
        )
        .override_by_name("Bytes", [model.DynamicConfigValue(id_val="unit", value="bytes")])
    )  # fmt: skip


def _postgres() -> _Board:
    board = _Board(
        "postgres.json", "UnityPlan / PostgreSQL", "postgres",
        "Each pod's PostgreSQL, from postgres_exporter (job postgres).",
    ).variables(_territory_variable())  # fmt: skip
    by = "sum by (territory)"
    board.row("Availability and connections")
    board.panel(
        _up_stat("PostgreSQL up", "`pg_up`: the exporter can query the database.",
                 _query(f"max by (territory) ({_pod('pg_up')})", "{{territory}}")),
        width=6,
    )  # fmt: skip
    board.panel(
        _graph(
            "Connections",
            "Backends connected to each pod's databases, and the server's max_connections.",
            "short",
            _query(f"{by} ({_pod('pg_stat_database_numbackends')})", "{{territory}}", ref="A"),
            _query(f"max by (territory) ({_pod('pg_settings_max_connections')})",
                   "{{territory}} max", ref="B"),
        ),
        width=9,
    )  # fmt: skip
    board.panel(
        _graph(
            "Connections by state",
            "`pg_stat_activity`: active, idle, idle in transaction...",
            "short",
            _query(f"sum by (territory, state) ({_pod('pg_stat_activity_count')})",
                   "{{territory}} {{state}}"),
        ),
        width=9,
    )  # fmt: skip
    board.row("Work")
    board.panel(
        _graph(
            "Transactions/s",
            "Commits and rollbacks per second.",
            "ops",
            _query(f"{by} ({_rate('pg_stat_database_xact_commit')})", "{{territory}} commit",
                   ref="A"),
            _query(f"{by} ({_rate('pg_stat_database_xact_rollback')})",
                   "{{territory}} rollback", ref="B"),
        ),
    )  # fmt: skip
    board.panel(
        _graph(
            "Rows/s",
            "Rows fetched, inserted, updated and deleted per second.",
            "short",
            *(
                _query(f"{by} ({_rate(f'pg_stat_database_tup_{kind}')})",
                       f"{{{{territory}}}} {kind}", ref=ref)
                for ref, kind in zip("ABCD", ("fetched", "inserted", "updated", "deleted"),
                                     strict=True)
            ),
        ),
    )  # fmt: skip
    hit, read = _rate("pg_stat_database_blks_hit"), _rate("pg_stat_database_blks_read")
    board.panel(
        _graph(
            "Buffer cache hit ratio",
            "Blocks found in shared buffers over all blocks read.",
            "percentunit",
            _query(f"{by} ({hit}) / ({by} ({hit}) + {by} ({read}))", "{{territory}}"),
        ).min(0).max(1),
    )  # fmt: skip
    board.panel(
        _graph(
            "Deadlocks and locks",
            "Deadlocks detected, and locks held by mode.",
            "short",
            _query(f"{by} (increase({_pod('pg_stat_database_deadlocks')}[$__rate_interval]))",
                   "{{territory}} deadlocks", ref="A"),
            _query(f"sum by (territory, mode) ({_pod('pg_locks_count')})",
                   "{{territory}} {{mode}}", ref="B"),
        ),
    )  # fmt: skip
    board.row("Storage")
    sizes = _pod("pg_database_size_bytes", 'datname!~"template.*"')
    board.panel(
        _graph(
            "Database size",
            "Size of each database (templates left out).",
            "bytes",
            _query(f"max by (territory, datname) ({sizes})", "{{territory}} {{datname}}"),
        ),
        width=24,
    )  # fmt: skip
    return board


def _redis() -> _Board:
    board = _Board(
        "redis.json", "UnityPlan / Redis", "redis",
        "Each pod's Redis, from redis_exporter (job redis).",
    ).variables(_territory_variable())  # fmt: skip
    by = "sum by (territory)"
    board.row("Availability and memory")
    board.panel(
        _up_stat("Redis up", "`redis_up`: the exporter can reach Redis.",
                 _query(f"max by (territory) ({_pod('redis_up')})", "{{territory}}")),
        width=6,
    )  # fmt: skip
    board.panel(
        _graph(
            "Memory",
            "Memory used, and maxmemory (0: no limit).",
            "bytes",
            _query(f"{by} ({_pod('redis_memory_used_bytes')})", "{{territory}} used", ref="A"),
            _query(f"{by} ({_pod('redis_memory_max_bytes')})", "{{territory}} max", ref="B"),
        ),
        width=9,
    )  # fmt: skip
    board.panel(
        _graph(
            "Clients",
            "Connected and blocked clients.",
            "short",
            _query(f"{by} ({_pod('redis_connected_clients')})", "{{territory}} connected",
                   ref="A"),
            _query(f"{by} ({_pod('redis_blocked_clients')})", "{{territory}} blocked", ref="B"),
        ),
        width=9,
    )  # fmt: skip
    board.row("Work")
    board.panel(
        _graph(
            "Commands/s",
            "Commands processed per second.",
            "ops",
            _query(f"{by} ({_rate('redis_commands_processed_total')})", "{{territory}}"),
        ),
    )
    hits, misses = _rate("redis_keyspace_hits_total"), _rate("redis_keyspace_misses_total")
    board.panel(
        _graph(
            "Keyspace hit ratio",
            "Lookups that found their key.",
            "percentunit",
            _query(f"{by} ({hits}) / ({by} ({hits}) + {by} ({misses}))", "{{territory}}"),
        )
        .min(0)
        .max(1),
    )
    board.panel(
        _graph(
            "Keys",
            "Keys per database, and keys evicted or expired per second.",
            "short",
            _query(f"sum by (territory, db) ({_pod('redis_db_keys')})", "{{territory}} {{db}}",
                   ref="A"),
            _query(f"{by} ({_rate('redis_evicted_keys_total')})", "{{territory}} evicted/s",
                   ref="B"),
            _query(f"{by} ({_rate('redis_expired_keys_total')})", "{{territory}} expired/s",
                   ref="C"),
        ),
    )  # fmt: skip
    board.panel(
        _graph(
            "Network",
            "Bytes received and sent per second.",
            "Bps",
            _query(f"{by} ({_rate('redis_net_input_bytes_total')})", "{{territory}} in",
                   ref="A"),
            _query(f"{by} ({_rate('redis_net_output_bytes_total')})", "{{territory}} out",
                   ref="B"),
        ),
    )  # fmt: skip
    return board


def _nats(deployment: Deployment) -> _Board:
    board = _Board(
        "nats.json", "UnityPlan / NATS and JetStream", "nats",
        "Each pod's nats-server, from prometheus-nats-exporter 0.16 "
        "(-varz -connz -routez -subz -jsz=all, job nats).",
    ).variables(_territory_variable())  # fmt: skip
    by = "sum by (territory)"
    board.row("Server")
    board.panel(
        _up_stat(
            "JetStream answering",
            "UP while the exporter gets JetStream data from the server.",
            _query(_answering("jetstream_server_jetstream_disabled", "nats", value="== bool 0"),
                   "{{territory}}"),
        ),
        width=6,
    )  # fmt: skip
    board.panel(
        _graph(
            "Connections and subscriptions",
            "Client connections (connz) and subscriptions (subsz).",
            "short",
            _query(f"{by} ({_pod('gnatsd_connz_num_connections')})", "{{territory}} connections",
                   ref="A"),
            _query(f"{by} ({_pod('gnatsd_subsz_num_subscriptions')})",
                   "{{territory}} subscriptions", ref="B"),
        ),
        width=9,
    )  # fmt: skip
    board.panel(
        _graph(
            "Routes",
            f"Route connections per server; a full mesh shows "
            f"{NATS_ROUTES_PER_PEER * (len(deployment.pods) - 1)} on each.",
            "short",
            _query(f"max by (territory) ({_pod('gnatsd_routez_num_routes')})", "{{territory}}"),
        ),
        width=9,
    )  # fmt: skip
    board.panel(
        _graph(
            "Messages/s",
            "Messages in and out per second (clients and routes).",
            "suffix: msg/s",
            _query(f"{by} ({_rate('gnatsd_varz_in_msgs')})", "{{territory}} in", ref="A"),
            _query(f"{by} ({_rate('gnatsd_varz_out_msgs')})", "{{territory}} out", ref="B"),
        ),
    )
    board.panel(
        _graph(
            "Bytes/s",
            "Bytes in and out per second.",
            "Bps",
            _query(f"{by} ({_rate('gnatsd_varz_in_bytes')})", "{{territory}} in", ref="A"),
            _query(f"{by} ({_rate('gnatsd_varz_out_bytes')})", "{{territory}} out", ref="B"),
        ),
    )
    board.panel(
        _graph(
            "Slow consumers",
            "Clients the server had to cut off for not reading fast enough (cumulative).",
            "short",
            _query(f"{by} ({_pod('gnatsd_varz_slow_consumers')})", "{{territory}}"),
        ),
    )
    board.panel(
        _graph("Server CPU", "CPU of nats-server (100 = one core).", "percent",
               _query(f"{by} ({_pod('gnatsd_varz_cpu')})", "{{territory}}")),
        width=6,
    )  # fmt: skip
    board.panel(
        _graph("Server memory", "Resident memory of nats-server.", "bytes",
               _query(f"{by} ({_pod('gnatsd_varz_mem')})", "{{territory}}")),
        width=6,
    )  # fmt: skip
    board.row("JetStream")
    board.panel(
        _graph(
            "JetStream storage",
            "Bytes stored by each server, and its storage limit.",
            "bytes",
            _query(f"{by} ({_pod('jetstream_server_total_message_bytes')})",
                   "{{territory}} stored", ref="A"),
            _query(f"max by (territory) ({_pod('jetstream_server_max_storage')})",
                   "{{territory}} limit", ref="B"),
        ),
    )  # fmt: skip
    board.panel(
        _graph(
            "Streams and consumers per server",
            "Stream and consumer replicas each server holds.",
            "short",
            _query(f"{by} ({_pod('jetstream_server_total_streams')})", "{{territory}} streams",
                   ref="A"),
            _query(f"{by} ({_pod('jetstream_server_total_consumers')})",
                   "{{territory}} consumers", ref="B"),
        ),
    )  # fmt: skip
    board.panel(
        _graph(
            "Stream replicas",
            "Servers holding a replica of each stream.",
            "short",
            _query('count by (stream_name) (jetstream_stream_last_seq{job="nats"})',
                   "{{stream_name}}"),
        ),
    )  # fmt: skip
    board.panel(
        _graph("Stream replica lag", "Messages the most behind replica misses.", "short",
               _query(_replica_lag(), "{{stream_name}}")),
    )  # fmt: skip
    consumer = 'job="nats", is_consumer_leader="true"'
    board.panel(
        _graph(
            "Consumers: pending, unacknowledged, redelivered",
            "Per consumer, as its leader reports.",
            "short",
            *(
                _query(f"max by (stream_name, consumer_name) (jetstream_consumer_{metric}"
                       f"{{{consumer}}})", f"{{{{stream_name}}}}/{{{{consumer_name}}}} {label}",
                       ref=ref)
                for ref, metric, label in (
                    ("A", "num_pending", "pending"), ("B", "num_ack_pending", "ack pending"),
                    ("C", "num_redelivered", "redelivered"),
                )
            ),
        ),
        width=24,
    )  # fmt: skip
    return board


def _hosts() -> _Board:
    board = _Board(
        "hosts.json", "UnityPlan / Hosts and containers", "hosts",
        "Each host from node-exporter (job node) and its containers from cAdvisor "
        "(job cadvisor).",
    ).variables(_host_variable(), _territory_variable())  # fmt: skip
    node = 'job="node", host=~"$host"'
    fs = f'{node}, fstype!~"tmpfs|overlay|squashfs|nsfs|ramfs|fuse.*"'
    net = f'{node}, device!~"lo|veth.*|docker.*|br-.*"'
    board.row("Host")
    board.panel(
        _up_stat("Host exporters up", "`up` of node-exporter and cAdvisor on each host.",
                 _query('max by (job, host) (up{job=~"node|cadvisor", host=~"$host"})',
                        "{{host}} {{job}}")),
        width=24, height=4,
    )  # fmt: skip
    board.panel(
        _graph(
            "CPU busy",
            "Share of CPU time not idle, all cores.",
            "percentunit",
            _query(f'1 - avg by (host) (rate(node_cpu_seconds_total{{{node}, mode="idle"}}'
                   f"[$__rate_interval]))", "{{host}}"),
        ).min(0).max(1),
        width=8,
    )  # fmt: skip
    board.panel(
        _graph(
            "Memory used",
            "1 - MemAvailable / MemTotal.",
            "percentunit",
            _query(f"1 - max by (host) (node_memory_MemAvailable_bytes{{{node}}}) "
                   f"/ max by (host) (node_memory_MemTotal_bytes{{{node}}})", "{{host}}"),
        ).min(0).max(1),
        width=8,
    )  # fmt: skip
    board.panel(
        _graph("Load (1 min)", "node_load1.", "short",
               _query(f"max by (host) (node_load1{{{node}}})", "{{host}}")),
        width=8,
    )  # fmt: skip
    board.panel(
        _graph(
            "Disk space used",
            "Share of each filesystem in use.",
            "percentunit",
            _query(f"1 - max by (host, mountpoint) (node_filesystem_avail_bytes{{{fs}}}) "
                   f"/ max by (host, mountpoint) (node_filesystem_size_bytes{{{fs}}})",
                   "{{host}} {{mountpoint}}"),
        ).min(0).max(1),
        width=8,
    )  # fmt: skip
    board.panel(
        _graph(
            "Disk I/O",
            "Bytes read and written per second.",
            "Bps",
            _query(f"sum by (host) (rate(node_disk_read_bytes_total{{{node}}}[$__rate_interval]))",
                   "{{host}} read", ref="A"),
            _query(f"sum by (host) (rate(node_disk_written_bytes_total{{{node}}}"
                   f"[$__rate_interval]))", "{{host}} written", ref="B"),
        ),
        width=8,
    )  # fmt: skip
    board.panel(
        _graph(
            "Network",
            "Bytes received and sent per second on physical and WireGuard interfaces.",
            "Bps",
            _query(f"sum by (host, device) (rate(node_network_receive_bytes_total{{{net}}}"
                   f"[$__rate_interval]))", "{{host}} {{device}} in", ref="A"),
            _query(f"sum by (host, device) (rate(node_network_transmit_bytes_total{{{net}}}"
                   f"[$__rate_interval]))", "{{host}} {{device}} out", ref="B"),
        ),
        width=8,
    )  # fmt: skip
    board.row("Containers of the selected pods")
    pod_containers = (
        'job="cadvisor", host=~"$host", '
        'name=~"(service-[a-z]+|monitoring-[a-z]+-exporter)-($territory)"'
    )
    _container_panels(board, pod_containers, "pod")
    board.row("All containers on the selected hosts")
    _container_panels(board, 'job="cadvisor", host=~"$host", name!=""', "host")
    return board


def _container_panels(board: _Board, selector: str, scope: str) -> None:
    which = "each pod's containers" if scope == "pod" else "every named container"
    board.panel(
        _graph(
            "Container CPU",
            f"CPU cores used by {which}.",
            "short",
            _query(f"sum by (host, name) (rate(container_cpu_usage_seconds_total{{{selector}}}"
                   f"[$__rate_interval]))", "{{host}} {{name}}"),
        ),
        width=8,
    )  # fmt: skip
    board.panel(
        _graph(
            "Container memory",
            f"Working set of {which}.",
            "bytes",
            _query(f"sum by (host, name) (container_memory_working_set_bytes{{{selector}}})",
                   "{{host}} {{name}}"),
        ),
        width=8,
    )  # fmt: skip
    board.panel(
        _graph(
            "Container network",
            f"Bytes received and sent per second by {which}.",
            "Bps",
            _query(f"sum by (host, name) (rate(container_network_receive_bytes_total"
                   f"{{{selector}}}[$__rate_interval]))", "{{host}} {{name}} in", ref="A"),
            _query(f"sum by (host, name) (rate(container_network_transmit_bytes_total"
                   f"{{{selector}}}[$__rate_interval]))", "{{host}} {{name}} out", ref="B"),
        ),
        width=8,
    )  # fmt: skip


def _wireguard(deployment: Deployment) -> _Board:
    peers = ", ".join(f"{vpn_network(pod.slot)} = {pod.code}" for pod in deployment.pods)
    board = _Board(
        "wireguard.json", "UnityPlan / WireGuard mesh", "wireguard",
        "WireGuard peers of each host, from prometheus_wireguard_exporter (job wireguard), "
        "and Prometheus' view of the pods it scrapes over the tunnels.",
    ).variables(_host_variable(), _territory_variable())  # fmt: skip
    wg = 'job="wireguard", host=~"$host"'
    board.row("Peers")
    board.panel(
        _stat(
            "Seconds since the latest handshake",
            f"Per host and peer (allowed_ips names the peer: {peers}). "
            f"Handshakes renew every 2 minutes while the tunnel carries traffic; "
            f"over {HANDSHAKE_STALE_SECONDS} s the peer is unreachable.",
            _query(f"time() - max by (host, allowed_ips) (wireguard_latest_handshake_seconds{{{wg}}})",
                   "{{host}} -> {{allowed_ips}}"),
        ).unit("s").thresholds(
            _thresholds("green", (HANDSHAKE_WARN_SECONDS, "orange"),
                        (HANDSHAKE_STALE_SECONDS, "red"))
        ).color_mode(common.BigValueColorMode.BACKGROUND).text_mode(
            common.BigValueTextMode.VALUE_AND_NAME
        ),
        width=24, height=6,
    )  # fmt: skip
    board.panel(
        _graph(
            "Tunnel traffic",
            "Bytes received from and sent to each peer per second.",
            "Bps",
            _query(f"sum by (host, allowed_ips) (rate(wireguard_received_bytes_total{{{wg}}}"
                   f"[$__rate_interval]))", "{{host}} <- {{allowed_ips}}", ref="A"),
            _query(f"sum by (host, allowed_ips) (rate(wireguard_sent_bytes_total{{{wg}}}"
                   f"[$__rate_interval]))", "{{host}} -> {{allowed_ips}}", ref="B"),
        ),
    )  # fmt: skip
    board.panel(
        _graph(
            "Handshake age",
            "Seconds since the latest handshake, over time.",
            "s",
            _query(f"time() - max by (host, allowed_ips) (wireguard_latest_handshake_seconds{{{wg}}})",
                   "{{host}} -> {{allowed_ips}}"),
        ).thresholds(_thresholds("green", (HANDSHAKE_STALE_SECONDS, "red"))),
    )  # fmt: skip
    board.row("Pods seen over the tunnels")
    board.panel(
        _up_stat(
            "Pod exporters reachable",
            "Prometheus scrapes every pod's exporters over WireGuard: DOWN for all of a pod's "
            "jobs at once usually means its tunnel.",
            _query(f'max by (job, territory) (up{{job=~"{POD_JOBS}", territory=~"$territory"}})',
                   "{{territory}} {{job}}"),
        ),
    )  # fmt: skip
    board.panel(
        _graph(
            "Scrape duration",
            "Time Prometheus takes to scrape each pod's exporters: grows with the tunnel's "
            "latency and loss.",
            "s",
            _query(f"max by (job, territory) (scrape_duration_seconds"
                   f'{{job=~"{POD_JOBS}", territory=~"$territory"}})', "{{territory}} {{job}}"),
        ),
    )  # fmt: skip
    return board


def _boards(deployment: Deployment) -> list[tuple[str, _Board]]:
    boards = [
        ("overview.json", _overview(deployment)),
        ("postgres.json", _postgres()),
        ("redis.json", _redis()),
        ("nats.json", _nats(deployment)),
        ("hosts.json", _hosts()),
    ]
    if deployment.config.layout == "multi-host":
        boards.append(("wireguard.json", _wireguard(deployment)))
    return boards


# --- public API ------------------------------------------------------------------------
def dashboards(deployment: Deployment) -> dict[str, dict[str, Any]]:
    """File name -> dashboard JSON model (the SDK encoder's output, as plain data)."""
    return {name: board.json() for name, board in _boards(deployment)}


def render_dashboards(deployment: Deployment) -> dict[str, str]:
    """File name -> dashboard JSON text, for the provider's directory."""
    return {
        name: json.dumps(document, sort_keys=True, indent=2) + "\n"
        for name, document in dashboards(deployment).items()
    }


def render_dashboard_provider() -> str:
    """Grafana's dashboard provisioning file: the JSON directory, read-only in the UI."""
    document = {
        "apiVersion": 1,
        "providers": [
            {
                "name": "unityplan",
                "orgId": 1,
                "type": "file",
                "folder": FOLDER,
                "folderUid": FOLDER_UID,
                # Dashboards are code: no saving from the UI, no deleting from it either.
                "allowUiUpdates": False,
                "disableDeletion": True,
                "updateIntervalSeconds": 30,
                "options": {"path": DASHBOARDS_DIR, "foldersFromFilesStructure": False},
            }
        ],
    }
    return yaml.safe_dump(document, sort_keys=False)


def home_dashboard_settings() -> list[str]:
    """Grafana environment making the overview the home dashboard."""
    return [f"GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH={HOME_DASHBOARD_PATH}"]


def _panels(dashboard_json: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    for panel in dashboard_json.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # a collapsed row keeps its panels inside


def panel_queries(dashboard_json: Mapping[str, Any]) -> list[str]:
    """Every PromQL expression of the dashboard's panels, in panel order, as written (with
    Grafana variables such as `$territory` and `$__rate_interval`: see `expand_variables`)."""
    return [
        target["expr"]
        for panel in _panels(dashboard_json)
        for target in panel.get("targets", [])
        if "expr" in target
    ]


_VARIABLE = re.compile(r"\$(?:\{(?P<braced>[A-Za-z_]\w*)\}|(?P<plain>[A-Za-z_]\w*))")


def expand_variables(expr: str, values: Mapping[str, str] | None = None) -> str:
    """`expr` as Prometheus can run it outside Grafana: `$__rate_interval` and friends become
    fixed durations, every other variable `values[name]` or ".+" (all dashboards use variables
    only inside `=~` matchers). `$1` (a label_replace group) is left alone."""
    table = {**DEFAULT_VARIABLE_VALUES, **(values or {})}

    def substitute(match: re.Match[str]) -> str:
        name = match.group("braced") or match.group("plain")
        return table.get(name, ANY_VALUE)

    return _VARIABLE.sub(substitute, expr)
