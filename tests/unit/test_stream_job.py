"""The stream job archive: reproducible, carrying the pinned nats-py, runnable with no
site-packages at all."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from io import BytesIO
from pathlib import Path

from unityplan_infra.render.stream_job import JOB_FILE, build_stream_job

ROOT = Path(__file__).resolve().parents[2]


def pinned_nats_py() -> str:
    match = re.search(r"^nats-py==(\S+)$", (ROOT / "requirements.txt").read_text(), re.M)
    assert match, "nats-py must be pinned in requirements.txt: the job ships it"
    return match.group(1)


def test_archive_is_reproducible_and_carries_the_pinned_nats_py() -> None:
    first, second = build_stream_job(), build_stream_job()
    assert first.archive == second.archive
    assert first.nats_py_version == pinned_nats_py()
    names = zipfile.ZipFile(BytesIO(first.archive)).namelist()
    assert names[0] == "__main__.py"
    assert {"nats/__init__.py", "nats/aio/client.py", "nats/js/api.py"} <= set(names)
    assert not [name for name in names if name.endswith(".pyc")]
    # The job's four modules under their package path, and nothing else of the program
    # (stream definitions and the plan stay in the program: the job gets them as data).
    program = sorted(name for name in names if name.startswith("unityplan_infra/"))
    assert program == [
        "unityplan_infra/__init__.py",
        "unityplan_infra/nats/__init__.py",
        "unityplan_infra/nats/apply_streams.py",
        "unityplan_infra/nats/gate.py",
        "unityplan_infra/nats/job.py",
        "unityplan_infra/nats/retire.py",
    ]
    assert set(names) - set(program) - {"__main__.py"} == {n for n in names if n.startswith("nats/")}


def test_archive_runs_without_any_site_packages(tmp_path: Path) -> None:
    """Isolated, without site-packages: every import must resolve inside the archive. The
    job then fails on its (empty) input, which shows it got past all its imports."""
    path = tmp_path / JOB_FILE
    path.write_bytes(build_stream_job().archive)
    result = subprocess.run(
        [sys.executable, "-I", "-S", str(path)], input="", capture_output=True, text=True,
        timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "JSONDecodeError" in result.stderr, result.stderr
    assert "ModuleNotFoundError" not in result.stderr
