"""`MonitoringStack`: Prometheus, Grafana, Jaeger and Traefik on the monitoring host.

Prometheus' targets come from the plan and reach the running server by SIGHUP, so adding a
pod never replaces the Prometheus container.
"""

from __future__ import annotations

import pulumi
import pulumi_docker as docker

from unityplan_infra.components.host import (
    Attachment,
    HostAccess,
    container,
    signal_reload,
    stack_networks,
    volume,
)
from unityplan_infra.components.matrix_alerts import RELAY_URL
from unityplan_infra.components.secrets import password
from unityplan_infra.config.models import StackConfig
from unityplan_infra.render.alertmanager import (
    DEFAULT_SECRETS_DIR,
    SMTP_PASSWORD_FILE,
    AlertRouting,
    EmailReceiver,
    alertmanager_secret_files,
    dev_routing,
    render_alertmanager_config,
)
from unityplan_infra.render.alerts import ALERT_RULES_FILE, render_alert_rules
from unityplan_infra.render.dashboards import (
    HOME_DASHBOARD_PATH,
    PROVIDER_FILE,
    render_dashboard_provider,
    render_dashboards,
)
from unityplan_infra.render.dashboards import PROVISIONING_DIR as DASHBOARD_PROVISIONING_DIR
from unityplan_infra.render.grafana import grafana_public_settings, render_datasources
from unityplan_infra.render.prometheus import render_prometheus_config
from unityplan_infra.render.traefik import (
    ACME_DIR,
    public,
    render_dynamic_config,
    traefik_arguments,
)
from unityplan_infra.topology.plan import Deployment
from unityplan_infra.topology.stop import stop_grace_seconds

# The prom/alertmanager image runs as nobody; it reads the password file at every send.
ALERTMANAGER_USER = "65534:65534"
GRAFANA_ADMIN = "unityplan-admin"


