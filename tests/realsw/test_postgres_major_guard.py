"""A PostgreSQL major upgrade stops the deploy instead of crash-looping the pod.

The premise, on the real server: PostgreSQL refuses a data directory whose PG_VERSION names
another major. The guard (render/postgres_major.py) reads PG_VERSION from the pod's volume
before the container is replaced: run here on a real data directory made by Debian's
initdb 15, with `docker` standing in only for "read this file from the volume" (no engine
here), it lets the same major and an empty volume pass and stops another major with the
way forward.
"""

from __future__ import annotations

import copy
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.mocks import run_program
from tests.support.postgres import PG_BIN, Cluster, as_postgres
from tests.support.stackfile import as_pulumi_config, stack_values
from unityplan_infra.config.errors import ConfigError
from unityplan_infra.config.models import Images
from unityplan_infra.deployment import load_deployment
from unityplan_infra.render.postgres_major import guard_command, postgres_major

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    made = Cluster.create(port=0)  # initdb only: never started by this fixture
    try:
        yield made
    finally:
        made.remove()


def run_guard(tmp_path: Path, image: str, pg_version: str | None) -> subprocess.CompletedProcess[str]:
    """The guard as the pod's host runs it; `docker run ... cat PG_VERSION` answers from
    `pg_version` (None: the volume is empty)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    docker = bin_dir / "docker"
    answer = "" if pg_version is None else f"printf '%s\\n' {pg_version}"
    docker.write_text(f'#!/bin/sh\necho "$*" > {tmp_path}/docker-args\n{answer}\n')
    docker.chmod(0o755)
    return subprocess.run(
        ["sh", "-c", guard_command(image, "pod-dk-postgres-data", "dk")],
        env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_postgresql_refuses_data_of_another_major(cluster: Cluster) -> None:
    """Why the guard exists: the real server, on PG_VERSION of another major."""
    assert (cluster.data / "PG_VERSION").read_text().strip() == "15"
    copy = cluster.data.parent / "data-of-another-major"  # where the postgres user may go
    subprocess.run(["cp", "-a", str(cluster.data), str(copy)], check=True)
    (copy / "PG_VERSION").write_text("16\n")
    result = subprocess.run(
        as_postgres(str(PG_BIN / "postgres"), "-D", str(copy), "-p", "1"),
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "incompatible with server" in result.stderr


@pytest.mark.parametrize("image", ["postgres:15.10-bookworm", "postgres:15"])
def test_the_same_major_passes(cluster: Cluster, tmp_path: Path, image: str) -> None:
    version = (cluster.data / "PG_VERSION").read_text().strip()
    result = run_guard(tmp_path, image, version)
    assert result.returncode == 0, result.stderr
    args = (tmp_path / "docker-args").read_text()
    assert "-v pod-dk-postgres-data:/data" in args and image in args


def test_an_empty_volume_passes(tmp_path: Path) -> None:
    assert run_guard(tmp_path, "postgres:16.6-bookworm", None).returncode == 0


def test_another_major_stops_the_deploy_with_the_way_forward(
    cluster: Cluster, tmp_path: Path
) -> None:
    version = (cluster.data / "PG_VERSION").read_text().strip()
    result = run_guard(tmp_path, "postgres:16.6-bookworm", version)
    assert result.returncode == 1
    assert "written by major 15, the image postgres:16.6-bookworm is major 16" in result.stderr
    assert "Nothing was replaced" in result.stderr and "restore" in result.stderr


@pytest.mark.parametrize(("image", "major"), [
    ("postgres:16.6-bookworm", "16"), ("postgres:18.1", "18"), ("postgres:9.6-alpine", "9"),
    ("postgres:17@sha256:" + "0" * 64, "17"), ("registry:5000/postgres:15.2", "15"),
])  # fmt: skip
def test_major_of_an_image(image: str, major: str) -> None:
    assert postgres_major(image) == major


def test_every_pod_is_guarded_before_its_postgresql_is_replaced() -> None:
    values = stack_values("nordic")
    graph = run_program(as_pulumi_config(values), "nordic")
    for code in ("dk", "no", "se"):
        guard = graph.named(f"{code}-postgres-major-guard")
        (postgres,) = [r for r in graph.resources
                       if r.inputs.get("name") == f"service-postgres-{code}"]  # fmt: skip
        assert guard.urn in graph.ancestors(postgres)
        assert guard.inputs["triggers"] == [Images().postgres]  # re-runs on a new image
        assert f"pod-{code}-postgres-data:/data" in guard.inputs["create"]


def test_an_image_tag_without_a_major_is_refused_at_load() -> None:
    values = copy.deepcopy(stack_values("dev"))
    values["unityplan-infra:images"] = {"postgres": "postgres:bookworm"}
    with pytest.raises(ConfigError, match=r"images\.postgres = 'postgres:bookworm'.*major"):
        load_deployment(as_pulumi_config(values))
