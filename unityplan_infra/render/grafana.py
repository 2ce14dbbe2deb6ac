"""Grafana: its provisioned datasources (Prometheus, the default, and Jaeger), and the
settings it needs when Traefik serves it to the internet over HTTPS."""

from __future__ import annotations

import yaml

from unityplan_infra.topology.plan import Deployment


def grafana_public_settings(deployment: Deployment) -> list[str]:
    """Environment of a Grafana behind HTTPS (multi-host): session cookies never travel
    over plain HTTP, and links use the public https URL."""
    if deployment.config.layout != "multi-host":
        return []
    return [
        "GF_SECURITY_COOKIE_SECURE=true",
        f"GF_SERVER_ROOT_URL=https://grafana.{deployment.config.web_host_domain}/",
    ]


def render_datasources() -> str:
    document = {
        "apiVersion": 1,
        "datasources": [
            {
                "name": "Prometheus",
                "uid": "prometheus",
                "type": "prometheus",
                "access": "proxy",
                "url": "http://monitoring-prometheus:9090",
                "isDefault": True,
                "editable": False,
            },
            {
                "name": "Jaeger",
                "uid": "jaeger",
                "type": "jaeger",
                "access": "proxy",
                "url": "http://monitoring-jaeger:16686",
                "editable": False,
            },
        ],
    }
    return yaml.safe_dump(document, sort_keys=False)
