"""The program's stream job as `pulumi up` ships it: one zip application, run by a python
that has no site-packages at all (`-I -S`), so nats-py can only come from inside the
archive and a missing piece fails here exactly as it would on the Docker host."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from functools import cache
from pathlib import Path
from typing import Any

from unityplan_infra.render.stream_job import JOB_FILE, build_stream_job


@cache
def job_file() -> Path:
    """The archive, built by the program's own code, in a directory readable by all."""
    directory = Path(tempfile.mkdtemp(prefix="unityplan-stream-job-"))
    directory.chmod(0o755)
    path = directory / JOB_FILE
    path.write_bytes(build_stream_job().archive)
    return path


def job_argv() -> list[str]:
    return [sys.executable, "-I", "-S", str(job_file())]


def start_job(spec: dict[str, Any]) -> subprocess.Popen[str]:
    """The job archive running on `spec` (on stdin, as `pulumi up` hands it over); read its
    output with `communicate()`."""
    job = subprocess.Popen(job_argv(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    assert job.stdin is not None
    job.stdin.write(json.dumps(spec))
    job.stdin.close()
    job.stdin = None  # written whole; communicate() must not touch it again
    return job
