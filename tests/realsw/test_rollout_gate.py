"""The program's rollout gate (the stream job in gate mode, nats/gate.py) on real servers.

Why: in a rolling upgrade `pulumi up` replaces one pod's nats-server, then runs the gate
before the next pod's; the next server may stop only once this one is back and every
replicated stream has all its replicas current again, or GLOBAL_EVENTS loses its quorum
(tests/realsw/test_nats_rolling_upgrade.py measured that, and its gate from the monitoring
port). The program's gate may use neither the monitoring port (not reachable across hosts
in the multi-host layout) nor the system account: only the client user at the server's
client URL. This proves it the way the rolling-upgrade test proves its own gate: the
same roll, oldest -> newest release at hand (2.10.25 -> 2.15.1 here; tests/support/
nats_releases.py) under the same publisher, with the program's gate (the zip
archive as deploy runs it, started right after each server's start) deciding when the next
server goes: 0 lost, 0 duplicated, and GLOBAL_EVENTS' write pause within the same bounds.
And that the gate holds while it must: a stream replica offline (another server down) or
the URL reaching another server keeps it closed until its deadline, with a message that
says why; a server still down is waited for.

Numbers are printed (`pytest -s`).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.deployments import dev_deployment
from tests.support.jetstream_bed import JetStreamBed
from tests.support.nats_releases import oldest_and_newest
from tests.support.nats_rollout import Outcome, roll_under_load
from tests.support.stream_job import start_job
from unityplan_infra.nats.streams import GLOBAL_STREAM, territory_stream_name

pytestmark = pytest.mark.timeout(120)

DEPLOYMENT = dev_deployment()
ORDER = [pod.code for pod in DEPLOYMENT.pods]  # config order: dk, no, se
TERRITORY = territory_stream_name(DEPLOYMENT.pod(ORDER[0]))
TARGETS = [(GLOBAL_STREAM, "global.gate"), (TERRITORY, f"territory.{ORDER[0]}.gate")]
# The bounds of tests/realsw/test_nats_rolling_upgrade.py (its docstring has the numbers).
ACK_TIMEOUT = 0.5
PAUSE_TARGET = 2.0
ELECTION_BOUND = 11.0
GATE_TIMEOUT = 40.0
MIN_ACKS = 500


@pytest.fixture(scope="module")
def versions() -> tuple[tuple[str, Path], tuple[str, Path]]:
    """(old, new): the oldest and the newest release at hand (2.10.25 and 2.15.1 here)."""
    try:
        return oldest_and_newest()
    except AssertionError as missing:
        message = str(missing)
    pytest.fail(message, pytrace=False)


@pytest.fixture(scope="module", params=["program", "program+meta"])
def rolled(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    versions: tuple[tuple[str, Path], tuple[str, Path]],
) -> Iterator[Outcome]:
    """The roll with the program's gate: the client account only ("program", the spec as
    components/streams.py passes it now) or with the system user too ("program+meta")."""
    (_, old), (_, new) = versions
    outcome = roll_under_load(tmp_path_factory.mktemp("rollout-program-gate"), new,
                              request.param, TARGETS, order=ORDER, ack_timeout=ACK_TIMEOUT,
                              gate_timeout=GATE_TIMEOUT, start_binary=old)  # fmt: skip
    print("\n" + "\n".join(outcome.lines()))
    yield outcome


def test_the_program_gate_rolls_every_server_to_the_new_release(
    rolled: Outcome, versions: tuple[tuple[str, Path], tuple[str, Path]]
) -> None:
    (old, _), (new, _) = versions
    assert rolled.versions_before == dict.fromkeys(ORDER, old)
    assert rolled.versions_after == dict.fromkeys(ORDER, new)
    for step in rolled.steps:
        report = step.gate_report
        assert report["gate"] == step.server_name and report["action"] == "passed", report
        assert report["meta"] == (rolled.gate == "program+meta"), report
        assert step.listening_at <= step.gate_passed_at, step
        # Through the client account it saw every stream, and the restarted server among the
        # peers of GLOBAL_EVENTS and of its own TERRITORY stream.
        assert report["streams"] == 1 + len(ORDER), report
        own = territory_stream_name(DEPLOYMENT.pod(step.code))
        assert {GLOBAL_STREAM, own} <= set(report["peer_of"]), report
    if rolled.gate == "program+meta":
        # What the monitoring port said at that moment: healthy as well. The client account
        # alone cannot see the meta group, which /healthz includes: in 5 rolls measured
        # (2.10.25 -> 2.15.1) the client-only gate passed while /healthz still said "no
        # contact with" or "not current with the meta leader" in 8 of 15 steps, and in 3 the
        # next gate then waited 5.0-7.6 s for a meta leader (writes did not wait: 0.53 s at
        # most); with the system user, 15 of 15 healthy, each gate 0.9-2.6 s after the start.
        assert all(step.healthy_when_left for step in rolled.steps), rolled.lines()


def test_every_acknowledged_message_is_stored_exactly_once(rolled: Outcome) -> None:
    assert set(rolled.tallies) == {GLOBAL_STREAM, TERRITORY}
    for count in rolled.tallies.values():
        assert count.acked >= MIN_ACKS, count.line()
        assert (count.lost, count.duplicated, count.unacked_stored) == (0, 0, 0), count.line()
        assert count.stream_seq_mismatch == 0, count.line()
        assert count.stored == count.acked, count.line()
    cluster = rolled.global_info["cluster"]
    assert len(cluster["replicas"]) == 2, cluster
    assert all(f["current"] and not f.get("lag") for f in cluster["replicas"]), cluster
    assert set(rolled.reapplied.values()) == {"unchanged"}, rolled.reapplied


def test_global_events_stays_writable_throughout(rolled: Outcome) -> None:
    """The same bounds as the monitoring-port gate of the rolling-upgrade test."""
    pauses = rolled.pauses[GLOBAL_STREAM]
    for step in rolled.steps:
        bound = ELECTION_BOUND if step.stopped_stream_leader else PAUSE_TARGET
        assert pauses[step.code] < bound, (step.code, rolled.lines())
    assert sum(pause >= PAUSE_TARGET for pause in pauses.values()) <= 1, rolled.lines()


# --- the gate holds while it must --------------------------------------------------------------
@pytest.fixture(scope="module")
def bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JetStreamBed]:
    with JetStreamBed(tmp_path_factory.mktemp("gate")) as running:
        yield running


def gate_job(bed: JetStreamBed, code: str, deadline: float | None, *,
             url_of: str | None = None, peer_of: list[str] | None = None,
             system_password: str | None = None) -> subprocess.Popen[str]:  # fmt: skip
    """The gate for `code`'s server (deadline None: the job's default); with the system user
    when `system_password` is given."""
    spec: dict[str, Any] = {
        "url": bed.url("dk"), "user": bed.user, "password": bed.password,
        "gate": {"server": bed.server_name(code), "url": bed.url(url_of or code),
                 "peer_of": peer_of or [],
                 **({"deadline_seconds": deadline} if deadline is not None else {})},
    }  # fmt: skip
    if system_password is not None:
        spec |= {"system_user": bed.system_user, "system_password": system_password}
    return start_job(spec)


def outcome(job: subprocess.Popen[str]) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    out, err = job.communicate(timeout=60)
    assert "Traceback" not in err, err
    (line,) = [json.loads(text) for text in out.splitlines()]
    return job.returncode, line, time.monotonic() - started


def test_a_replica_offline_keeps_the_gate_closed_until_its_deadline(bed: JetStreamBed) -> None:
    bed.stop_server("se")
    try:
        code, line, _ = outcome(gate_job(bed, "dk", 3))
    finally:
        bed.start_server("se")
    assert code == 1, line
    assert line["gate"] == "service-nats-dk"
    assert line["error"].startswith("service-nats-dk not back and JetStream-current within 3s")
    # The leader's view: se's replica of GLOBAL_EVENTS is gone; TERRITORY_SE has no leader.
    assert "GLOBAL_EVENTS: replica " in line["error"] and "service-nats-se" in line["error"]
    assert "TERRITORY_SE: " in line["error"], line


def test_the_gate_waits_for_a_server_that_is_still_down(bed: JetStreamBed) -> None:
    """Started while se is stopped, it passes once se is back and caught up."""
    bed.wait_formed(30)
    bed.stop_server("se")
    job = gate_job(bed, "se", 60, peer_of=[GLOBAL_STREAM, "TERRITORY_SE"])
    time.sleep(1.0)
    assert job.poll() is None, job.communicate()
    bed.start_server("se")
    code, line, seconds = outcome(job)
    assert code == 0, line
    assert line["action"] == "passed" and line["looks"] > 1, line
    assert set(line["peer_of"]) >= {GLOBAL_STREAM, "TERRITORY_SE"}, line
    print(f"\ngate for a restarted se: passed {seconds:.2f}s after its start: {line}")


def test_a_refused_system_user_fails_the_gate_instead_of_skipping_the_meta_check(
    bed: JetStreamBed,
) -> None:
    """With the system user in the spec the gate checks the meta group, and only then passes;
    a wrong system password fails it after 10 s (gate.REFUSED_FOR), not at its 300 s
    deadline, saying which user. (The gate used to look on through the client's connection
    alone once the system user's had failed: it passed, unchecked.)"""
    bed.wait_formed(30)
    code, line, seconds = outcome(gate_job(bed, "dk", None, system_password="wrong"))
    print(f"\ngate with a wrong system password: exit {code} in {seconds:.2f}s: {line}")
    assert code == 1, line
    assert line["error"].startswith(
        f"service-nats-dk: the system user {bed.system_user!r} is refused at {bed.url('dk')}"
        " (nats: 'Authorization Violation'): check its password in the spec, for 10."
    ), line
    assert seconds < 20, seconds
    code, line, _ = outcome(gate_job(bed, "dk", 30, system_password=bed.system_password))
    assert code == 0 and line["action"] == "passed" and line["meta"] is True, line


def test_the_gate_refuses_a_url_that_reaches_another_server(bed: JetStreamBed) -> None:
    code, line, _ = outcome(gate_job(bed, "no", 1, url_of="dk"))
    assert code == 1
    assert "the URL reaches service-nats-dk, not service-nats-no" in line["error"], line
