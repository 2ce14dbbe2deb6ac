"""Traefik: its static configuration (command-line arguments) and its dynamic routes (file
provider, watched: route changes apply without a restart).

Routes by host name. Grafana has its own login and is always routed; Prometheus, Jaeger and
the dev dashboard have none, so they are routed only in the single-host layout, where
Traefik listens on the publish address (loopback by default), never on a public interface.

Multi-host, Traefik faces the internet: port 80 only redirects to HTTPS (and answers ACME
HTTP-01 challenges), every router is on `websecure` with a Let's Encrypt certificate, and
the web UIs answer only the networks of `webAllowCidrs` (default: the admin networks).
"""

from __future__ import annotations

from typing import Any

import yaml

from unityplan_infra.topology.plan import Deployment

CERT_RESOLVER = "letsencrypt"
ACME_DIR = "/acme"  # a retained volume: certificates and the ACME account survive replacement
ALLOW_MIDDLEWARE = "admin-networks"
STAGING_CA = "https://acme-staging-v02.api.letsencrypt.org/directory"


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


def public(deployment: Deployment) -> bool:
    """Whether Traefik faces the internet (multi-host: 80/443 on every interface)."""
    return deployment.config.layout == "multi-host"


def traefik_arguments(deployment: Deployment) -> list[str]:
    """Traefik's static configuration, as command-line arguments."""
    arguments = [
        "--entrypoints.web.address=:80",
        "--entrypoints.websecure.address=:443",
        "--entrypoints.websecure.http.tls=true",
        "--api.dashboard=true",
        # The dashboard on :8080, published on loopback (multi-host) or the publish address.
        "--api.insecure=true",
        "--ping=true",
        "--providers.file.directory=/config",
        "--providers.file.watch=true",
    ]
    acme = deployment.config.acme
    if not public(deployment) or acme is None:
        return arguments
    resolver = f"--certificatesresolvers.{CERT_RESOLVER}.acme"
    arguments += [
        "--entrypoints.web.http.redirections.entrypoint.to=websecure",
        "--entrypoints.web.http.redirections.entrypoint.scheme=https",
        "--entrypoints.web.http.redirections.entrypoint.permanent=true",
        f"--entrypoints.websecure.http.tls.certresolver={CERT_RESOLVER}",
        f"{resolver}.email={acme.email}",
        f"{resolver}.storage={ACME_DIR}/acme.json",  # Traefik keeps it 0600
    ]
    if acme.challenge == "http-01":
        arguments.append(f"{resolver}.httpchallenge.entrypoint=web")
    else:
        arguments.append(f"{resolver}.tlschallenge=true")
    if acme.staging:
        arguments.append(f"{resolver}.caserver={STAGING_CA}")
    return arguments


def dynamic_config(deployment: Deployment) -> dict[str, Any]:
    domain = deployment.config.web_host_domain
    internet = public(deployment)
    allow = deployment.config.web_allow_list if internet else []
    routers: dict[str, Any] = {}
    backends: dict[str, Any] = {}
    for name, url in routed_services(deployment).items():
        router: dict[str, Any] = {
            "rule": f"Host(`{name}.{domain}`)",
            "entryPoints": ["websecure"] if internet else ["web", "websecure"],
            "service": name,
        }
        if internet:
            router["tls"] = {"certResolver": CERT_RESOLVER}
        if allow:
            router["middlewares"] = [ALLOW_MIDDLEWARE]
        routers[name] = router
        backends[name] = {"loadBalancer": {"servers": [{"url": url}]}}
    http: dict[str, Any] = {"routers": routers, "services": backends}
    if allow:
        http["middlewares"] = {ALLOW_MIDDLEWARE: {"ipAllowList": {"sourceRange": allow}}}
    return {"http": http}


def render_dynamic_config(deployment: Deployment) -> str:
    return yaml.safe_dump(dynamic_config(deployment), sort_keys=False)
