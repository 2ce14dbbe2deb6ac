"""Retiring a pod's NATS server with the program's stream job, on real servers under load.

Why: a pod leaves the mesh for good in two steps. With `leaving: true` it still runs,
routed, and the job hands its share over: its R1 TERRITORY stream must move, with every
message, to the first staying pod's server; GLOBAL_EVENTS (R3) must get a replica elsewhere
for the one it had on the leaving server without losing its quorum; the JetStream meta
group must end without that server as a dead peer. With `retired: true` the others reload
without its route, the job runs again and must find nothing to do while the server is
unreachable, and its container is stopped.

The procedure (tests/support/nats_retire.py): the dev stack's dk, no, se with the program's
streams, a 4th pod fi added as `pulumi up` adds one, se made the leader of GLOBAL_EVENTS and
of the meta group (the worst case; 2.10 steps down at random, so there it may stay short of
that), writers on GLOBAL_EVENTS throughout and on TERRITORY_SE until just before the
hand-over. Step 1: the program's job archive with `retired_servers: [service-nats-se]` and
the system user, every server running and routed. Step 2: dk, no, fi reloaded with configs
rendered from the deployment where se has `retired: true`, se stopped with SIGTERM, and the
same job again. On every nats-server release at hand (tests/support/nats_releases.py: the
venv's and those nats_versions.sh installed; 2.10.25, 2.14.6 and 2.15.1 here). Numbers are
printed (`pytest -s`).

And the job's clear failures, each within seconds rather than at its 600 s hand-over
deadline: too few servers left for a replicated stream; an R1 stream (here a key-value
bucket) that is not the program's on the retired server; and the retired server not
running when its TERRITORY stream must still move (the pod set straight to `retired: true`).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.jetstream_bed import JetStreamBed
from tests.support.nats_releases import releases
from tests.support.nats_retire import (
    RetireOutcome,
    four_pods,
    meta_members,
    retire_spec,
    retire_under_load,
    run_job,
)
from tests.support.nats_rollout import stream_info
from unityplan_infra.nats.streams import GLOBAL_STREAM, stream_configs, territory_stream_name

pytestmark = pytest.mark.timeout(120)

RETIRED = "se"
LEAVING = four_pods(leaving=(RETIRED,))  # step 1
SHRUNK = four_pods(RETIRED)  # step 2
RETIRED_SERVER = SHRUNK.retired[0].nats_server_name
KEEPER = SHRUNK.pods[0].nats_server_name  # the first active pod's: service-nats-dk
STAYING = sorted(pod.nats_server_name for pod in SHRUNK.pods)
TERRITORY = territory_stream_name(SHRUNK.retired[0])
# GLOBAL_EVENTS' longest wait for an ack, anywhere from the first write to the last: one ack
# timeout (0.5 s, the publish in flight when the leader moved) and slack for a loaded
# machine. Measured: 0.02-0.53 s (see the printed numbers).
PAUSE_BOUND = 2.0
MIN_ACKS = 300  # per stream; far below what a run writes
JOB_BOUND = 30.0  # s for the whole hand-over; measured 2.2-4.9 s, most of it the R1 move


@pytest.fixture(scope="module", params=sorted(releases()), ids=lambda version: version)
def retired(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[RetireOutcome]:  # fmt: skip
    version: str = request.param
    outcome = retire_under_load(tmp_path_factory.mktemp(f"retire-{version}"),
                                releases()[version], RETIRED)  # fmt: skip
    print("\n" + "\n".join(outcome.lines()))
    yield outcome


def test_the_job_hands_everything_over_and_removes_the_server(retired: RetireOutcome) -> None:
    job = retired.job
    assert job.returncode == 0, (job.lines, job.stderr)
    assert job.seconds < JOB_BOUND, retired.lines()
    lines = job.lines
    # The streams first: only the leaving pod's TERRITORY stream changes (its placement).
    assert job.actions()[:5] == [(GLOBAL_STREAM, "unchanged"), ("TERRITORY_DK", "unchanged"),
                                 ("TERRITORY_NO", "unchanged"), (TERRITORY, "updated"),
                                 ("TERRITORY_FI", "unchanged")]  # fmt: skip
    assert {"stream": GLOBAL_STREAM, "action": "peer-removed",
            "server": RETIRED_SERVER} in [{k: v for k, v in line.items() if k != "seconds"}
                                          for line in lines]  # fmt: skip
    (handed,) = [line for line in lines if line.get("action") == "handed-over"]
    assert handed["stream"] == GLOBAL_STREAM and sorted(handed["peers"]) == STAYING, handed
    assert RETIRED_SERVER in handed["from"], handed
    (moved,) = [line for line in lines if line.get("action") == "moved"]
    assert (moved["stream"], moved["peers"], moved["from"]) == (TERRITORY, [KEEPER],
                                                                [RETIRED_SERVER])  # fmt: skip
    assert moved["messages"] == retired.territory_before["state"]["messages"], moved
    meta_lines = [line for line in lines if "server" in line and "stream" not in line]
    removed = meta_lines[-1]
    assert (removed["server"], removed["action"]) == (RETIRED_SERVER, "removed"), removed
    assert removed["meta_peers"] == STAYING and removed["meta_offline"] == [], removed
    # A meta leader on the retired server hands its leadership on before its removal.
    assert meta_lines[:-1] == [{"server": RETIRED_SERVER, "action": "meta-leader-stepped-down"}
                               ] * (len(meta_lines) - 1), meta_lines  # fmt: skip
    if retired.led["meta"][1]:
        assert len(meta_lines) == 2, meta_lines
    assert not [line for line in lines if "error" in line]


def test_the_retired_server_was_still_running_and_gave_up_jetstream(retired: RetireOutcome
                                                                    ) -> None:  # fmt: skip
    """Peer removal of a running server: it disables its JetStream and runs on."""
    log = retired.retired_log
    assert "JetStream being DISABLED, our server was removed from the cluster" in log, log[-3000:]
    assert retired.retired_jsz["disabled"] is True, retired.retired_jsz
    assert not re.findall(r"\[(?:FTL)\].*|panic", log), log[-3000:]
    assert RETIRED_SERVER not in meta_members(retired.meta_after_job)


def test_every_acknowledged_message_is_present_exactly_once(retired: RetireOutcome) -> None:
    assert set(retired.tallies) == {GLOBAL_STREAM, TERRITORY}
    for count in retired.tallies.values():
        assert count.acked >= MIN_ACKS, count.line()
        assert (count.lost, count.duplicated, count.unacked_stored) == (0, 0, 0), count.line()
        assert count.stream_seq_mismatch == 0, count.line()
        assert count.stored == count.acked, count.line()
    for writer in (retired.global_writer, retired.territory_writer):
        assert not writer.gave_up, writer.gave_up


def test_the_retired_territory_stream_is_whole_on_the_keeper(retired: RetireOutcome) -> None:
    info = retired.territory_info
    assert info["cluster"]["leader"] == KEEPER
    assert not info["cluster"].get("replicas"), info["cluster"]
    acked = retired.tallies[TERRITORY].acked
    assert info["state"]["messages"] == acked == retired.territory_before["state"]["messages"]
    assert (info["state"]["first_seq"], info["state"]["last_seq"]) == (1, acked)
    assert info["config"]["placement"] == {"tags": ["territory:dk"]}


def test_global_events_ends_with_three_current_replicas_off_the_retired_server(
    retired: RetireOutcome,
) -> None:
    cluster = retired.global_info["cluster"]
    peers = sorted([cluster["leader"], *(r["name"] for r in cluster["replicas"])])
    assert peers == STAYING, cluster
    assert all(r["current"] and not r.get("offline") for r in cluster["replicas"]), cluster
    assert retired.global_info["state"]["messages"] == retired.tallies[GLOBAL_STREAM].acked


def test_the_meta_group_ends_with_three_peers_none_offline(retired: RetireOutcome) -> None:
    for meta in (retired.meta_after_job, retired.meta_after):
        assert meta_members(meta) == STAYING, meta
        assert meta["cluster_size"] == 3, meta
        assert all(r["current"] and not r.get("offline") for r in meta["replicas"]), meta


def test_global_events_keeps_its_quorum_throughout(retired: RetireOutcome) -> None:
    assert retired.global_writer.max_gap() < PAUSE_BOUND, retired.lines()
    # Writes went on during the hand-over, and across the stop of the retired server and
    # the reload of the others.
    marks = retired.marks
    for start, end in (("job", "job done"), ("job done", "written")):
        acks = [a for a in retired.global_writer.acks if marks[start] <= a.at < marks[end]]
        assert acks, (start, end, retired.lines())


def test_the_remaining_servers_reload_without_its_route_and_stay_quiet(
    retired: RetireOutcome,
) -> None:
    """After the reload nothing dials the retired server's route any more."""
    for code, log in retired.logs.items():
        after = log.rsplit("Reloaded server configuration", 1)[-1]
        assert "Reloaded server configuration" in log, code
        assert not re.findall(r"\[ERR\].*", after), (code, after[-3000:])


