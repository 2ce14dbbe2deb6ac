"""Throwaway PostgreSQL 15 clusters for real-software tests.

PostgreSQL refuses to run as root, so every server command runs as the `postgres` OS user
(`runuser`), in a private temp dir that user owns. Not pytest's tmp_path: its root is
root-only (0700), and postgres must reach the directory.

Clients connect as superuser `postgres` over the unix socket (trust: the socket lives in a
0700 dir, so only root and postgres get in). Unix sockets are paths, not network-namespaced,
so the socket also works from outside a lab namespace the server runs in. TCP clients must
authenticate with a password (scram-sha-256), from loopback or from `host_networks`.

    cluster = Cluster.create(host_networks=["198.18.0.0/24"])
    try:
        server = lab.spawn("dk", cluster.server_argv(listen="198.18.0.2"), name="postgres")
        cluster.wait_ready(server.running)
        cluster.psql("-c", "CREATE ROLE app LOGIN PASSWORD 'secret'")
    finally:
        server.stop()  # or lab.close()
        cluster.remove()

A cluster started by `start()` (pg_ctl, in this namespace) is stopped by `remove()`.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path("/usr/lib/postgresql/15/bin")
SUPERUSER = "postgres"
OS_USER = "postgres"
DEFAULT_LOCALE = "C.UTF-8"  # deliberately not C: Synapse's database must ask for C itself


def as_postgres(*args: str) -> list[str]:
    """`args` run as the postgres OS user."""
    return ["runuser", "-u", OS_USER, "--", *args]


def run(
    command: Sequence[str], *, check: bool = True, timeout: float = 30.0
) -> subprocess.CompletedProcess[str]:
    """Run to completion, stdout and stderr merged; with `check`, fail with the output."""
    result = subprocess.run(
        list(command), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=timeout, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if check and result.returncode != 0:
        raise AssertionError(f"{list(command)} exited {result.returncode}:\n{result.stdout}")
    return result


def sql_literal(value: str) -> str:
    """`value` as an SQL string literal (standard_conforming_strings: only ' is special)."""
    return "'" + value.replace("'", "''") + "'"


def sql_identifier(value: str) -> str:
    return '"' + value.replace('"', '""') + '"'


@dataclass(frozen=True)
class Cluster:
    """An initialised cluster directory: `data` (PGDATA), `socket_dir`, logs in `root`."""

    root: Path
    port: int = 5432

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "run"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    @classmethod
    def create(
        cls,
        *,
        locale: str = DEFAULT_LOCALE,
        host_networks: Sequence[str] = (),
        prefix: str = "unityplan-pg-",
        port: int = 5432,
    ) -> Cluster:
        """initdb a new cluster; on failure nothing is left behind."""
        root = Path(tempfile.mkdtemp(prefix=prefix))
        cluster = cls(root, port)
        try:
            cluster.socket_dir.mkdir()
            shutil.chown(root, OS_USER, OS_USER)
            shutil.chown(cluster.socket_dir, OS_USER, OS_USER)
            run(
                as_postgres(
                    str(PG_BIN / "initdb"),
                    "-D", str(cluster.data),
                    "-U", SUPERUSER,
                    "--auth-local=trust",
                    "--auth-host=scram-sha-256",
                    "--encoding=UTF8",
                    f"--locale={locale}",
                    "--no-sync",
                )
            )  # fmt: skip
            if host_networks:
                lines = "".join(f"host all all {net} scram-sha-256\n" for net in host_networks)
                with (cluster.data / "pg_hba.conf").open("a") as hba:
                    hba.write(lines)
        except BaseException:
            shutil.rmtree(root, ignore_errors=True)
            raise
        return cluster

    def server_options(self, listen: str = "") -> list[str]:
        """`-c` settings: socket in the private dir, TCP on `listen` only, no fsync."""
        return [
            "-c", f"listen_addresses={listen}",
            "-c", f"port={self.port}",
            "-c", f"unix_socket_directories={self.socket_dir}",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
        ]  # fmt: skip

    def server_argv(self, listen: str = "") -> list[str]:
        """The postmaster in the foreground (for `NetnsLab.spawn` or Popen); logs to stderr.

        setpriv, not runuser: it execs, so signals reach the postmaster itself (SIGTERM: smart
        shutdown), where runuser would wait 2 s and then SIGKILL its child.
        """
        drop = ["setpriv", f"--reuid={OS_USER}", f"--regid={OS_USER}", "--init-groups", "--"]
        return [*drop, str(PG_BIN / "postgres"), "-D", str(self.data), *self.server_options(listen)]

    def start(self, listen: str = "") -> None:
        """Start with pg_ctl in this namespace (waits until it accepts connections)."""
        options = " ".join(_pairs(self.server_options(listen)))
        run(as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.log),
                        "-o", options, "-w", "-t", "20", "start"))  # fmt: skip

    def ready(self) -> bool:
        probe = [str(PG_BIN / "pg_isready"), "-q", "-h", str(self.socket_dir),
                 "-p", str(self.port), "-U", SUPERUSER]  # fmt: skip
        return run(probe, check=False, timeout=10).returncode == 0

    def wait_ready(self, alive: Callable[[], bool] = lambda: True, timeout: float = 20.0) -> None:
        """Wait until the server accepts connections; fail early once `alive()` is false."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if not alive():
                raise AssertionError(f"PostgreSQL in {self.root} exited before it was ready")
            if time.monotonic() > deadline:
                raise AssertionError(f"PostgreSQL in {self.root} not ready in {timeout}s")
            time.sleep(0.1)

    def psql_argv(self, *args: str, user: str = SUPERUSER, database: str = "postgres") -> list[str]:
        """psql over the unix socket, stopping at the first error (as a deploy does)."""
        return [str(PG_BIN / "psql"), "-X", "-v", "ON_ERROR_STOP=1",
                "-h", str(self.socket_dir), "-p", str(self.port), "-U", user, "-d", database,
                *args]  # fmt: skip

    def psql(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(self.psql_argv(*args), check=check)

    def query(self, sql: str, database: str = "postgres") -> list[tuple[str, ...]]:
        """Rows of `sql`, fields split on '|'."""
        out = run(self.psql_argv("-A", "-t", "-c", sql, database=database)).stdout
        return [tuple(line.split("|")) for line in out.splitlines() if line]

    def run_script(self, text: str, name: str = "init.sql") -> subprocess.CompletedProcess[str]:
        """`psql -v ON_ERROR_STOP=1 -f <file>` with `text`, unchecked."""
        path = self.root / name
        path.write_text(text)
        return self.psql("-f", str(path), check=False)

    def create_login(self, role: str, password: str) -> None:
        """A LOGIN role with a (scram-hashed) password."""
        statement = f"CREATE ROLE {sql_identifier(role)} LOGIN PASSWORD {sql_literal(password)}"
        self.psql("-c", statement)

    def remove(self) -> None:
        """Stop a server pg_ctl started (also after a start that timed out), delete all.

        A server spawned elsewhere (`server_argv`) must be stopped by its spawner first.
        """
        if (self.data / "postmaster.pid").exists():
            stop = as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-w", "-m", "fast",
                               "stop")  # fmt: skip
            if run(stop, check=False).returncode != 0:
                run([*stop[:-3], "-m", "immediate", "stop"], check=False)
        shutil.rmtree(self.root, ignore_errors=True)


def _pairs(options: list[str]) -> list[str]:
    """`["-c", "a=b", ...]` as `["-c a=b", ...]`, quoted for pg_ctl's -o (one shell word)."""
    return [f"{flag} '{value}'" for flag, value in zip(options[::2], options[1::2], strict=True)]
