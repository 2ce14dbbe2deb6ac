"""`NatsStreams`: the JetStream streams, created or updated by every `pulumi up`.

The program's own stream code (`nats/apply_streams.py`, nats-py) runs in a throwaway
container on the first pod's host, on the network where the NATS servers are reachable. It
is idempotent: an unchanged stream is left alone, a changed one updated, a new one created.
It reruns when the stream definitions change (e.g. a pod was added).
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path

import pulumi

from unityplan_infra.components.host import HostAccess, sha256
from unityplan_infra.nats import apply_streams
from unityplan_infra.nats.streams import stream_configs
from unityplan_infra.render.nats import CLIENT_USER
from unityplan_infra.topology.plan import Deployment

NATS_PY = "nats-py==2.16.0"  # same pin as requirements-dev.txt
JOB_DIR = "jobs/streams"


def job_command(image: str, script_dir: str, network: str) -> str:
    """Shell: run apply_streams.py in `image` with the job spec (JSON) on stdin."""
    inner = (
        f"pip install --quiet --no-cache-dir --disable-pip-version-check {NATS_PY}"
        " && python /job/apply_streams.py"
    )
    return (
        f"docker run --rm -i --network {shlex.quote(network)}"
        f" -v {shlex.quote(script_dir)}:/job:ro {shlex.quote(image)} sh -c {shlex.quote(inner)}"
    )


class NatsStreams(pulumi.ComponentResource):
    """GLOBAL_EVENTS and one TERRITORY_<CODE> per pod."""

    definitions: list[dict[str, object]]

    def __init__(
        self,
        deployment: Deployment,
        *,
        host: HostAccess,
        client_password: pulumi.Output[str],
        network: pulumi.Input[str],
        servers: Sequence[pulumi.Resource],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("unityplan:infra:NatsStreams", "nats-streams", None, opts)
        self.definitions = stream_configs(deployment)
        first = deployment.pods[0]
        url = "nats://{}:{}".format(*first.nats_client)
        script = Path(apply_streams.__file__).read_text()
        script_file = host.config_file(
            "nats-streams-script", f"{JOB_DIR}/apply_streams.py", script, parent=self
        )
        spec = client_password.apply(
            lambda secret: json.dumps(
                {"url": url, "user": CLIENT_USER, "password": secret,
                 "streams": self.definitions}
            )
        )  # fmt: skip
        self.job = host.run(
            "nats-streams-apply",
            create=pulumi.Output.from_input(network).apply(
                lambda net: job_command(
                    deployment.config.images.stream_job, host.path(JOB_DIR), net
                )
            ),
            stdin=pulumi.Output.secret(spec),
            triggers=[sha256(json.dumps(self.definitions, sort_keys=True)), sha256(script)],
            parent=self,
            depends_on=[script_file, *servers],
        )
        self.register_outputs({"streams": [s["name"] for s in self.definitions]})
