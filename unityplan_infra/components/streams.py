"""`NatsStreams`: the JetStream streams, created or updated by every `pulumi up`.

The program's own stream code (`nats/apply_streams.py`, with nats-py packed beside it into
one zip application by render/stream_job.py) runs in a throwaway container on the first
pod's host, on the network where the NATS servers are reachable. It needs nothing from the
internet: the image is pinned and the job carries its dependency. It is idempotent: an
unchanged stream is left alone, a changed one updated, a new one created. It reruns when
the stream definitions or the job change (e.g. a pod was added).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shlex
from collections.abc import Sequence
from typing import Any

import pulumi

from unityplan_infra.components.host import HostAccess, sha256
from unityplan_infra.nats.streams import stream_configs
from unityplan_infra.render.nats import CLIENT_USER
from unityplan_infra.render.stream_job import JOB_FILE, build_stream_job
from unityplan_infra.topology.plan import Deployment

JOB_DIR = "jobs/streams"


def job_command(image: str, job_dir: str, network: str) -> str:
    """Shell: run the stream job archive in `image` with the job spec (JSON) on stdin."""
    return (
        f"docker run --rm -i --network {shlex.quote(network)}"
        f" -v {shlex.quote(job_dir)}:/job:ro {shlex.quote(image)} python /job/{JOB_FILE}"
    )


class NatsStreams(pulumi.ComponentResource):
    """GLOBAL_EVENTS and one TERRITORY_<CODE> per pod."""

    definitions: list[dict[str, Any]]

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
        job = build_stream_job()
        job_file = host.config_file(
            "nats-streams-job", f"{JOB_DIR}/{JOB_FILE}",
            base64.b64encode(job.archive).decode(), parent=self, base64_stdin=True,
        )  # fmt: skip
        spec = client_password.apply(
            lambda secret: json.dumps(
                {"url": url, "user": CLIENT_USER, "password": secret,
                 "streams": self.definitions}
            )
        )  # fmt: skip
        self.job = host.run(
            "nats-streams-apply",
            create=pulumi.Output.all(host.path(JOB_DIR), network).apply(
                lambda values: job_command(deployment.config.images.stream_job, *values)
            ),
            stdin=pulumi.Output.secret(spec),
            triggers=[
                sha256(json.dumps(self.definitions, sort_keys=True)),
                hashlib.sha256(job.archive).hexdigest(),
            ],
            parent=self,
            depends_on=[job_file, *servers],
        )
        self.register_outputs(
            {"streams": [s["name"] for s in self.definitions], "natsPy": job.nats_py_version}
        )