def test_step_two_runs_the_job_again_without_the_stopped_server_and_changes_nothing(
    retired: RetireOutcome,
) -> None:
    """`retired: true`: the others no longer route to it, it is stopped, and the same job
    finds every stream handed over and the server gone from the meta group."""
    marks = retired.marks
    assert marks["job done"] < marks["reloaded"] < marks["retired stopped"], marks
    assert retired.rerun.started > marks["retired stopped"], marks
    assert not retired.rerun_while_retired_ran
    rerun = retired.rerun
    assert rerun.returncode == 0, (rerun.lines, rerun.stderr)
    # In config order whatever each pod's state (nats/streams.py): se keeps its place.
    assert rerun.actions() == [(GLOBAL_STREAM, "unchanged"), ("TERRITORY_DK", "unchanged"),
                               ("TERRITORY_NO", "unchanged"), (TERRITORY, "unchanged"),
                               ("TERRITORY_FI", "unchanged")], rerun.lines  # fmt: skip
    assert rerun.actions("server") == [(RETIRED_SERVER, "unchanged")], rerun.lines
    assert not [line for line in rerun.lines if "error" in line], rerun.lines
    assert rerun.seconds < 10, rerun.seconds


def test_the_four_pod_plan_retires_the_pod_the_test_stops() -> None:
    """What the job got is what the program plans for `leaving: true`, then `retired: true`
    (nats/streams.py): the same servers to hand over and the same streams in both steps."""
    assert [pod.code for pod in LEAVING.pods] == ["dk", "no", "se", "fi"]  # still deployed
    assert [pod.code for pod in LEAVING.staying] == [pod.code for pod in SHRUNK.pods] == [
        "dk", "no", "fi"]  # fmt: skip
    assert RETIRED_SERVER == "service-nats-se" and KEEPER == "service-nats-dk"
    # What retire_spec hands the job from each deployment.
    for deployment in (LEAVING, SHRUNK):
        assert [pod.nats_server_name for pod in deployment.handed_over] == [RETIRED_SERVER]
    step1, step2 = ({stream["name"]: stream for stream in stream_configs(deployment)}
                    for deployment in (LEAVING, SHRUNK))  # fmt: skip
    assert step1 == step2
    # The same list, in the same order: the job's trigger hashes it (step 2 does not rerun).
    assert stream_configs(LEAVING) == stream_configs(SHRUNK)
    assert step2[TERRITORY]["placement"] == {"tags": ["territory:dk"]}


