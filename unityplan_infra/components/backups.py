"""`PodBackups`: one pod's scheduled, encrypted backups to S3, and what its restore needs.

A container `service-backup-<code>` runs the program's backup job (backup/agent.py, a zip
application) on schedule: PostgreSQL (`pg_dump -Fc` per database plus roles), Redis (an RDB
snapshot from the server), JetStream (the snapshot API), IPFS (pins as CAR files) and
Synapse's media store and signing key, as one restic snapshot in the pod's own repository
(`unityplan/<code>` in the stack's bucket), then the retention; each run's outcome goes to
node-exporter's textfile directory (alerts: BackupTooOld, BackupFailed, BackupNeverRan).

The job's image is built on the host (render/backup_image.py). The job reaches the pod's
services on the pod network by name; it mounts Redis's and Synapse's volumes and Synapse's
config directory because a restore writes them (`python -m unityplan_infra restore`
stops those services first). Secrets are files of their own (0600, root); the spec
beside them holds none.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

import pulumi
import pulumi_docker as docker

from unityplan_infra.components.host import Attachment, Bind, HostAccess, container, restart, volume
from unityplan_infra.components.secrets import password
from unityplan_infra.render.backup_image import backup_dockerfile, backup_image_tag
from unityplan_infra.render.backup_job import JOB_FILE, build_backup_job
from unityplan_infra.render.backup_spec import (
    CONFIG_DIR,
    MATRIX_CONFIG_DIR,
    MATRIX_DIR,
    METRICS_DIR,
    REDIS_DIR,
    SECRET_FILES,
    SPEC_FILE,
    WORK_DIR,
    render_backup_spec,
)
from unityplan_infra.topology.plan import Deployment, PodPlan
from unityplan_infra.topology.stop import stop_grace_seconds

ROOT = "0:0"  # the job runs as root: it reads and restores other services' volumes


def backup_image(deployment: Deployment, host: HostAccess, parent: pulumi.Resource) -> str:
    """Build the backup job's image on `host` once; returns its tag."""
    images = deployment.config.images
    dockerfile = backup_dockerfile(images.postgres, images.restic)
    tag = backup_image_tag(dockerfile)
    if tag not in host.images:
        build = host.run(
            f"{host.plan.name}-backup-image-build",
            # No context: the Dockerfile only copies from images. Idempotent: an image that
            # is there is kept (a pruned one is built again by `up --replace` of this).
            create=f"docker image inspect {tag} >/dev/null 2>&1 || docker build --quiet --tag {tag} -",
            stdin=dockerfile,
            triggers=[tag],
            parent=parent,
        )
        host.image(tag, built_by=build)
    return tag


class PodBackups(pulumi.ComponentResource):
    """The backup job of one pod, its secrets, spec and volumes."""

    restic_password: pulumi.Output[str]
    """The pod's repository password (generated; exported as a secret: without it, the
    backups cannot be read)."""

    def __init__(
        self,
        deployment: Deployment,
        pod: PodPlan,
        *,
        host: HostAccess,
        pod_network: pulumi.Input[str],
        secrets: Mapping[str, pulumi.Input[str]],
        volumes: Mapping[str, docker.Volume],
        textfile_volume: docker.Volume,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        """`secrets`: the values of SECRET_FILES but the restic password (generated here);
        `volumes`: the pod's "redis" and "matrix" volumes."""
        super().__init__("unityplan:infra:PodBackups", f"backups-{pod.code}", None, opts)
        code, name = pod.code, pod.service("backup")
        directory = f"pods/{code}/backup"
        self.restic_password = password(f"{code}-restic-password", self)
        values = {**secrets, "restic-password": self.restic_password}
        missing = set(SECRET_FILES) - set(values)
        if missing:
            raise ValueError(f"PodBackups of {code}: secrets missing: {sorted(missing)}")
        files: list[pulumi.Resource] = [
            host.config_file(
                f"{code}-backup-secret-{secret}", f"{directory}/secrets/{secret}",
                pulumi.Output.secret(values[secret]), parent=self, secret_for=ROOT,
            )
            for secret in SECRET_FILES
        ]  # fmt: skip
        job = build_backup_job()
        # A new spec or job reaches the running container by a restart (between runs: a
        # run in progress is stopped within its grace period and retried on schedule).
        files.append(host.config_file(
            f"{code}-backup-spec", f"{directory}/{SPEC_FILE}", render_backup_spec(deployment, pod),
            parent=self, reload=restart(name),
        ))  # fmt: skip
        files.append(host.config_file(
            f"{code}-backup-job", f"{directory}/{JOB_FILE}", base64.b64encode(job.archive).decode(),
            parent=self, base64_stdin=True, reload=restart(name),
        ))  # fmt: skip
        work = volume(pod.volume("backup-work"), host=host, parent=self)
        spec = f"{CONFIG_DIR}/{SPEC_FILE}"
        self.container = container(
            name,
            host=host,
            image=backup_image(deployment, host, self),
            parent=self,
            grace_seconds=stop_grace_seconds("backup"),
            networks=[Attachment(pod_network)],
            command_args=["python3", f"{CONFIG_DIR}/{JOB_FILE}", "serve", "--spec", spec],
            healthcheck=f"python3 {CONFIG_DIR}/{JOB_FILE} health --spec {spec}",
            volumes=[
                (work, WORK_DIR),
                (textfile_volume, METRICS_DIR),
                (volumes["redis"], REDIS_DIR),
                (volumes["matrix"], MATRIX_DIR),
            ],
            binds=[
                (host.path(directory), CONFIG_DIR),
                Bind(host.path(f"pods/{code}/matrix"), MATRIX_CONFIG_DIR, writable=True),
            ],
            depends_on=files,
        )
        self.register_outputs({"container": self.container.name})


class RetiredPodBackups(pulumi.ComponentResource):
    """What stays of a retired pod's backups in the program: its repository password.

    The pod's snapshots stay in its repository (`unityplan/<code>`), readable only with this
    password; deleting it with the rest of the pod would lose them for good. Same type and
    name as the pod's `PodBackups`, so the password keeps its URN and its value.
    """

    restic_password: pulumi.Output[str]

    def __init__(self, pod: PodPlan, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("unityplan:infra:PodBackups", f"backups-{pod.code}", None, opts)
        self.restic_password = password(f"{pod.code}-restic-password", self)
        self.register_outputs({"retired": True})
