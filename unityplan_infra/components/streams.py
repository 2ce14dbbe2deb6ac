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
import pulumi_docker as docker

from unityplan_infra.components.host import HostAccess, sha256
from unityplan_infra.nats.streams import stream_configs, territory_stream_name
from unityplan_infra.render.nats import CLIENT_USER, SYSTEM_USER
from unityplan_infra.render.stream_job import JOB_FILE, build_stream_job
from unityplan_infra.topology.plan import Deployment, PodPlan

JOB_DIR = "jobs/streams"


def job_command(image: str, job_dir: str, network: str) -> str:
    """Shell: run the stream job archive in `image` with the job spec (JSON) on stdin."""
    return (
        f"docker run --rm -i --network {shlex.quote(network)}"
        f" -v {shlex.quote(job_dir)}:/job:ro {shlex.quote(image)} python /job/{JOB_FILE}"
    )


class NatsStreams(pulumi.ComponentResource):
    """GLOBAL_EVENTS and one TERRITORY_<CODE> per pod, and the rollout gate of each server.

    Built before the pods (the job file), finished after them: `gate` once per pod, then
    `apply` once, which registers the outputs.
    """

    definitions: list[dict[str, Any]]

    def __init__(
        self,
        deployment: Deployment,
        *,
        host: HostAccess,
        client_password: pulumi.Output[str],
        system_password: pulumi.Output[str],
        network: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("unityplan:infra:NatsStreams", "nats-streams", None, opts)
        self._deployment, self._host, self._password = deployment, host, client_password
        self._system_password = system_password
        self.definitions = stream_configs(deployment)
        self._job = build_stream_job()
        self._job_file = host.config_file(
            "nats-streams-job", f"{JOB_DIR}/{JOB_FILE}",
            base64.b64encode(self._job.archive).decode(), parent=self, base64_stdin=True,
        )  # fmt: skip
        self._command = pulumi.Output.all(host.path(JOB_DIR), network).apply(
            lambda values: job_command(deployment.config.images.stream_job, *values)
        )

    def _spec(
        self, fields: dict[str, Any], more: pulumi.Output[dict[str, Any]] | None = None,
        *, via: PodPlan | None = None,
    ) -> pulumi.Output[str]:
        """The job's spec (JSON, secret): connection (to `via`'s server, default the first
        pod that stays), `fields`, then `more` (secret ones)."""
        url = "nats://{}:{}".format(*(via or self._deployment.staying[0]).nats_client)
        extra = more if more is not None else pulumi.Output.from_input({})
        return pulumi.Output.secret(
            pulumi.Output.all(self._password, extra).apply(
                lambda values: json.dumps(
                    {"url": url, "user": CLIENT_USER, "password": values[0], **fields,
                     **values[1]}
                )
            )
        )  # fmt: skip

    def _system_user(self) -> pulumi.Output[dict[str, Any]]:
        return self._system_password.apply(
            lambda secret: {"system_user": SYSTEM_USER, "system_password": secret}
        )

    def _retire_fields(self) -> pulumi.Output[dict[str, Any]]:
        """Retired pods' servers, whose JetStream share the job hands over (nats/retire.py);
        with the system user's credentials, which only that needs. Idempotent: a server
        already gone from the meta group is left alone."""
        retired = [pod.nats_server_name for pod in self._deployment.handed_over]
        if not retired:
            return pulumi.Output.from_input({})
        return self._system_user().apply(lambda user: {"retired_servers": retired, **user})

    def gate(self, pod: PodPlan, server: docker.Container) -> pulumi.CustomResource:
        """Runs after `pod`'s NATS container is created or replaced, until that server is
        back and JetStream-current (nats/apply_streams.py, gate mode). In a rolling upgrade
        the next pod's server waits for it (topology/rollout.py)."""
        # Its territory's stream lives on this server. (Not GLOBAL_EVENTS, even where every
        # server holds it: the spec would change with the pod count, and the gate run again
        # on every pod added; its leader's full replica count is checked anyway.)
        gate = {"server": pod.nats_server_name, "peer_of": [territory_stream_name(pod)]}
        return self._host.run(
            f"nats-gate-{pod.code}",
            create=self._command,
            # With the system user the gate also waits for the JetStream meta group (gate.py:
            # with the client account alone, 8 of 15 measured steps moved on before it).
            stdin=self._spec({"gate": gate}, self._system_user(), via=pod),
            # Again whenever the container is new: a replaced server must prove itself.
            triggers=[server.id, hashlib.sha256(self._job.archive).hexdigest()],
            parent=self,
            depends_on=[self._job_file, server],
        )

    def apply(self, servers: Sequence[pulumi.Resource]) -> None:
        """Create or update the streams once every server exists; hand a retired pod's
        stream replicas over to the remaining servers."""
        retired = sorted(pod.nats_server_name for pod in self._deployment.handed_over)
        self.job = self._host.run(
            "nats-streams-apply",
            create=self._command,
            stdin=self._spec({"streams": self.definitions}, self._retire_fields()),
            triggers=[
                sha256(json.dumps(self.definitions, sort_keys=True)),
                hashlib.sha256(self._job.archive).hexdigest(),
                *([sha256(json.dumps(retired))] if retired else []),
            ],
            parent=self,
            depends_on=[self._job_file, *servers],
        )
        self.register_outputs(
            {"streams": [s["name"] for s in self.definitions], "natsPy": self._job.nats_py_version}
        )