# --- clear failures -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def grown(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JetStreamBed]:
    """dk, no, se, fi on the venv's release, with the program's streams of all four."""
    with JetStreamBed(tmp_path_factory.mktemp("retire-failures")) as bed:
        for code in bed.use_deployment(four_pods()):
            bed.start_server(code)
        for code in ("dk", "no", "se"):
            bed.reload(code)
        bed.wait_formed(30)
        bed.apply_program_streams()
        yield bed


def test_too_few_servers_left_for_the_replicas_stops_the_job_before_any_change(
    grown: JetStreamBed,
) -> None:
    """Retiring se and fi leaves 2 servers for GLOBAL_EVENTS' 3 replicas: a peer removal
    would find no replacement and shrink the group. The stack config refuses such a plan
    (globalReplicas > active pods); the job checks again, for any replicated stream, whoever
    created it: it says so and changes nothing."""
    spec = retire_spec(grown, SHRUNK)
    spec["retired_servers"] = [RETIRED_SERVER, "service-nats-fi"]
    job = run_job(spec)
    assert job.returncode == 1, job.lines
    (line,) = job.lines
    assert line["error"].startswith("stream GLOBAL_EVENTS has 3 replicas but only 2 servers"
                                    " stay (service-nats-dk, service-nats-no)"), line  # fmt: skip
    info = asyncio.run(stream_info(grown, "dk", TERRITORY))
    assert info["config"]["placement"] == {"tags": ["territory:se"]}  # not moved


