"""A rolling upgrade of the NATS cluster, one server at a time, under JetStream write load.

Why: upgrading nats-server (a new image minor) restarts all three servers of the mesh. The
rollout procedure (tests/support/nats_rollout.py; what `scripts/rollout.sh` does per pod, in
config order dk, no, se) stops one server gracefully, starts it on the same store and config
with the new binary and waits before it touches the next one. Only real servers can show that

- the 2.10-written store and the program's rendered config run on the image's 2.14, in a
  cluster of mixed versions while it rolls, and the program's stream job finds nothing to
  change afterwards;
- every acknowledged message stays, exactly once, in the R3 GLOBAL_EVENTS and the R1
  TERRITORY_DK, while a publisher writes to both throughout;
- GLOBAL_EVENTS stays writable: the longest wait for an ack stays below PAUSE_TARGET;
- the gate is what makes it so: the same roll moving on as soon as the restarted server's
  client port listens (a cluster of its own) stops the next server while the previous one
  still recovers, GLOBAL_EVENTS loses its quorum and writes stall for a whole re-election.

What the gate must be, measured here: the restarted server's full /healthz 200 is not
enough. /healthz counts a stream replica that has not heard from its leader yet as current,
so it says 200 while the leader still reports that replica behind; rolling on then and
stopping the leader left GLOBAL_EVENTS without quorum for 4.6-7.8 s in 3 of 18 rolls. The
procedure therefore also waits, from /jsz, until every replicated stream's leader reports all
its replicas current (`RolloutBed.replicas_current`, gate "healthz+replicas").

One stall remains possible, and it is nats-server's: when the stopped server leads
GLOBAL_EVENTS, SIGTERM hands the leadership to a follower picked without looking at its log
(raft.go StepDown: the first peer heard from within 3 heartbeats). If that follower cannot win
the vote, the group waits for an election timer (4-9 s). Seen in 1 of 70 gated rolls (5.5 s).
A step that stopped the leader is therefore held to ELECTION_BOUND, every other step to
PAUSE_TARGET, and at most one step may exceed PAUSE_TARGET.

The numbers are printed (`pytest -s`). The old binary (2.10.25) comes from
tests/support/nats_versions.sh (scripts/test.sh runs it); the new one is the venv's
nats-server, the image's minor.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.deployments import dev_deployment
from tests.support.nats_rollout import (
    NEW_VERSION,
    OLD_VERSION,
    Outcome,
    binary_version,
    installed_binary,
    roll_under_load,
)
from unityplan_infra.nats.streams import GLOBAL_STREAM, territory_stream_name
from unityplan_infra.topology.stop import STOP_GRACE_SECONDS

pytestmark = pytest.mark.timeout(120)

DEPLOYMENT = dev_deployment()
ORDER = [pod.code for pod in DEPLOYMENT.pods]  # the stack's config order: dk, no, se
TERRITORY = territory_stream_name(DEPLOYMENT.pod(ORDER[0]))  # R1 on the first pod rolled
TARGETS = [(GLOBAL_STREAM, "global.rollout"), (TERRITORY, f"territory.{ORDER[0]}.rollout")]
ACK_TIMEOUT = 0.5  # s: the publisher's wait for a PubAck before it retries (same Nats-Msg-Id)
# The longest wait for an ack on GLOBAL_EVENTS in a step. Measured with the gate on 2 cores
# (70 rolls): 0.52-0.54 s, one ACK_TIMEOUT (the publish in flight on the connection of the
# server that stops is answered by nobody) plus the retry; the stream itself moves its leader
# in 0.02-0.1 s. 2 s leaves ~4x for a loaded machine. Without the gate: 4.4-8.2 s.
PAUSE_TARGET = 2.0
# A step that stopped GLOBAL_EVENTS' leader, if nats-server's leader transfer fails: the
# longest election timer (9 s) plus one ACK_TIMEOUT and slack.
ELECTION_BOUND = 11.0
HEALTHY_WITHIN = 20.0  # s from SIGTERM to /healthz 200 per server; measured 0.13-2.2 s
GATE_TIMEOUT = 40.0  # the test's bound on each wait (the procedure's own is 120 s)
MIN_ACKS = 500  # per stream; far below the ~2000-6000 of a gated run


@pytest.fixture(scope="module")
def old_binary() -> Path:
    """The release rolled from; missing, every test fails with the install command."""
    try:
        return installed_binary(OLD_VERSION)
    except AssertionError as missing:
        message = str(missing)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module")
def new_binary() -> Path:
    """The release rolled to: the venv's nats-server (tests/conftest.py), the image's minor."""
    return Path(shutil.which("nats-server") or "nats-server")


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory, old_binary: Path,
          new_binary: Path) -> Iterator[Outcome]:
    """The procedure: the next server is stopped only once the previous one's /healthz is
    200 and every replicated stream's leader reports all replicas current."""
    outcome = roll_under_load(tmp_path_factory.mktemp("rollout"), new_binary,
                              "healthz+replicas", TARGETS, order=ORDER,
                              ack_timeout=ACK_TIMEOUT, gate_timeout=GATE_TIMEOUT,
                              start_binary=old_binary)  # fmt: skip
    print("\n" + "\n".join(outcome.lines()))
    yield outcome


