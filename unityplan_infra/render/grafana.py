"""Grafana provisioning: the Prometheus (default) and Jaeger datasources."""

from __future__ import annotations

import yaml


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
