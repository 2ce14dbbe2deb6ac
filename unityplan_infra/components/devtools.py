"""`DevTools`: the dashboard, Adminer, MailHog and Redis Commander on the monitoring host.

Redis Commander is configured with every pod's Redis by the program (the guide's manual
step 7). Its list comes from the environment, so adding a pod replaces this stateless dev
tool; no pod container is touched.
"""

from __future__ import annotations

from collections.abc import Mapping

import pulumi

from unityplan_infra.components.host import Attachment, HostAccess, container, stack_networks
from unityplan_infra.components.pod import PodStack
from unityplan_infra.render.dashboard import render_dashboard
from unityplan_infra.topology.plan import Deployment, PodPlan
from unityplan_infra.topology.stop import stop_grace_seconds


def pods_in_reach(deployment: Deployment) -> list[PodPlan]:
    """Pods whose databases the dev tools reach by container name: every pod on a single
    host (over the mesh network); in multi-host only the monitoring host's own, since other
    hosts keep PostgreSQL and Redis on their loopback (reach those with an SSH forward)."""
    if deployment.config.layout == "single-host":
        return list(deployment.pods)
    return list(deployment.monitoring_host.pods)


def redis_hosts(deployment: Deployment, passwords: Mapping[str, str]) -> str:
    """REDIS_HOSTS of Redis Commander: label:host:port:db:password, comma-separated."""
    return ",".join(
        f"{pod.code}:{pod.service('redis')}:6379:0:{passwords[pod.code]}"
        for pod in pods_in_reach(deployment)
    )


def postgres_server(deployment: Deployment) -> str:
    """Adminer's default server: the first pod's PostgreSQL in reach."""
    return f"{pods_in_reach(deployment)[0].service('postgres')}:5432"


class DevTools(pulumi.ComponentResource):
    """Developer conveniences; never needed by the pods themselves."""

    urls: dict[str, str]

    def __init__(
        self,
        deployment: Deployment,
        *,
        host: HostAccess,
        pods: Mapping[str, PodStack],
        global_network: pulumi.Input[str],
        mesh_network: pulumi.Input[str] | None,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("unityplan:infra:DevTools", "dev-tools", None, opts)
        images = deployment.config.images
        plan = host.plan
        self.urls = plan.dev_tool_urls()
        networks = stack_networks(global_network, mesh_network)
        if mesh_network is None:  # multi-host: join the local pods' own networks
            networks += [
                Attachment(pods[pod.code].network_id) for pod in deployment.monitoring_host.pods
            ]

        page = host.config_file(
            "dev-dashboard-page", "dev/dashboard/index.html", render_dashboard(deployment),
            parent=self,
        )  # fmt: skip
        container(
            "dev-dashboard",
            host=host,
            image=images.dashboard,
            parent=self,
            grace_seconds=stop_grace_seconds("devtool"),
            bindings=plan.ports_of("dev-dashboard"),
            networks=networks,
            healthcheck="wget -q -O /dev/null http://127.0.0.1:80/",
            binds=[(host.path("dev/dashboard"), "/usr/share/nginx/html")],
            depends_on=[page],
        )
        container(
            "dev-adminer",
            host=host,
            image=images.adminer,
            parent=self,
            grace_seconds=stop_grace_seconds("devtool"),
            bindings=plan.ports_of("dev-adminer"),
            networks=networks,
            envs=[f"ADMINER_DEFAULT_SERVER={postgres_server(deployment)}"],
        )
        container(
            "dev-mailhog",
            host=host,
            image=images.mailhog,
            parent=self,
            grace_seconds=stop_grace_seconds("devtool"),
            bindings=plan.ports_of("dev-mailhog"),
            networks=networks,
        )
        passwords = pulumi.Output.all(**{code: pod.redis_password for code, pod in pods.items()})
        container(
            "dev-redis-commander",
            host=host,
            image=images.redis_commander,
            parent=self,
            grace_seconds=stop_grace_seconds("devtool"),
            bindings=plan.ports_of("dev-redis-commander"),
            networks=networks,
            envs=pulumi.Output.secret(
                passwords.apply(lambda pw: [f"REDIS_HOSTS={redis_hosts(deployment, pw)}"])
            ),
        )
        self.register_outputs({"urls": self.urls})
