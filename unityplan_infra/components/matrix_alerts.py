"""`MatrixAlertRelay`: alerts as messages in a room on the monitoring pod's homeserver.

Alertmanager has no Matrix receiver, so its webhook goes to the program's own relay
(alerting/matrix_relay.py, shipped as a zip application in the stock Python image). Before
the relay starts, a one-shot bootstrap (the same archive) registers the bot with Synapse's
shared-secret registration, creates the room `#<roomAlias>:<server>`, invites the
operators and leaves the bot's access token in the relay's volume (0600, the relay's user).
It runs again only when the archive or its settings change, and changes nothing when all
is in place.
"""

from __future__ import annotations

import base64
import json
import shlex

import pulumi

from unityplan_infra.components.host import (
    Attachment,
    HostAccess,
    container,
    restart,
    sha256,
    volume,
)
from unityplan_infra.config.models import MatrixAlerts
from unityplan_infra.render.matrix_relay_job import RELAY_FILE, build_matrix_relay
from unityplan_infra.topology.plan import Deployment
from unityplan_infra.topology.stop import stop_grace_seconds

RELAY = "monitoring-matrix-relay"
RELAY_PORT = 8080
RELAY_URL = f"http://{RELAY}:{RELAY_PORT}/alerts"
RELAY_USER = "65534:65534"  # nobody: reads the token the bootstrap leaves for it
JOB_DIR = "monitoring/matrix-relay"
TOKEN_FILE = "/data/access-token"


class MatrixAlertRelay(pulumi.ComponentResource):
    """The relay container and its bootstrap, beside Alertmanager."""

    def __init__(
        self,
        deployment: Deployment,
        settings: MatrixAlerts,
        *,
        host: HostAccess,
        global_network: pulumi.Input[str],
        pod_network: pulumi.Input[str],
        registration_secret: pulumi.Output[str],
        homeserver_ready: pulumi.Resource,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("unityplan:infra:MatrixAlertRelay", "matrix-alert-relay", None, opts)
        pod = deployment.pod(deployment.config.monitoring_pod.code)
        homeserver = f"http://{pod.service('matrix')}:8008"
        image = deployment.config.images.stream_job  # the pinned stock Python image
        app = build_matrix_relay()
        job_file = host.config_file(
            "matrix-relay-job", f"{JOB_DIR}/{RELAY_FILE}", base64.b64encode(app.archive).decode(),
            parent=self, base64_stdin=True, reload=restart(RELAY),
        )  # fmt: skip
        data = volume("monitoring-matrix-relay-data", host=host, parent=self)
        public = {"homeserver": homeserver, "token_file": TOKEN_FILE,
                  "token_file_owner": [65534, 65534], "operators": list(settings.operators),
                  "room_alias": settings.room_alias}  # fmt: skip
        spec = registration_secret.apply(
            lambda secret: json.dumps({**public, "registration_shared_secret": secret})
        )
        bootstrap = host.run(
            "matrix-relay-bootstrap",
            create=pulumi.Output.all(host.path(JOB_DIR), pod_network, data.name).apply(
                lambda values: (
                    f"docker run --rm -i --network {shlex.quote(values[1])}"
                    f" -v {shlex.quote(values[0])}:/job:ro -v {shlex.quote(values[2])}:/data"
                    f" {shlex.quote(image)} python /job/{RELAY_FILE} bootstrap"
                )
            ),
            stdin=pulumi.Output.secret(spec),
            triggers=[app.sha256, sha256(json.dumps(public, sort_keys=True))],
            parent=self,
            depends_on=[job_file, data, homeserver_ready],
        )
        self.container = container(
            RELAY,
            host=host,
            image=image,
            parent=self,
            grace_seconds=stop_grace_seconds("matrix-relay"),
            # Alertmanager reaches it on the global network; it reaches Synapse on the pod's.
            networks=[Attachment(global_network), Attachment(pod_network)],
            envs=[
                f"MATRIX_RELAY_HOMESERVER={homeserver}",
                f"MATRIX_RELAY_ROOM=#{settings.room_alias}:{pod.matrix_server_name}",
                f"MATRIX_RELAY_TOKEN_FILE={TOKEN_FILE}",
                f"MATRIX_RELAY_LISTEN=0.0.0.0:{RELAY_PORT}",
            ],
            command_args=["python", f"/job/{RELAY_FILE}", "serve"],
            healthcheck=f"python /job/{RELAY_FILE} healthcheck",
            user=RELAY_USER,
            volumes=[(data, "/data")],
            binds=[(host.path(JOB_DIR), "/job")],
            depends_on=[bootstrap],
        )
        self.register_outputs({"relay": self.container.name, "url": RELAY_URL})
