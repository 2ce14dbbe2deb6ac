"""Traefik dynamic configuration (file provider, watched: changes apply without restart).

Routes by host name. Grafana has its own login and is always routed; Prometheus, Jaeger and
the dev dashboard have none, so they are routed only in the single-host layout, where
Traefik listens on the publish address (loopback by default), never on a public interface.
"""

from __future__ import annotations

import yaml

from unityplan_infra.topology.plan import Deployment


def routed_services(deployment: Deployment) -> dict[str, str]:
    """Host-name prefix -> backend URL."""
    config = deployment.config
    services = {"grafana": "http://monitoring-grafana:3000"} if config.monitoring.enabled else {}
    if config.layout == "single-host":
        if config.monitoring.enabled:
            services["prometheus"] = "http://monitoring-prometheus:9090"
            services["jaeger"] = "http://monitoring-jaeger:16686"
        if config.dev_tools_enabled:
            services["dashboard"] = "http://dev-dashboard:80"
    return services


def render_dynamic_config(deployment: Deployment) -> str:
    domain = deployment.config.web_host_domain
    routers: dict[str, object] = {}
    backends: dict[str, object] = {}
    for name, url in routed_services(deployment).items():
        routers[name] = {
            "rule": f"Host(`{name}.{domain}`)",
            "entryPoints": ["web", "websecure"],
            "service": name,
        }
        backends[name] = {"loadBalancer": {"servers": [{"url": url}]}}
    return yaml.safe_dump({"http": {"routers": routers, "services": backends}}, sort_keys=False)
