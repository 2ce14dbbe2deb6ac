"""The generated init script against a real, throwaway PostgreSQL 15 cluster.

The cluster runs as the `postgres` OS user (PostgreSQL refuses to run as root), listens on
a unix socket in a private temp dir only, and is stopped and deleted even if a test fails.
Its default locale is C.UTF-8, not C, so Synapse's `LC_COLLATE 'C'` is only met if the
script asks for it (and only possible via template0).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.deployments import dev_deployment
from unityplan_infra.render.postgres import SYNAPSE_DATABASE, postgres_init_sql

pytestmark = pytest.mark.timeout(60)

PG_BIN = Path("/usr/lib/postgresql/15/bin")
OWNER = "unityplan-owner"  # needs quoting as an identifier, so %I is exercised
POD_CODE = "no"  # Norway: the code YAML 1.1 tools turn into false
POD_DATABASE = "unityplan_no"


def _as_postgres(*args: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args]


def _run(command: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=30,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"{command} exited {result.returncode}:\n{result.stdout}")
    return result


@dataclass(frozen=True)
class Cluster:
    """A running throwaway cluster, reached over its unix socket."""

    root: Path
    socket_dir: Path

    def psql(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """psql as superuser `postgres`, stopping at the first error (as a deploy does)."""
        command = [str(PG_BIN / "psql"), "-X", "-v", "ON_ERROR_STOP=1"]
        command += ["-h", str(self.socket_dir), "-U", "postgres", "-d", "postgres", *args]
        return _run(command, check=check)

    def query(self, sql: str) -> list[tuple[str, ...]]:
        """Rows of `sql`, fields split on '|'."""
        out = self.psql("-A", "-t", "-c", sql).stdout
        return [tuple(line.split("|")) for line in out.splitlines() if line]

    def run_script(self, text: str, name: str = "init.sql") -> subprocess.CompletedProcess[str]:
        path = self.root / name
        path.write_text(text)
        return self.psql("-f", str(path), check=False)

    def databases(self) -> list[tuple[str, ...]]:
        """Every database with its oid, owner, encoding and locale: the state to compare."""
        return self.query(
            "SELECT datname, oid, pg_get_userbyid(datdba), pg_encoding_to_char(encoding),"
            " datcollate, datctype FROM pg_database ORDER BY datname"
        )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    # Not tmp_path_factory: its root is root-only (0700), and postgres must reach the dir.
    root = Path(tempfile.mkdtemp(prefix="unityplan-pg-"))
    data, socket_dir = root / "data", root / "run"
    try:
        socket_dir.mkdir()
        shutil.chown(root, "postgres", "postgres")
        shutil.chown(socket_dir, "postgres", "postgres")
        _run(
            _as_postgres(
                str(PG_BIN / "initdb"),
                "-D", str(data),
                "-U", "postgres",
                "--auth=trust",  # unix socket in a 0700 dir: only root and postgres get in
                "--encoding=UTF8",
                "--locale=C.UTF-8",
                "--no-sync",
            )
        )  # fmt: skip
        options = f"-c listen_addresses='' -c unix_socket_directories='{socket_dir}' -c fsync=off"
        _run(
            _as_postgres(
                str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(root / "server.log"),
                "-o", options, "-w", "-t", "20", "start",
            )
        )  # fmt: skip
        cluster = Cluster(root, socket_dir)
        cluster.psql("-c", f'CREATE ROLE "{OWNER}" LOGIN')
        yield cluster
    finally:
        # Stop whenever a postmaster may run, also after a start that timed out.
        if (data / "postmaster.pid").exists():
            stop = _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-m", "fast", "stop")
            if _run(stop, check=False).returncode != 0:
                _run([*stop[:-3], "-m", "immediate", "stop"], check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def script() -> str:
    return postgres_init_sql(dev_deployment().pod(POD_CODE), OWNER)


@pytest.fixture(scope="module")
def first_run(cluster: Cluster, script: str) -> subprocess.CompletedProcess[str]:
    """The first start of an empty volume: the script as initdb script."""
    return cluster.run_script(script)


def test_script_names_the_pod_database(script: str) -> None:
    assert f"'{POD_DATABASE}'" in script
    assert f"'{SYNAPSE_DATABASE}'" in script


def test_first_run_creates_both_databases(
    cluster: Cluster, first_run: subprocess.CompletedProcess[str]
) -> None:
    assert first_run.returncode == 0, first_run.stdout
    assert first_run.stdout.count("CREATE DATABASE") == 2, first_run.stdout
    names = {row[0] for row in cluster.databases()}
    assert {POD_DATABASE, SYNAPSE_DATABASE} <= names


def test_second_run_succeeds_and_changes_nothing(
    cluster: Cluster, script: str, first_run: subprocess.CompletedProcess[str]
) -> None:
    before = cluster.databases()
    second = cluster.run_script(script)
    assert second.returncode == 0, second.stdout
    assert "CREATE DATABASE" not in second.stdout
    assert cluster.databases() == before


def test_both_databases_owned_by_owner(
    cluster: Cluster, first_run: subprocess.CompletedProcess[str]
) -> None:
    owners = {row[0]: row[2] for row in cluster.databases()}
    assert owners[POD_DATABASE] == OWNER
    assert owners[SYNAPSE_DATABASE] == OWNER


def test_synapse_database_has_c_locale_and_utf8(
    cluster: Cluster, first_run: subprocess.CompletedProcess[str]
) -> None:
    synapse = next(row for row in cluster.databases() if row[0] == SYNAPSE_DATABASE)
    assert synapse[3:] == ("UTF8", "C", "C")


def test_cluster_default_locale_is_not_c(
    cluster: Cluster, first_run: subprocess.CompletedProcess[str]
) -> None:
    # Guards the previous test: were the default C, it would pass without the script's options.
    template1 = next(row for row in cluster.databases() if row[0] == "template1")
    assert template1[4:] == ("C.UTF-8", "C.UTF-8")


def test_rerun_restores_a_missing_database(
    cluster: Cluster, script: str, first_run: subprocess.CompletedProcess[str]
) -> None:
    # An existing volume from an older layout: synapse is there, the pod database is not.
    cluster.psql("-c", f"DROP DATABASE {POD_DATABASE}")
    synapse_before = [row for row in cluster.databases() if row[0] == SYNAPSE_DATABASE]
    rerun = cluster.run_script(script)
    assert rerun.returncode == 0, rerun.stdout
    assert rerun.stdout.count("CREATE DATABASE") == 1, rerun.stdout
    rows = cluster.databases()
    assert [row for row in rows if row[0] == SYNAPSE_DATABASE] == synapse_before
    assert any(row[0] == POD_DATABASE and row[2] == OWNER for row in rows)


def test_plain_create_fails_on_rerun(
    cluster: Cluster, first_run: subprocess.CompletedProcess[str]
) -> None:
    # Negative control: without the NOT EXISTS guard a re-run fails, and ON_ERROR_STOP makes
    # psql report it, so the idempotence tests above can fail.
    result = cluster.run_script(f"CREATE DATABASE {SYNAPSE_DATABASE};\n", name="plain.sql")
    assert result.returncode != 0
    assert "already exists" in result.stdout


def test_owner_without_a_role_fails(cluster: Cluster) -> None:
    # Another negative control: the script's errors surface (owner role missing).
    pod = dev_deployment().pod("se")
    result = cluster.run_script(postgres_init_sql(pod, "nobody-here"), name="bad.sql")
    assert result.returncode != 0
    assert 'role "nobody-here" does not exist' in result.stdout
    assert "unityplan_se" not in {row[0] for row in cluster.databases()}


def test_server_runs_as_postgres_not_root(cluster: Cluster) -> None:
    pid = (cluster.root / "data" / "postmaster.pid").read_text().split()[0]
    assert os.stat(f"/proc/{pid}").st_uid == pwd.getpwnam("postgres").pw_uid
