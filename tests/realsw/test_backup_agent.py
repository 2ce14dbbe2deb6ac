"""The backup job as it ships: the built zip application, run by a bare `python3 -I -S`
(nothing but the archive on its path), with the spec the Pulumi program renders for pod dk.

Against real servers: PostgreSQL 15, redis-server (the pod's start command), the dev
stack's three nats-server 2.10 (its rendered configs on loopback, tests/support/
jetstream_bed.py), restic and an S3 server (moto). The rendered spec is taken as it is and
only re-pointed: container paths to temp dirs, Docker names to loopback ports. kubo does
not install here, so the spec's `ipfs` entry is removed (tests/realsw/test_backup_ipfs.py
covers that kind).

One pass through what an operator meets: `run` (a scheduled backup), `snapshots`, a
`drill` into scratch databases, the pod's data destroyed (databases dropped, streams
deleted, Redis wiped, media gone), `restore` brings back every row, key, message and file,
and a second `restore` without --force is refused and changes nothing.
"""

from __future__ import annotations

import asyncio
import fcntl
import json
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.realsw.test_backup_roundtrip import (
    BUCKET,
    PG_PASSWORD,
    REDIS_PASSWORD,
    Pod,
    RedisServer,
    full_state,
    seed,
)
from tests.support.deployments import backups_deployment
from tests.support.jetstream_bed import JetStreamBed
from tests.support.postgres import PG_BIN, Cluster
from tests.support.s3 import ACCESS_KEY_ID, SECRET_ACCESS_KEY, MotoS3, free_port
from unityplan_infra.backup import jetstream as js
from unityplan_infra.backup.run import BackupSpec
from unityplan_infra.render.backup_job import build_backup_job
from unityplan_infra.render.backup_spec import render_backup_spec

pytestmark = pytest.mark.timeout(300)

POD = "dk"
PYTHON = "/usr/bin/python3"  # not the venv's: the archive must carry what it imports
STREAMS = ("GLOBAL_EVENTS", "TERRITORY_DK")


class Bed:
    def __init__(self, root: Path, pod: Pod, nats: JetStreamBed, spec: Path, job: Path) -> None:
        self.root, self.pod, self.nats, self.spec, self.job = root, pod, nats, spec, job

    def job_run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [PYTHON, "-I", "-S", str(self.job), args[0], "--spec", str(self.spec), *args[1:]],
            capture_output=True, text=True, timeout=180, check=False,
        )  # fmt: skip

    def messages(self) -> dict[str, list[tuple[int, str, bytes]]]:
        async def read() -> dict[str, list[tuple[int, str, bytes]]]:
            nc = await self.nats.connect(POD)
            try:
                jsm = nc.jetstream()
                found: dict[str, list[tuple[int, str, bytes]]] = {}
                for stream in STREAMS:
                    info = await jsm.stream_info(stream)
                    found[stream] = [
                        (seq, m.subject, m.data or b"")
                        for seq in range(info.state.first_seq, info.state.last_seq + 1)
                        for m in [await jsm.get_msg(stream, seq)]
                    ]
                return found
            finally:
                await nc.close()

        return asyncio.run(read())


def local_spec(rendered: str, root: Path, pod: Pod, nats: JetStreamBed, s3: MotoS3) -> dict[str, Any]:
    """The program's spec for dk, re-pointed from the container to this machine."""
    spec: dict[str, Any] = json.loads(rendered)
    secrets_dir = root / "config" / "secrets"
    secrets_dir.mkdir(parents=True)
    values = {"restic-password": "restic-" + PG_PASSWORD, "s3-access-key": ACCESS_KEY_ID,
              "s3-secret-key": SECRET_ACCESS_KEY, "postgres-password": PG_PASSWORD,
              "redis-password": REDIS_PASSWORD, "nats-password": nats.password}  # fmt: skip
    for name, value in values.items():
        (secrets_dir / name).write_text(value)
        (secrets_dir / name).chmod(0o600)
    text = json.dumps(spec)
    for container, here in (("/config", root / "config"), ("/work", root / "work"),
                            ("/metrics", root / "metrics"), ("/mnt/redis", pod.redis.data),
                            ("/mnt/matrix-config", pod.signing_key.parent),
                            ("/mnt/matrix", pod.media.parent)):  # fmt: skip
        text = text.replace(f'"{container}/', f'"{here}/').replace(f'"{container}"', f'"{here}"')
    spec = json.loads(text)
    spec["restic"].update(endpoint=s3.endpoint, bucket=BUCKET, region="us-east-1")
    spec["postgres"].update(host="127.0.0.1", port=pod.cluster.port, bin_dir=str(PG_BIN))
    spec["redis"].update(host="127.0.0.1", port=pod.redis.port)
    spec["extra"]["jetstream"]["url"] = nats.url(POD)
    del spec["extra"]["ipfs"]
    return spec


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    root = Path(tempfile.mkdtemp(prefix="unityplan-backup-agent-"))
    s3 = MotoS3.shared()
    if not s3.bucket_exists(BUCKET):
        s3.create_bucket(BUCKET)
    cluster = Cluster.create(port=free_port())
    redis_server = RedisServer(root / "redis", free_port())
    try:
        cluster.start(listen="127.0.0.1")
        redis_server.start()
        # The program's layout: media_store in Synapse's volume, signing.key in its config.
        media, key = root / "matrix-data" / "media_store", root / "matrix-config" / "signing.key"
        key.parent.mkdir(parents=True)
        with JetStreamBed(root / "nats", backups_deployment("dev")) as nats:
            deployment = backups_deployment("dev")
            rendered = render_backup_spec(deployment, deployment.pod(POD))
            pod = Pod(root, cluster, redis_server, media, key, root / "metrics",
                      BackupSpec.from_json(rendered), s3)  # fmt: skip
            spec_file = root / "config" / "spec.json"
            spec = local_spec(rendered, root, pod, nats, s3)
            spec["restic"]["path"] = f"agent-test/{time.time_ns()}"  # a fresh repository
            spec_file.write_text(json.dumps(spec))
            job = root / "config" / "backup-job.pyz"
            job.write_bytes(build_backup_job().archive)
            seed(pod)
            _publish(nats)
            yield Bed(root, pod, nats, spec_file, job)
    finally:
        redis_server.stop()
        cluster.remove()
        shutil.rmtree(root, ignore_errors=True)


