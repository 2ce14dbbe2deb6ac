"""Prometheus configuration (`prometheus.yml`) of the monitoring host.

Jobs are per exporter *kind* (`postgres`, `redis`, `nats`), not per pod and kind. The
reference guide wrote one job per pod and kind (`postgres-dk`, `postgres-no`, ...): the job
count grows with every pod, and dashboards and alerts that select `job="postgres"` (as the
exporters' stock Grafana dashboards do) see nothing. Here each kind is one job with one
`static_configs` entry per pod, and the pod is told apart by the `pod` and `territory`
labels instead, so adding a pod adds targets, never jobs.

The config is a dict emitted with `yaml.safe_dump`, so quoting is the emitter's job: the
territory code "no" comes out as the string 'no', not YAML 1.1's false.
"""

from __future__ import annotations

from typing import Any

import yaml

from unityplan_infra.render.alerts import ALERT_RULES_FILE
from unityplan_infra.topology.plan import Deployment

SCRAPE_INTERVAL = "15s"
EVALUATION_INTERVAL = "15s"
CLUSTER_LABEL = "unityplan-central"
# Exporter kinds that run once per pod; PodPlan.exporter_target knows their ports.
POD_EXPORTER_KINDS = ("postgres", "redis", "nats")
# Prometheus scrapes itself inside its own container.
SELF_TARGET = "localhost:9090"
# Alertmanager beside Prometheus on the global network.
ALERTMANAGER_TARGET = "monitoring-alertmanager:9093"


def _job(name: str, static_configs: list[dict[str, Any]]) -> dict[str, Any]:
    return {"job_name": name, "static_configs": static_configs}


def prometheus_config(deployment: Deployment) -> dict[str, Any]:
    """The Prometheus config of `deployment` as a dict (YAML-serialisable)."""
    jobs: list[dict[str, Any]] = [_job("prometheus", [{"targets": [SELF_TARGET]}])]
    for kind in POD_EXPORTER_KINDS:
        jobs.append(
            _job(
                kind,
                [
                    {
                        "targets": [pod.exporter_target(kind)],
                        # `host`: a host that is down mutes its pods' alerts (INHIBITIONS).
                        "labels": {"pod": pod.pod.name, "territory": pod.code, "host": pod.host},
                    }
                    for pod in deployment.pods
                ],
            )
        )
    jobs.append(
        _job(
            "node",
            [
                {"targets": [host.node_exporter_target()], "labels": {"host": host.name}}
                for host in deployment.hosts
            ],
        )
    )
    jobs.append(
        _job(
            "cadvisor",
            [
                {"targets": [host.cadvisor_target()], "labels": {"host": host.name}}
                for host in deployment.hosts
            ],
        )
    )
    wireguard = [
        {"targets": [target], "labels": {"host": host.name}}
        for host in deployment.hosts
        if (target := host.wireguard_exporter_target()) is not None
    ]
    if wireguard:
        jobs.append(_job("wireguard", wireguard))
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "evaluation_interval": EVALUATION_INTERVAL,
            "external_labels": {"cluster": CLUSTER_LABEL},
        },
        # Relative: beside prometheus.yml, in the container's /config as in a test's tmp dir.
        "rule_files": [ALERT_RULES_FILE],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [ALERTMANAGER_TARGET]}]}]},
        "scrape_configs": jobs,
    }


def render_prometheus_config(deployment: Deployment) -> str:
    """`prometheus.yml` of `deployment`, as YAML text."""
    return yaml.safe_dump(prometheus_config(deployment), sort_keys=False)