@pytest.fixture(scope="module")
def ungated(tmp_path_factory: pytest.TempPathFactory, old_binary: Path,
            new_binary: Path) -> Iterator[Outcome]:
    """Negative control, on a cluster of its own: move on once the client port listens."""
    outcome = roll_under_load(tmp_path_factory.mktemp("rollout-ungated"), new_binary,
                              "listening", TARGETS[:1], order=ORDER,
                              ack_timeout=ACK_TIMEOUT, gate_timeout=GATE_TIMEOUT,
                              start_binary=old_binary)  # fmt: skip
    print("\n" + "\n".join(outcome.lines()))
    yield outcome


def test_the_old_release_is_installed_beside_the_image_minor(old_binary: Path) -> None:
    assert binary_version(old_binary) == OLD_VERSION
    assert binary_version("nats-server") == NEW_VERSION  # the venv's, first on PATH


# --- the procedure -----------------------------------------------------------------------
def test_every_server_runs_the_new_release_on_its_old_store(gated: Outcome) -> None:
    assert gated.versions_before == dict.fromkeys(ORDER, OLD_VERSION)
    assert gated.versions_after == dict.fromkeys(ORDER, NEW_VERSION)  # /varz
    assert [step.code for step in gated.steps] == ORDER
    for step in gated.steps:
        log = gated.logs[step.code]
        # One start per release on the same store directory: no wipe, no crash loop.
        assert log.count(f"Version:  {OLD_VERSION}") == 1, step.code
        assert log.count(f"Version:  {NEW_VERSION}") == 1, step.code
        old_part, new_part = log.split(f"Version:  {NEW_VERSION}")
        assert step.clean_exit and step.exit_seconds < STOP_GRACE_SECONDS["nats"], step
        assert "Server Exiting.." in old_part, old_part[-3000:]
        assert not re.findall(r"\[(?:ERR|FTL)\].*", new_part), new_part[-3000:]
        # The new release read the old release's store: its messages, not a copy from peers.
        found = re.findall(r"Restored ([\d,]+) messages for stream '\$G > (\w+)'", new_part)
        restored = {stream: int(count.replace(",", "")) for count, stream in found}
        assert restored.get(GLOBAL_STREAM, 0) > 0, new_part[:3000]
        if step.code == ORDER[0]:
            assert restored.get(TERRITORY, 0) > 0, new_part[:3000]


def test_every_acknowledged_message_is_stored_exactly_once(gated: Outcome) -> None:
    assert set(gated.tallies) == {GLOBAL_STREAM, TERRITORY}
    for count in gated.tallies.values():
        assert count.acked >= MIN_ACKS, count.line()
        assert count.lost == 0, count.line()
        assert count.duplicated == 0, count.line()
        assert count.stream_seq_mismatch == 0, count.line()
        # Writers stop only after an ack: nothing was in flight when writing ended.
        assert count.unacked_stored == 0, count.line()
        assert count.stored == count.acked, count.line()
    for writer in gated.writers:
        assert not writer.gave_up, writer.gave_up
        # The stream holds nothing else: stream sequence n is the writer's message n-1.
        assert [ack.stream_seq for ack in writer.acks] == list(range(1, len(writer.acks) + 1))


