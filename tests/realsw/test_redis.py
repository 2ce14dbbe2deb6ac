"""A pod's Redis as the program starts it, on a real redis-server: the start command and the
container healthcheck run unchanged (in a namespace of their own, so port 6379 is free)."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.netns import NetnsLab
from unityplan_infra.render import redis as redis_render

PASSWORD = "Xq7generatedPassw0rd"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NetnsLab]:
    workdir = tmp_path_factory.mktemp("redis")
    with NetnsLab(["redis"], workdir=workdir / "lab") as lab:
        data = workdir / "data"  # the container's /data volume
        data.mkdir()
        # The image's entrypoint only drops privileges before exec; here it just execs.
        shim = workdir / "bin" / "docker-entrypoint.sh"
        shim.parent.mkdir()
        shim.write_text('#!/bin/sh\nexec "$@"\n')
        shim.chmod(0o755)
        lab.spawn(
            "redis",
            ["sh", "-c", f"cd {data} && {redis_render.START}"],
            name="redis-server",
            env={"REDIS_PASSWORD": PASSWORD, "PATH": f"{shim.parent}:{os.environ['PATH']}"},
        )
        deadline = time.monotonic() + 15
        while not healthy(lab, PASSWORD):
            assert time.monotonic() < deadline, "redis-server never became healthy"
            time.sleep(0.2)
        yield lab


def healthy(lab: NetnsLab, password: str) -> bool:
    result = lab.run(
        "redis", ["sh", "-c", redis_render.HEALTHCHECK], env={"REDIS_PASSWORD": password},
        check=False,
    )  # fmt: skip
    return result.returncode == 0


def test_healthcheck_passes_with_the_generated_password(lab: NetnsLab) -> None:
    assert healthy(lab, PASSWORD)


def test_healthcheck_fails_with_another_password(lab: NetnsLab) -> None:
    assert not healthy(lab, "wrong-password")


def test_unauthenticated_clients_are_refused(lab: NetnsLab) -> None:
    result = lab.run("redis", ["redis-cli", "set", "k", "v"], check=False)
    assert "NOAUTH" in result.stdout + result.stderr


def test_data_is_persisted_in_the_volume(lab: NetnsLab) -> None:
    command = ["redis-cli", "--no-auth-warning", "-a", PASSWORD]
    assert lab.run("redis", [*command, "set", "territory", "no"]).stdout.strip() == "OK"
    info = lab.run("redis", [*command, "config", "get", "appendonly"]).stdout.split()
    assert info == ["appendonly", "yes"]
    # Every acknowledged write is fsynced before the reply (a host crash loses nothing).
    fsync = lab.run("redis", [*command, "config", "get", "appendfsync"]).stdout.split()
    assert fsync == ["appendfsync", "always"]
    directory = lab.run("redis", [*command, "config", "get", "dir"]).stdout.split()[1]
    assert any(Path(directory).glob("appendonly*")), "no append-only file in the volume"