class MonitoringStack(pulumi.ComponentResource):
    """Metrics, dashboards, traces and the reverse proxy."""

    grafana_admin_password: pulumi.Output[str]
    """Generated; exported as a secret."""
    urls: dict[str, str]

    def __init__(
        self,
        deployment: Deployment,
        *,
        host: HostAccess,
        global_network: pulumi.Input[str],
        mesh_network: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("unityplan:infra:MonitoringStack", "monitoring", None, opts)
        images = deployment.config.images
        plan = host.plan
        self.urls = plan.monitoring_urls()
        networks = stack_networks(global_network, mesh_network)

        # Rules beside the config: a new pod rewrites them and Prometheus reloads (SIGHUP).
        rules_file = host.config_file(
            "prometheus-alert-rules", f"monitoring/prometheus/{ALERT_RULES_FILE}",
            render_alert_rules(deployment), parent=self,
            reload=signal_reload("monitoring-prometheus"),
        )  # fmt: skip
        prometheus_file = host.config_file(
            "prometheus-config", "monitoring/prometheus/prometheus.yml",
            render_prometheus_config(deployment), parent=self,
            reload=signal_reload("monitoring-prometheus"), depends_on=[rules_file],
        )  # fmt: skip
        self.prometheus = container(
            "monitoring-prometheus",
            host=host,
            image=images.prometheus,
            parent=self,
            grace_seconds=stop_grace_seconds("prometheus"),
            bindings=plan.ports_of("monitoring-prometheus"),
            networks=networks,
            command_args=[
                "--config.file=/config/prometheus.yml",
                "--storage.tsdb.path=/prometheus",
                "--storage.tsdb.retention.time=30d",
            ],
            healthcheck="wget -q -O /dev/null http://127.0.0.1:9090/-/ready",
            volumes=[(volume("monitoring-prometheus-data", host=host, parent=self), "/prometheus")],
            binds=[(host.path("monitoring/prometheus"), "/config")],
            depends_on=[prometheus_file, rules_file],
        )

        self.alertmanager = self._alertmanager(deployment, host, networks)

        self.grafana_admin_password = password("grafana-admin-password", self)
        datasources = host.config_file(
            "grafana-datasources", "monitoring/grafana/datasources/unityplan.yaml",
            render_datasources(), parent=self,
        )  # fmt: skip
        # Dashboards are files Grafana's file provider re-reads: a new pod needs no restart.
        dashboard_files = [
            host.config_file(
                "grafana-dashboard-provider", f"monitoring/grafana/dashboards/{PROVIDER_FILE}",
                render_dashboard_provider(), parent=self,
            ),
            *(
                host.config_file(
                    f"grafana-dashboard-{name.removesuffix('.json')}",
                    f"monitoring/grafana/dashboards/json/{name}", text, parent=self,
                )
                for name, text in render_dashboards(deployment).items()
            ),
        ]  # fmt: skip
        self.grafana = container(
            "monitoring-grafana",
            host=host,
            image=images.grafana,
            parent=self,
            grace_seconds=stop_grace_seconds("grafana"),
            bindings=plan.ports_of("monitoring-grafana"),
            networks=networks,
            envs=self.grafana_admin_password.apply(
                lambda secret: [
                    f"GF_SECURITY_ADMIN_USER={GRAFANA_ADMIN}",
                    f"GF_SECURITY_ADMIN_PASSWORD={secret}",
                    "GF_USERS_ALLOW_SIGN_UP=false",
                    "GF_ANALYTICS_REPORTING_ENABLED=false",
                    *grafana_public_settings(deployment),
                    f"GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH={HOME_DASHBOARD_PATH}",
                ]
            ),
            healthcheck="wget -q -O /dev/null http://127.0.0.1:3000/api/health",
            volumes=[(volume("monitoring-grafana-data", host=host, parent=self), "/var/lib/grafana")],
            binds=[(host.path("monitoring/grafana/datasources"),
                    "/etc/grafana/provisioning/datasources"),
                   (host.path("monitoring/grafana/dashboards"), DASHBOARD_PROVISIONING_DIR)],
            depends_on=[datasources, *dashboard_files],
        )  # fmt: skip

        self.jaeger = container(
            "monitoring-jaeger",
            host=host,
            image=images.jaeger,
            parent=self,
            grace_seconds=stop_grace_seconds("jaeger"),
            bindings=plan.ports_of("monitoring-jaeger"),
            networks=networks,
            envs=["COLLECTOR_OTLP_ENABLED=true"],
        )

        routes = host.config_file(
            "traefik-dynamic", "monitoring/traefik/dynamic.yml",
            render_dynamic_config(deployment), parent=self,
        )  # fmt: skip
        self.traefik = container(
            "reverse-proxy-traefik",
            host=host,
            image=images.traefik,
            parent=self,
            grace_seconds=stop_grace_seconds("traefik"),
            bindings=plan.ports_of("reverse-proxy-traefik"),
            networks=networks,
            command_args=traefik_arguments(deployment),
            healthcheck="traefik healthcheck --ping",
            binds=[(host.path("monitoring/traefik"), "/config")],
            volumes=[(volume("monitoring-traefik-acme", host=host, parent=self), ACME_DIR)]
            if public(deployment)
            else [],
            depends_on=[routes],
        )
        self.register_outputs(
            {"urls": self.urls, "grafanaAdminPassword": self.grafana_admin_password}
        )

    def _alertmanager(
        self, deployment: Deployment, host: HostAccess, networks: list[Attachment]
    ) -> docker.Container:
        """Alertmanager beside Prometheus; its config and secret files reload by SIGHUP."""
        smtp_password = pulumi.Config().get_secret("alertSmtpPassword")
        routing: pulumi.Output[AlertRouting] = pulumi.Output.secret(
            pulumi.Output.from_input(smtp_password).apply(
                lambda secret: alert_routing(deployment.config, secret)
            )
        )
        reload = signal_reload("monitoring-alertmanager")
        files = [
            host.config_file(
                "alertmanager-config", "monitoring/alertmanager/alertmanager.yml",
                routing.apply(render_alertmanager_config), parent=self, reload=reload,
            )
        ]  # fmt: skip
        email = deployment.config.alerting.email if deployment.config.alerting else None
        # Only a username makes Alertmanager authenticate; a password set without one is unused.
        if smtp_password is not None and email is not None and email.username:
            files.append(
                host.config_file(
                    "alertmanager-smtp-password",
                    f"monitoring/alertmanager-secrets/{SMTP_PASSWORD_FILE}",
                    routing.apply(lambda r: alertmanager_secret_files(r)[SMTP_PASSWORD_FILE]),
                    parent=self, reload=reload, secret_for=ALERTMANAGER_USER,
                )
            )  # fmt: skip
        data = volume("monitoring-alertmanager-data", host=host, parent=self)
        return container(
            "monitoring-alertmanager",
            host=host,
            image=deployment.config.images.alertmanager,
            parent=self,
            grace_seconds=stop_grace_seconds("alertmanager"),
            bindings=host.plan.ports_of("monitoring-alertmanager"),
            networks=networks,
            command_args=[
                "--config.file=/config/alertmanager.yml",
                "--storage.path=/alertmanager",
                "--cluster.listen-address=",  # one instance: no gossip port
            ],
            healthcheck="wget -q -O /dev/null http://127.0.0.1:9093/-/ready",
            volumes=[(data, "/alertmanager")],
            binds=[
                (host.path("monitoring/alertmanager"), "/config"),
                (host.path("monitoring/alertmanager-secrets"), DEFAULT_SECRETS_DIR),
            ],
            depends_on=files,
        )


def alert_routing(config: StackConfig, smtp_password: str | None) -> AlertRouting:
    """Where alerts go: the stack's `alerting`, else MailHog when dev tools run, else
    nowhere (a warning says so)."""
    alerting = config.alerting
    if alerting is None:
        return dev_routing() if config.dev_tools_enabled else AlertRouting()
    email = None
    if alerting.email is not None:
        settings = alerting.email
        email = EmailReceiver(
            tuple(settings.to), settings.sender, settings.smarthost,
            username=settings.username, password=smtp_password if settings.username else None,
            require_tls=settings.require_tls,
        )  # fmt: skip
    return AlertRouting(
        email=email,
        webhook_url=alerting.webhook_url,
        matrix_relay_url=RELAY_URL if alerting.matrix is not None else None,
    )
