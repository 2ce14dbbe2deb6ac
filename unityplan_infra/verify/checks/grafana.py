"""Grafana: `/api/health` answers and its database is ok."""

from __future__ import annotations

from unityplan_infra.verify.http import fetch_json
from unityplan_infra.verify.model import MESH, Check, Context, Finding, failed, passed


def checks(context: Context) -> list[Check]:
    if "grafana" not in context.outputs.urls:
        return []

    def probe() -> list[Finding]:
        outputs = context.outputs
        base = context.url(outputs.monitoring_host, outputs.urls["grafana"]).rstrip("/")
        health = fetch_json(f"{base}/api/health", timeout=context.timeout)
        if health.get("database") != "ok":
            return [failed("grafana.health", MESH, f"database: {health.get('database')}",
                           "Grafana cannot open its database (volume permissions or disk)",
                           "docker logs monitoring-grafana")]  # fmt: skip
        return [passed("grafana.health", MESH, f"version {health.get('version')}, database ok")]

    return [
        Check("grafana", "grafana.health", MESH, probe,
              "monitoring-grafana is not running, or its port is not published",
              "docker logs monitoring-grafana; then `./scripts/up.sh STACK`")
    ]  # fmt: skip