def test_global_events_ends_with_three_current_identical_replicas(gated: Outcome) -> None:
    cluster = gated.global_info["cluster"]
    assert cluster["leader"] in {pod.nats_server_name for pod in DEPLOYMENT.pods}
    followers = cluster["replicas"]
    assert len(followers) == 2, cluster
    assert all(f["current"] and not f.get("lag") for f in followers), cluster
    acked = gated.tallies[GLOBAL_STREAM].acked
    assert gated.global_info["state"]["messages"] == acked
    # Each server's own copy (its store, from its /jsz) holds every acknowledged message.
    for code, state in gated.local_states.items():
        assert state is not None, code
        stored = (state["messages"], state["first_seq"], state["last_seq"])
        assert stored == (acked, 1, acked), (code, state)
    # The next `pulumi up` (the program's stream job against the upgraded cluster) changes
    # nothing: the new release still reports the program's stream definitions.
    assert set(gated.reapplied.values()) == {"unchanged"}, gated.reapplied


def test_each_server_is_healthy_soon_after_its_stop(gated: Outcome) -> None:
    for step in gated.steps:
        assert step.healthy_when_left, step
        assert step.healthy_seconds < HEALTHY_WITHIN, step
        assert step.healthy_seconds <= step.gate_seconds < HEALTHY_WITHIN, step


def test_global_events_stays_writable_throughout(gated: Outcome) -> None:
    pauses = gated.pauses[GLOBAL_STREAM]
    assert set(pauses) == set(ORDER)
    for step in gated.steps:
        bound = ELECTION_BOUND if step.stopped_stream_leader else PAUSE_TARGET
        assert pauses[step.code] < bound, (step.code, gated.lines())
    assert sum(pause >= PAUSE_TARGET for pause in pauses.values()) <= 1, gated.lines()
    before = gated.writers[0].max_gap(end=gated.steps[0].stopped_at)
    assert before < PAUSE_TARGET, gated.lines()
    # TERRITORY_DK has one replica, on dk: it waits while dk restarts, never longer than
    # dk takes to become healthy plus one ack timeout to notice.
    dk = gated.steps[0]
    assert gated.tallies[TERRITORY].max_gap < dk.healthy_seconds + ACK_TIMEOUT + 1.0, gated.lines()


# --- negative control --------------------------------------------------------------------
def test_without_the_gate_the_stream_loses_its_quorum_and_writes_stall(ungated: Outcome) -> None:
    """A server listens ~0.06 s after its start but is current only 0.13-2 s later (routes,
    then the meta leader's heartbeat, then its replicas' catch-up). Moving on once the port
    listens stops the next server while the previous one still recovers: then only one of
    GLOBAL_EVENTS' three replicas is current, below the quorum of 2. Measured: all three
    servers went down within ~0.15 s, as in a restart of the whole cluster, and writes
    stalled 4.4-8.2 s (9 rolls) until the meta group and the stream had elected leaders
    (the election timer alone is at least 4 s)."""
    assert ungated.versions_after == dict.fromkeys(ORDER, NEW_VERSION)
    # The next SIGTERM went while a restarted server's /healthz was not 200 (in every roll
    # measured, for both; one is enough for the quorum to go).
    assert any(not step.healthy_when_left for step in ungated.steps[:-1]), ungated.lines()
    assert ungated.tallies[GLOBAL_STREAM].max_gap > PAUSE_TARGET, ungated.lines()
    # Graceful stops and sync_interval always: what was acknowledged survives even this;
    # the gate is about staying writable, not about durability.
    count = ungated.tallies[GLOBAL_STREAM]
    assert (count.lost, count.duplicated, count.unacked_stored) == (0, 0, 0), count.line()
