"""PostgreSQL, Redis and NATS JetStream stopped under write load: graceful stop and SIGKILL.

Why: every stateful container gets a grace period (`unityplan_infra.topology.stop`): Docker
sends the image's stop signal, waits that long, then SIGKILLs. Only the real servers, run
with the program's own settings, can show that

- a stop with the image's stop signal while writes flow ends well within the grace period and
  keeps every acknowledged write (PostgreSQL SIGINT, Redis SIGTERM, nats-server SIGTERM);
- SIGKILL (a grace period that runs out, or the old grace of 0) keeps every acknowledged write
  too under the program's persistence settings (fsync=on; appendfsync always; JetStream
  sync_interval always, and even without those a killed process leaves what it wrote in the
  page cache), and what it costs instead: crash recovery at the next start.

Writers count a write only once the server acknowledged it (committed INSERT, RPUSH reply,
JetStream PubAck); see tests/support/write_load.py. The numbers are printed (`pytest -s`);
docs/stop-measurements.md has the heavier, repeated measurement.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.write_load import (
    NATS_STOPPED,
    How,
    Nats,
    Outcome,
    Postgres,
    Redis,
    Service,
    stop_under_load,
    summarise,
)
from unityplan_infra.topology.stop import STOP_GRACE_SECONDS

LOAD_SECONDS = 2.0  # write load before the stop signal
WORKERS = 4  # concurrent writers per target, one write in flight each
MIN_ACKS_PER_WORKER = 100  # far below what any of them does in LOAD_SECONDS
FLOWING = 1.0  # s: every writer had an ack this recently when the signal went


@pytest.fixture(scope="module")
def outcomes() -> Iterator[list[Outcome]]:
    """Every scenario's numbers, printed as one table at the end (`pytest -s`)."""
    found: list[Outcome] = []
    yield found
    if found:
        print("\n" + summarise(found))


@pytest.fixture(scope="module")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    with Postgres(tmp_path_factory.mktemp("postgres")) as service:
        yield service


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Redis]:
    with Redis(tmp_path_factory.mktemp("redis")) as service:
        yield service


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nats]:
    with Nats(tmp_path_factory.mktemp("nats")) as service:
        yield service


def run(service: Service, how: How, outcomes: list[Outcome]) -> Outcome:
    outcome = stop_under_load(service, how, load_seconds=LOAD_SECONDS, workers=WORKERS)
    outcomes.append(outcome)
    print("\n" + outcome.line())
    return outcome


def assert_every_ack_kept(outcome: Outcome) -> None:
    """Writes flowed at the signal, and the restarted server holds each acknowledged one once."""
    for check in outcome.checks:
        where = f"{outcome.service} {outcome.how}, {check.target}: {check}"
        assert check.acked >= MIN_ACKS_PER_WORKER * check.workers, where
        assert check.lost == 0, where
        assert check.duplicates == 0, where
        assert check.out_of_order == 0, where
        assert not check.anomalies, where
        # Stored without an ack: at most the one write each worker had in flight.
        assert check.unacked_stored <= check.workers, where
        assert check.silent_before_signal < FLOWING, where
        if check.survives:  # R3 through another server: acks went on after the signal
            assert check.silent_before_signal < 0, where


def assert_stopped_in_grace(outcome: Outcome, service: Service) -> None:
    grace = STOP_GRACE_SECONDS[service.kind]
    assert outcome.exit_seconds < grace, (
        f"{outcome.service} took {outcome.exit_seconds}s > {grace}s"
    )
    # It ran its shutdown, not just died: the log line of a completed clean shutdown.
    assert service.graceful_marker in outcome.stop_log, outcome.stop_log[-3000:]


def comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


# --- PostgreSQL --------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_postgres_runs_with_the_image_durability_settings(postgres: Postgres) -> None:
    settings = {name: postgres.setting(name)
                for name in ("fsync", "synchronous_commit", "full_page_writes")}  # fmt: skip
    assert settings == {"fsync": "on", "synchronous_commit": "on", "full_page_writes": "on"}
    assert postgres.server is not None
    # The stop signal must reach the postmaster itself, as PID 1 of the container.
    assert comm(postgres.server.pid) == "postgres"


