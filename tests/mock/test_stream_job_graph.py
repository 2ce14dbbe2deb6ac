"""How `pulumi up` delivers and runs the stream job, on both stacks: the archive is written
from stdin (base64), the job runs it in the pinned image and downloads nothing."""

from __future__ import annotations

import base64
import hashlib
from functools import cache

import pytest

from tests.support.mocks import Graph, run_program, unwrap
from tests.support.stackfile import stack_config
from unityplan_infra.config.models import Images
from unityplan_infra.render.stream_job import JOB_FILE, build_stream_job


@cache
def graph(stack: str) -> Graph:
    return run_program(stack_config(stack), stack=stack)


@pytest.mark.parametrize("stack", ["dev", "nordic"])
def test_job_runs_the_shipped_archive_and_downloads_nothing(stack: str) -> None:
    job = graph(stack).named("nats-streams-apply")
    command = unwrap(job.inputs["create"])
    assert f"python /job/{JOB_FILE}" in command
    assert Images().stream_job in command
    for download in ("pip", "curl", "wget", "http"):
        assert download not in command, command
    archive = build_stream_job().archive
    assert hashlib.sha256(archive).hexdigest() in job.inputs["triggers"]

    written = graph(stack).named("nats-streams-job")
    assert base64.b64decode(unwrap(written.inputs["stdin"])) == archive
    assert "base64 -d >" in written.inputs["create"]
    assert f"jobs/streams/{JOB_FILE}" in written.inputs["create"]
    assert graph(stack).depends_on(job, written)