async def _bucket(bed: JetStreamBed, bucket: str, tags: list[str] | None) -> None:
    """Create the key-value bucket (its stream as `nats kv add --tags` makes it: nats-py's
    create_key_value drops the placement), R1 and placed by `tags`; or (tags None) delete it."""
    nc = await bed.connect("dk")
    try:
        if tags is None:
            await nc.jetstream().delete_key_value(bucket)
            return
        config = {"name": f"KV_{bucket}", "subjects": [f"$KV.{bucket}.>"], "num_replicas": 1,
                  "max_msgs_per_subject": 1, "discard": "new", "allow_rollup_hdrs": True,
                  "deny_delete": True, "allow_direct": True, "storage": "file",
                  "placement": {"tags": tags}}  # fmt: skip
        reply = await nc.request(f"$JS.API.STREAM.CREATE.KV_{bucket}", json.dumps(config).encode(),
                                 timeout=5)  # fmt: skip
        assert "error" not in json.loads(reply.data), reply.data
        await (await nc.jetstream().key_value(bucket)).put("greeting", b"hej")
    finally:
        await nc.close()


async def _listed(bed: JetStreamBed, name: str) -> dict[str, Any]:
    """The stream's STREAM.LIST entry (it is listed even when no server of it runs)."""
    nc = await bed.connect("dk")
    try:
        reply = json.loads((await nc.request("$JS.API.STREAM.LIST", b"", timeout=5)).data)
        (entry,) = [s for s in reply["streams"] if s["config"]["name"] == name]
        return dict(entry)
    finally:
        await nc.close()


def test_an_r1_bucket_that_is_not_the_programs_on_the_retired_server_stops_the_job_at_once(
    grown: JetStreamBed,
) -> None:
    """The job moves an R1 stream by its placement, and places only the program's streams:
    a key-value bucket on se would sit there until the hand-over deadline (600 s). The job
    names it and the fix before it changes anything."""
    asyncio.run(_bucket(grown, "settings", ["territory:se"]))
    try:
        job = run_job(retire_spec(grown, LEAVING))
    finally:
        asyncio.run(_bucket(grown, "settings", None))
    print(f"\nforeign bucket: exit {job.returncode} in {job.seconds:.2f}s: {job.lines}")
    assert job.returncode == 1, job.lines
    assert job.seconds < 5, job.seconds
    (line,) = job.lines  # nothing done before
    assert line["stream"] == "KV_settings", line
    error = line["error"]
    assert error.startswith("stream KV_settings (the key-value bucket settings) has its only"
                            f" copy on {RETIRED_SERVER}, and the job moves only the program's"
                            " own streams"), error  # fmt: skip
    assert "`nats stream edit KV_settings --tag " in error, error
    assert "`nats stream rm KV_settings`" in error and error.endswith("run `up` again"), error
    info = asyncio.run(stream_info(grown, "dk", TERRITORY))
    assert info["config"]["placement"] == {"tags": ["territory:se"]}  # not moved


def test_a_retired_server_that_no_longer_runs_is_named_and_can_be_started_again(
    grown: JetStreamBed,
) -> None:
    """The pod set straight to `retired: true`: its server is gone when the job runs, and its
    R1 stream's messages are on it alone. The job fails once the stream has been offline for
    its grace (30 s by default, 3 here), says exactly that and what to do; once the server
    runs again, routed (what `leaving: true` does), the same job hands everything over."""
    grown.stop_server(RETIRED)
    spec = retire_spec(grown, SHRUNK) | {"offline_grace_seconds": 3}
    try:
        job = run_job(spec)
        listed = asyncio.run(_listed(grown, TERRITORY))
    finally:
        grown.start_server(RETIRED)
    print(f"\nretired server stopped: exit {job.returncode} in {job.seconds:.2f}s: {job.lines}")
    assert job.returncode == 1, job.lines
    assert 3 <= job.seconds < 10, job.seconds
    (failed,) = job.lines  # nothing done before
    assert failed["stream"] == TERRITORY, failed
    assert re.fullmatch(
        re.escape(f"stream {TERRITORY}: its only copy is on {RETIRED_SERVER}, which does not"
                  " run or is not reachable (the job saw the stream without a leader for ")
        + r"[34]"
        + re.escape("s), so the job cannot move it. Set `leaving: true` on the pod of"
                    f" {RETIRED_SERVER} instead of `retired: true` and run `up`: its server"
                    " comes back, routed, and this job moves the stream; then set `retired:"
                    " true` and run `up` again"),
        failed["error"],
    ), failed  # fmt: skip
    assert "not one of the program's streams" not in failed["error"], failed
    assert listed["config"]["placement"] == {"tags": ["territory:se"]}, listed  # not touched
    grown.wait_formed(30)
    again = run_job(retire_spec(grown, SHRUNK))
    assert again.returncode == 0, again.lines
    assert (TERRITORY, "moved") in again.actions(), again.lines
    assert again.actions("server")[-1] == (RETIRED_SERVER, "removed"), again.lines