@pytest.mark.timeout(120)
def test_postgres_fast_shutdown_under_load_keeps_every_commit(
    postgres: Postgres, outcomes: list[Outcome]
) -> None:
    outcome = run(postgres, "graceful", outcomes)
    assert_stopped_in_grace(outcome, postgres)
    assert "checkpoint starting: shutdown" in outcome.stop_log, outcome.stop_log[-3000:]
    assert_every_ack_kept(outcome)
    assert "not properly shut down" not in outcome.start_log, outcome.start_log


@pytest.mark.timeout(120)
def test_postgres_sigkill_under_load_recovers_every_commit(
    postgres: Postgres, outcomes: list[Outcome]
) -> None:
    outcome = run(postgres, "kill", outcomes)
    # The next start really was a crash recovery (WAL replay), not a clean start.
    assert "automatic recovery in progress" in outcome.start_log, outcome.start_log
    assert "redo done" in outcome.start_log, outcome.start_log
    assert_every_ack_kept(outcome)


# --- Redis -------------------------------------------------------------------------------
@pytest.mark.timeout(60)
def test_redis_runs_with_the_program_persistence_settings(redis: Redis) -> None:
    command = ["redis-cli", "--no-auth-warning", "-a", redis.env(redis.host)["REDIS_PASSWORD"]]

    def config(name: str) -> str:
        reply = redis.lab.run(redis.host, [*command, "--raw", "config", "get", name]).stdout
        return reply.splitlines()[1]

    assert config("appendonly") == "yes"
    assert config("appendfsync") == "always"  # fsync before the reply: a host crash too
    assert config("save") == "3600 1 300 100 60 10000"  # Redis 7 defaults: RDB on SIGTERM
    assert redis.server is not None
    assert comm(redis.server.pid) == "redis-server"  # START execs: the signal reaches it


@pytest.mark.timeout(120)
def test_redis_sigterm_under_load_keeps_every_acknowledged_write(
    redis: Redis, outcomes: list[Outcome]
) -> None:
    outcome = run(redis, "graceful", outcomes)
    assert_stopped_in_grace(outcome, redis)
    # SIGTERM: the AOF is fsynced and, with save points configured, an RDB written.
    assert "Calling fsync() on the AOF file" in outcome.stop_log, outcome.stop_log[-3000:]
    assert "DB saved on disk" in outcome.stop_log, outcome.stop_log[-3000:]
    assert_every_ack_kept(outcome)


@pytest.mark.timeout(120)
def test_redis_sigkill_under_load_keeps_every_acknowledged_write(
    redis: Redis, outcomes: list[Outcome]
) -> None:
    """appendfsync always writes and fsyncs the AOF before it replies: a killed process
    (or a crashed host) loses none."""
    outcome = run(redis, "kill", outcomes)
    assert redis.graceful_marker not in outcome.stop_log
    assert "DB loaded from append only file" in outcome.start_log, outcome.start_log
    assert_every_ack_kept(outcome)


# --- NATS JetStream ----------------------------------------------------------------------
@pytest.mark.timeout(150)
def test_nats_sigterm_under_load_keeps_every_acknowledged_publish(
    nats: Nats, outcomes: list[Outcome]
) -> None:
    """dk's server stops while it leads GLOBAL_EVENTS (R3) and holds TERRITORY_DK (R1)."""
    nats.lead_global_from_stopped()
    outcome = run(nats, "graceful", outcomes)
    assert_stopped_in_grace(outcome, nats)
    assert_every_ack_kept(outcome)
    assert [check.target for check in outcome.checks] == [nats.territory, "GLOBAL_EVENTS"]
    assert nats.leader(nats.territory) == nats.deployment.pod(NATS_STOPPED).nats_server_name


@pytest.mark.timeout(150)
def test_nats_sigkill_under_load_keeps_every_acknowledged_publish(
    nats: Nats, outcomes: list[Outcome]
) -> None:
    """A stream's messages are written to the block file before the PubAck: a killed server
    keeps them (R1), and R3 has them on the other two replicas anyway."""
    nats.lead_global_from_stopped()
    outcome = run(nats, "kill", outcomes)
    assert nats.graceful_marker not in outcome.stop_log
    assert_every_ack_kept(outcome)
