"""Prometheus: every active scrape target is up (guide: "Prometheus Not Scraping Exporters")."""

from __future__ import annotations

from unityplan_infra.verify.http import fetch_json
from unityplan_infra.verify.model import MESH, Check, Context, Finding, failed, passed


def checks(context: Context) -> list[Check]:
    if "prometheus" not in context.outputs.urls:
        return []

    def probe() -> list[Finding]:
        return [_targets(context)]

    return [
        Check("prometheus", "prometheus.targets", MESH, probe,
              "monitoring-prometheus is not running, or its port is not published",
              "docker logs monitoring-prometheus; then `./scripts/up.sh STACK`")
    ]  # fmt: skip


def _targets(context: Context) -> Finding:
    outputs = context.outputs
    base = context.url(outputs.monitoring_host, outputs.urls["prometheus"]).rstrip("/")
    answer = fetch_json(f"{base}/api/v1/targets?state=active", timeout=context.timeout)
    targets = (answer.get("data") or {}).get("activeTargets") or []
    if not targets:
        return failed(
            "prometheus.targets", MESH, "no active targets",
            "Prometheus runs without the generated config",
            "docker exec monitoring-prometheus cat /config/prometheus.yml; then"
            " `./scripts/up.sh STACK`",
        )
    bad = [t for t in targets if t.get("health") != "up"]
    if bad:
        described = "; ".join(
            f"{t.get('labels', {}).get('job')} {t.get('scrapeUrl')}: {t.get('health')}"
            + (f" ({t.get('lastError')})" if t.get("lastError") else "")
            for t in bad
        )
        never = all(t.get("health") == "unknown" for t in bad)
        return failed(
            "prometheus.targets", MESH, f"{len(bad)} of {len(targets)} not up: {described}",
            "not scraped yet (wait one scrape interval, 15 s)" if never else
            "the exporter is down, or unreachable from Prometheus (network attachment)",
            "curl the exporter's /metrics from the monitoring host; docker logs <exporter>;"
            " after a config change: curl -X POST <prometheus>/-/reload",
        )  # fmt: skip
    return passed("prometheus.targets", MESH, f"all {len(targets)} targets up")