def _publish(nats: JetStreamBed) -> None:
    async def publish() -> None:
        nc = await nats.connect(POD)
        try:
            jsm = nc.jetstream()
            for i in range(200):
                await jsm.publish(f"global.event{i % 3}", f"global {i}".encode())
                await jsm.publish("territory.dk.members", bytes([i % 256]) * (i + 1))
        finally:
            await nc.close()

    asyncio.run(publish())


def _metrics(directory: Path, name: str) -> str:
    return (directory / name).read_text()


def test_run_snapshot_drill_destroy_restore_refuse(bed: Bed) -> None:
    before, messages = full_state(bed.pod), bed.messages()
    assert all(messages[s] for s in STREAMS)

    run = bed.job_run("run")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "backup" in run.stdout and "of postgres, redis, matrix, jetstream, matrix-key in" in run.stdout
    metrics = _metrics(bed.root / "metrics", "unityplan_backup_dk.prom")
    assert 'unityplan_backup_last_run_success{pod="denmark",territory="dk"} 1.0' in metrics

    listed = bed.job_run("snapshots")
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 1

    drill = bed.job_run("drill")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "drill: synapse restored with" in drill.stdout
    drill_metrics = _metrics(bed.root / "metrics", "unityplan_backup_drill_dk.prom")
    assert 'unityplan_backup_drill_last_run_success{territory="dk"} 1.0' in drill_metrics
    assert full_state(bed.pod) == before, "the drill touched the pod's own data"
    left = bed.pod.cluster.psql("-At", "-c", "SELECT datname FROM pg_database").stdout
    assert "unityplan_drill_" not in left

    # --- a bad day: everything of pod dk is gone ---------------------------------------
    for database in ("unityplan_dk", "synapse"):
        bed.pod.cluster.psql("-c", f"DROP DATABASE {database} WITH (FORCE)")

    async def delete_streams() -> None:
        nc = await bed.nats.connect(POD)
        try:
            for stream in STREAMS:
                await js.delete_stream(nc, stream)
        finally:
            await nc.close()

    asyncio.run(delete_streams())
    shutil.rmtree(bed.pod.media)
    bed.pod.redis.stop()  # what `restore` does first: docker stop service-redis-dk
    shutil.rmtree(bed.pod.redis.data)
    bed.pod.redis.data.mkdir()

    restore = bed.job_run("restore")
    assert restore.returncode == 0, restore.stdout + restore.stderr
    print(run.stdout + restore.stdout)  # the README's RTO (pytest -s)
    bed.pod.redis.start()  # ... and last: docker start
    assert full_state(bed.pod) == before
    assert bed.messages() == messages

    # A second restore finds data everywhere: refused, exit 3, nothing touched.
    bed.pod.redis.stop()
    refused = bed.job_run("restore", "--what", "postgres,jetstream,matrix")
    bed.pod.redis.start()
    assert refused.returncode == 3, refused.stdout + refused.stderr
    assert "refused" in refused.stderr and "force" in refused.stderr
    assert full_state(bed.pod) == before
    assert bed.messages() == messages


def test_health_follows_the_serve_loops_heartbeat(bed: Bed) -> None:
    assert bed.job_run("health").returncode == 1  # no loop has run yet
    serve = subprocess.Popen([PYTHON, "-I", "-S", str(bed.job), "serve", "--spec", str(bed.spec)],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while bed.job_run("health").returncode != 0:
            assert serve.poll() is None, serve.communicate()[0]
            assert time.monotonic() < deadline, "no heartbeat within 20 s"
            time.sleep(0.3)
    finally:
        serve.terminate()
        output = serve.communicate(timeout=10)[0]
    assert "next backup" in output


def test_a_spec_with_a_typo_is_refused_before_anything_runs(bed: Bed, tmp_path: Path) -> None:
    spec = json.loads(bed.spec.read_text())
    spec["retention"]["keep_daily"] = 7  # the field is `daily`
    broken = tmp_path / "spec.json"
    broken.write_text(json.dumps(spec))
    result = subprocess.run([PYTHON, "-I", "-S", str(bed.job), "run", "--spec", str(broken)],
                            capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert result.returncode == 2 and "keep_daily" in result.stderr


def test_one_job_at_a_time_and_idle_says_when(bed: Bed) -> None:
    """A restore holds the pod's job lock: a scheduled run skips, `idle` says busy."""
    state = Path(json.loads(bed.spec.read_text())["extra"]["schedule"]["state_dir"])
    assert bed.job_run("idle").returncode == 0
    state.mkdir(parents=True, exist_ok=True)
    with (state / "job.lock").open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)  # what a running restore holds
        assert bed.job_run("idle").returncode == 1
        run = bed.job_run("run")
        assert run.returncode == 1 and "backup skipped" in run.stdout
    assert bed.job_run("idle").returncode == 0
