"""Alerts into Matrix: the program's relay between a real Alertmanager and a real Synapse.

Why: Alertmanager has no Matrix receiver; the relay (unityplan_infra/alerting, shipped as
one zip application by render/matrix_relay_job.py) turns its webhook into room messages.
Only the real programs show that Alertmanager's payloads, retries and bearer-token setting
and Synapse's registration, room, transaction and rate-limit behaviour are what the relay
expects.

The lab (tests/support/netns.py) has two hosts. `dk` is the pod: PostgreSQL 15 and Synapse
run the program's generated init SQL and homeserver.yaml, prepared exactly as
tests/realsw/test_synapse.py does (`prepare`, reused). `mon` is the monitoring host:
Alertmanager (Debian's, as `nobody`) with the program's rendered config for a webhook
receiver at `http://matrix-relay:8080/alerts` (FAST timing), and the relay (the archive,
run by the base interpreter with `-I -S`, as `nobody`). The bootstrap runs from `mon`
too, as the one-shot job would, with the homeserver's generated registration secret.
Names resolve through each namespace's hosts file as Docker's network DNS would.

An operator (`@ops`, registered by the test) is invited by the bootstrap, joins, and reads
the room through `/messages`: that is how every test sees what arrived.
"""

from __future__ import annotations

import ast
import json
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.realsw.test_synapse import healthy, lab_deployment, prepare, synapse_argv
from tests.support.matrix_bed import (
    CLIENT,
    MatrixUser,
    Reply,
    call,
    quote,
    register,
    relay_argv,
    relay_file,
)
from tests.support.monitoring_bed import FAST, alertmanager_argv, http_json, http_ok
from tests.support.netns import DEFAULT_SUBNET, Background, NetnsLab, wait_until
from tests.support.postgres import Cluster
from unityplan_infra.alerting.bootstrap import DEVICE_ID
from unityplan_infra.alerting.matrix_relay import (
    ENV_HOMESERVER,
    ENV_LISTEN,
    ENV_ROOM,
    ENV_TOKEN_FILE,
    ENV_WEBHOOK_TOKEN_FILE,
    format_notification,
    parse_notification,
    transaction_id,
)
from unityplan_infra.render.alertmanager import AlertRouting, alertmanager_config
from unityplan_infra.render.matrix_relay_job import build_matrix_relay

pytestmark = pytest.mark.timeout(120)

POD = "dk"
MON = "mon"
NOBODY = 65534  # the user Alertmanager and the relay run as (prom/alertmanager's)
HOMESERVER = "http://service-matrix-dk:8008"
RELAY_URL = "http://matrix-relay:8080"
WAIT = 20.0  # seconds any expected message may take (FAST timing: about 1 s)


# --- the archive and the message format (no servers) -------------------------------------
def test_archive_is_reproducible_and_standard_library_only() -> None:
    first, second = build_matrix_relay(), build_matrix_relay()
    assert first.archive == second.archive
    assert first.files == (
        "__main__.py", "alerting/__init__.py", "alerting/bootstrap.py", "alerting/cli.py",
        "alerting/matrix.py", "alerting/matrix_relay.py",
    )  # fmt: skip
    with zipfile.ZipFile(relay_file()) as archive:
        for name in archive.namelist():
            tree = ast.parse(archive.read(name))
            for node in ast.walk(tree):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    modules = [node.module or ""]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    assert top in sys.stdlib_module_names or top == "alerting", (name, module)
    # ... and it runs with no site-packages at all.
    result = subprocess.run(relay_argv("--help"), capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "bootstrap" in result.stdout and "healthcheck" in result.stdout


def test_bootstrap_waits_for_the_homeserver_then_says_it_is_not_there(tmp_path: Path) -> None:
    spec = {"homeserver": "http://127.0.0.1:9", "registration_shared_secret": "s",
            "token_file": str(tmp_path / "token"), "wait_seconds": 1.5}  # fmt: skip
    started = time.monotonic()
    result = subprocess.run(relay_argv("bootstrap"), input=json.dumps(spec), text=True,
                            capture_output=True, timeout=30)  # fmt: skip
    assert 1.5 <= time.monotonic() - started < 10
    assert result.returncode == 1
    assert json.loads(result.stdout) == {
        "error": "BootstrapError: homeserver http://127.0.0.1:9 did not answer within 1.5 s:"
        " [Errno 111] Connection refused"
    }


def alert(
    name: str = "PostgresDown",
    status: str = "firing",
    *,
    territory: str = "dk",
    summary: str = "PostgreSQL of pod unityplan-dk (dk) is down",
    runbook: str = "docker logs service-postgres-dk | tail -50",
    **labels: str,
) -> dict[str, Any]:
    return {
        "status": status,
        "labels": {"alertname": name, "severity": "critical", "territory": territory,
                   "pod": f"unityplan-{territory}", **labels},
        "annotations": {"summary": summary, "runbook": runbook},
        "startsAt": "2025-03-01T10:00:00.123456789Z",
        "endsAt": "2025-03-01T10:05:00Z" if status == "resolved" else "0001-01-01T00:00:00Z",
        "generatorURL": "http://monitoring-prometheus:9090/graph",
        "fingerprint": secrets.token_hex(8),
    }  # fmt: skip


def payload(*alerts: dict[str, Any], status: str | None = None, **extra: Any) -> dict[str, Any]:
    """An Alertmanager webhook payload (version 4) for `alerts`, grouped as the program
    groups (alertname, territory, host)."""
    first = alerts[0]["labels"]
    group = {k: first[k] for k in ("alertname", "territory") if k in first}
    firing = any(a["status"] == "firing" for a in alerts)
    return {
        "receiver": "webhook", "status": status or ("firing" if firing else "resolved"),
        "alerts": list(alerts), "groupLabels": group, "commonLabels": group,
        "commonAnnotations": {}, "externalURL": "http://monitoring-alertmanager:9093",
        "version": "4", "groupKey": f"{{}}:{group}", "truncatedAlerts": 0, **extra,
    }  # fmt: skip


def test_firing_message_shows_name_labels_summary_and_runbook() -> None:
    message = format_notification(parse_notification(payload(alert())))
    first, *rest = message.body.splitlines()
    assert first == "\N{FIRE} FIRING: PostgresDown \N{MIDDLE DOT} territory dk"
    assert rest[0] == (
        "\N{FIRE} PostgresDown \N{MIDDLE DOT} severity critical \N{MIDDLE DOT} territory dk"
        " \N{MIDDLE DOT} pod unityplan-dk"
    )
    assert "  PostgreSQL of pod unityplan-dk (dk) is down" in rest
    assert "  Runbook: docker logs service-postgres-dk | tail -50" in rest
    assert "  Since 2025-03-01 10:00:00 UTC" in rest
    assert message.formatted_body.startswith(
        "<p><strong>\N{FIRE} FIRING: PostgresDown</strong> \N{MIDDLE DOT} territory <code>dk</code>"
    )
    assert "<code>docker logs service-postgres-dk | tail -50</code>" in message.formatted_body
    assert (
        '<a href="http://monitoring-alertmanager:9093">Alertmanager</a>' in message.formatted_body
    )


def test_resolved_mixed_long_and_hostile_groups() -> None:
    resolved = format_notification(parse_notification(payload(alert(status="resolved"))))
    assert resolved.body.splitlines()[0].startswith("\N{WHITE HEAVY CHECK MARK} RESOLVED: ")
    assert "  Resolved 2025-03-01 10:05:00 UTC" in resolved.body
    mixed = format_notification(
        parse_notification(payload(alert(instance="a"), alert(status="resolved", instance="b")))
    )
    assert mixed.body.startswith("\N{FIRE} FIRING (1, 1 resolved): PostgresDown")
    many = [alert(instance=str(i)) for i in range(25)]
    long = format_notification(parse_notification(payload(*many, truncatedAlerts=5)))
    assert long.body.startswith("\N{FIRE} FIRING (25): PostgresDown")
    assert long.body.count("\N{FIRE} PostgresDown") == 20
    assert "\N{HORIZONTAL ELLIPSIS} and 10 more alerts" in long.body
    hostile = alert(summary="<script>alert(1)</script> & co", runbook="https://x.test/?a=1&b=<2>")
    markup = format_notification(parse_notification(payload(hostile))).formatted_body
    assert "<script>" not in markup and "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in markup
    assert '<a href="https://x.test/?a=1&amp;b=&lt;2&gt;">' in markup


def test_transaction_id_ignores_key_order_only() -> None:
    one = payload(alert())
    reordered = json.loads(json.dumps(one, sort_keys=True))
    assert list(reordered) != list(one)
    assert transaction_id(reordered) == transaction_id(one)
    changed = json.loads(json.dumps(one))
    changed["alerts"][0]["status"] = "resolved"
    assert transaction_id(changed) != transaction_id(one)


@pytest.mark.parametrize(
    ("body", "message"),
    [({"version": "3", "alerts": []}, "version '3'"),
     ({"version": "4", "status": "firing", "alerts": []}, "no alerts"),
     ({"version": "4", "status": "firing", "alerts": [{"status": "on"}]}, "not firing or resolved"),
     ({"version": "4", "status": "firing", "alerts": [{"status": "firing", "labels": {"a": 1}}]},
      "not an object of strings")],
)  # fmt: skip
def test_payloads_that_are_not_notifications_are_refused(body: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_notification(body)


# --- the lab ---------------------------------------------------------------------------------
def as_nobody() -> list[str]:
    return ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]


def secret_file(path: Path, content: str) -> Path:
    """`content` in a 0600 file owned by `nobody`, replaced atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(content)
    temporary.chmod(0o600)
    shutil.chown(temporary, NOBODY, NOBODY)
    temporary.replace(path)
    return path


def spawn_alertmanager(
    lab: NetnsLab, shared: Path, name: str, config: dict[str, Any], port: int
) -> Background:
    """Debian's Alertmanager as `nobody` on 127.0.0.1:`port` of the monitoring host."""
    directory = shared / name
    (directory / "data").mkdir(parents=True)
    shutil.chown(directory / "data", NOBODY, NOBODY)
    path = directory / "alertmanager.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    argv = alertmanager_argv(path, directory / "data", listen=f"127.0.0.1:{port}")
    return lab.spawn(MON, [*as_nobody(), *argv], name=name)


def webhook_routing(url: str) -> AlertRouting:
    return AlertRouting(webhook_url=url, timing=FAST)


@dataclass
class Bed:
    lab: NetnsLab
    shared: Path  # readable by `nobody`; the relay's secrets in 0700 dirs it owns
    secret: str  # the homeserver's generated registration_shared_secret
    server_name: str
    operator: MatrixUser  # invited by the bootstrap; reads the room
    relay: Background  # the program's relay: :8080, the rendered Alertmanager's webhook
    alertmanager: Background  # :9093, the program's rendered config
    first_bootstrap: list[dict[str, Any]]
    latencies: dict[str, float] = field(default_factory=dict)

    @property
    def token_file(self) -> Path:
        return token_file(self.shared)

    @property
    def room_alias(self) -> str:
        return f"#alerts:{self.server_name}"

    @property
    def bot_id(self) -> str:
        return f"@alerts:{self.server_name}"

    @property
    def room_id(self) -> str:
        return str(self.first_bootstrap[-1]["room_id"])

    def bootstrap(self) -> tuple[int, list[dict[str, Any]]]:
        return run_bootstrap(self.lab, self.secret, self.token_file, [self.operator.user_id])

    def bot(self) -> MatrixUser:
        return MatrixUser(self.lab, MON, HOMESERVER, self.bot_id, self.token_file.read_text())

    def bot_messages(self, room_id: str | None = None) -> list[dict[str, Any]]:
        events = self.operator.messages(room_id or self.room_id)
        return [event for event in events if event["sender"] == self.bot_id]

    def with_marker(self, marker: str, room_id: str | None = None) -> list[dict[str, Any]]:
        return [e for e in self.bot_messages(room_id) if marker in e["content"]["body"]]

    def wait_for(
        self, marker: str, *, count: int = 1, room_id: str | None = None,
        log: Background | None = None,
    ) -> list[dict[str, Any]]:  # fmt: skip
        """The bot's messages containing `marker`, once there are `count` of them."""
        wait_until(lambda: len(self.with_marker(marker, room_id)) >= count, timeout=WAIT,
                   what=lambda: f"{count} message(s) with {marker!r}; log:\n"
                                f"{(log or self.relay).output()}")  # fmt: skip
        return self.with_marker(marker, room_id)

    def spawn_relay(self, name: str, token: Path, port: int, **env: str) -> Background:
        environment = {ENV_HOMESERVER: HOMESERVER, ENV_ROOM: self.room_alias,
                       ENV_TOKEN_FILE: str(token), **env}  # fmt: skip
        return spawn_relay(self.lab, name, port, environment)

    def post_alerts(self, alerts: list[dict[str, Any]], port: int = 9093) -> None:
        http_json(self.lab, MON, f"http://127.0.0.1:{port}/api/v2/alerts", data=alerts)

    def webhook(self, body: Any, *, port: int = 8080, token: str | None = None) -> Reply:
        url = f"http://127.0.0.1:{port}/alerts"
        return call(self.lab, MON, "POST", url, body, token=token, timeout=40)


def token_file(shared: Path) -> Path:
    return shared / "relay" / "access-token"


def run_bootstrap(
    lab: NetnsLab, secret: str, token: Path, operators: list[str]
) -> tuple[int, list[dict[str, Any]]]:
    """The archive's bootstrap from the monitoring host, the spec on stdin."""
    spec = {"homeserver": HOMESERVER, "registration_shared_secret": secret,
            "token_file": str(token), "token_file_owner": [NOBODY, NOBODY],
            "operators": operators}  # fmt: skip
    result = lab.run(MON, relay_argv("bootstrap"), stdin=json.dumps(spec), check=False)
    assert secret not in result.stdout + result.stderr
    if token.exists():
        assert token.read_text() not in result.stdout + result.stderr
    assert result.stderr == "", result.stderr
    return result.returncode, [json.loads(line) for line in result.stdout.splitlines()]


def spawn_relay(lab: NetnsLab, name: str, port: int, env: dict[str, str]) -> Background:
    """The archive's relay as `nobody` on `port`, ready (GET /healthz answers 200)."""
    process = lab.spawn(MON, [*as_nobody(), *relay_argv("serve")], name=name,
                        env={ENV_LISTEN: f"0.0.0.0:{port}", **env})  # fmt: skip
    wait_until(lambda: not process.running() or http_ok(lab, MON, f"http://127.0.0.1:{port}/healthz"),
               timeout=10, what=process.output)  # fmt: skip
    assert process.running(), process.output()
    return process


@pytest.fixture(scope="module")
def bed() -> Iterator[Bed]:
    deployment = lab_deployment()
    pod = deployment.pod(POD)
    with ExitStack() as cleanup:
        shared = Path(tempfile.mkdtemp(prefix="unityplan-matrix-bed-"))
        cleanup.callback(shutil.rmtree, shared, True)
        shared.chmod(0o755)
        (shared / "relay").mkdir(mode=0o700)
        shutil.chown(shared / "relay", NOBODY, NOBODY)
        lab = cleanup.enter_context(NetnsLab([POD, MON], subnet=DEFAULT_SUBNET))
        lab.alias(POD, pod.service("postgres"), pod.service("matrix"), pod.matrix_server_name)
        lab.alias(MON, "matrix-relay", "monitoring-alertmanager")
        cluster = Cluster.create(host_networks=[str(DEFAULT_SUBNET)])
        cleanup.callback(cluster.remove)  # registered after the lab: undone before it
        postgres = lab.spawn(POD, cluster.server_argv(listen=str(lab.hosts[POD].address)),
                             name="postgres")  # fmt: skip
        cleanup.callback(postgres.stop)
        cluster.wait_ready(postgres.running)
        server = prepare(lab, deployment, POD, cluster)
        synapse = lab.spawn(POD, synapse_argv(lab.workdir / POD / "config" / "homeserver.yaml"),
                            name="synapse")  # fmt: skip
        cleanup.callback(synapse.stop)
        # Meanwhile Alertmanager: the program's config for a webhook to the relay.
        config = alertmanager_config(webhook_routing(f"{RELAY_URL}/alerts"))
        alertmanager = spawn_alertmanager(lab, shared, "alertmanager", config, 9093)
        wait_until(lambda: healthy(lab, POD) or not synapse.running(), timeout=90,
                   what=synapse.output)  # fmt: skip
        assert synapse.running(), synapse.output()
        wait_until(lambda: http_ok(lab, MON, "http://127.0.0.1:9093/-/ready"), timeout=20,
                   what=alertmanager.output)  # fmt: skip
        secret = server.rendered["registration_shared_secret"]
        operator = register(lab, MON, HOMESERVER, secret, "ops", secrets.token_hex(12))
        code, lines = run_bootstrap(lab, secret, token_file(shared), [operator.user_id])
        assert code == 0, lines
        operator.join(lines[-1]["room_id"])
        relay = spawn_relay(lab, "relay", 8080, {
            ENV_HOMESERVER: HOMESERVER, ENV_ROOM: f"#alerts:{pod.matrix_server_name}",
            ENV_TOKEN_FILE: str(token_file(shared)),
        })  # fmt: skip
        bed = Bed(lab, shared, secret, pod.matrix_server_name, operator, relay, alertmanager,
                  lines)  # fmt: skip
        yield bed
        if bed.latencies:
            print("\nalert -> room message:", ", ".join(
                f"{what} {seconds:.2f} s" for what, seconds in bed.latencies.items()))  # fmt: skip


def actions(lines: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(line["step"], line["action"]) for line in lines if "step" in line]


# --- bootstrap -------------------------------------------------------------------------------
def test_bootstrap_makes_bot_token_room_and_invitation(bed: Bed) -> None:
    lines = bed.first_bootstrap
    assert actions(lines) == [("user", "registered"), ("room", "created"), ("invite", "invited")]
    assert lines[-1] == {"user_id": bed.bot_id, "room_id": bed.room_id,
                         "room_alias": bed.room_alias, "changed": True}  # fmt: skip
    # The token file: 0600, owned by the relay's user; the token is the bot's.
    info = bed.token_file.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o600, NOBODY, NOBODY)
    bot = bed.bot()
    assert bot.ok("GET", f"{CLIENT}/account/whoami")["user_id"] == bed.bot_id
    # Not a server admin: the relay's token could not administer the homeserver.
    refused = bot.call("GET", f"/_synapse/admin/v2/users/{quote(bed.bot_id)}")
    assert refused.status == 403, refused
    # The room: found by its alias, invite-only, not encrypted, the operator got in.
    directory = bed.operator.ok("GET", f"{CLIENT}/directory/room/{quote(bed.room_alias)}")
    assert directory["room_id"] == bed.room_id
    state = {(e["type"], e["state_key"]): e["content"] for e in bed.operator.state(bed.room_id)}
    assert state[("m.room.join_rules", "")] == {"join_rule": "invite"}
    assert ("m.room.encryption", "") not in state
    assert state[("m.room.canonical_alias", "")]["alias"] == bed.room_alias
    assert state[("m.room.member", bed.operator.user_id)]["membership"] == "join"
    assert state[("m.room.member", bed.bot_id)]["membership"] == "join"


def bot_devices(bed: Bed) -> set[tuple[str, str | None]]:
    """The bot's devices (ID, display name): a login adds one."""
    devices = bed.bot().ok("GET", f"{CLIENT}/devices")["devices"]
    return {(device["device_id"], device.get("display_name")) for device in devices}


def test_second_bootstrap_changes_nothing(bed: Bed) -> None:
    before = (bed.token_file.read_bytes(), bed.token_file.stat().st_mtime_ns)
    devices = bot_devices(bed)
    state = sorted(e["event_id"] for e in bed.operator.state(bed.room_id))
    code, lines = bed.bootstrap()
    assert code == 0, lines
    assert actions(lines) == [("token", "kept"), ("room", "exists"), ("invite", "none (join)")]
    assert not any(line["changed"] for line in lines), lines
    assert (bed.token_file.read_bytes(), bed.token_file.stat().st_mtime_ns) == before
    assert bot_devices(bed) == devices
    assert sorted(e["event_id"] for e in bed.operator.state(bed.room_id)) == state


def test_bootstrap_with_a_wrong_registration_secret_says_so(bed: Bed) -> None:
    token = bed.shared / "elsewhere" / "access-token"  # no token yet: it must register
    code, lines = run_bootstrap(bed.lab, "not-the-secret", token, [])
    assert code == 1 and not token.exists()
    assert lines == [{"error": "BootstrapError: shared-secret registration refused (POST"
                      " /_synapse/admin/v1/register: 403 M_UNKNOWN: HMAC incorrect): is"
                      " registration_shared_secret the homeserver's?"}]  # fmt: skip


# --- through Alertmanager ---------------------------------------------------------------------
def test_alert_fires_and_resolves_in_the_room(bed: Bed) -> None:
    pod = lab_deployment().pod(POD)
    marker = f"marker-{secrets.token_hex(4)}"
    labels = {"alertname": "PostgresDown", "severity": "critical", "territory": POD,
              "pod": pod.pod.name, "host": pod.host, "job": "postgres"}  # fmt: skip
    annotations = {"summary": f"PostgreSQL of pod {pod.pod.name} ({POD}) is down {marker}",
                   "runbook": f"docker logs service-postgres-{POD} | tail -50"}  # fmt: skip
    posted = time.time()
    bed.post_alerts([{"labels": labels, "annotations": annotations}])
    [firing] = bed.wait_for(marker)
    bed.latencies["firing"] = firing["origin_server_ts"] / 1000 - posted
    content = firing["content"]
    assert content["msgtype"] == "m.text" and content["format"] == "org.matrix.custom.html"
    lines = content["body"].splitlines()
    assert lines[0] == f"\N{FIRE} FIRING: PostgresDown \N{MIDDLE DOT} host {pod.host}" \
                       f" \N{MIDDLE DOT} territory {POD}"  # fmt: skip
    assert lines[1] == (f"\N{FIRE} PostgresDown \N{MIDDLE DOT} severity critical \N{MIDDLE DOT}"
                        f" territory {POD} \N{MIDDLE DOT} pod {pod.pod.name} \N{MIDDLE DOT}"
                        f" host {pod.host}")  # fmt: skip
    assert f"  {annotations['summary']}" in lines
    assert f"  Runbook: {annotations['runbook']}" in lines
    assert f"<code>{annotations['runbook']}</code>" in content["formatted_body"]

    ended = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    posted = time.time()
    bed.post_alerts([{"labels": labels, "annotations": annotations, "endsAt": ended}])
    resolved = [e for e in bed.wait_for(marker, count=2) if e["event_id"] != firing["event_id"]]
    assert len(resolved) == 1, resolved
    bed.latencies["resolved"] = resolved[0]["origin_server_ts"] / 1000 - posted
    assert resolved[0]["content"]["body"].startswith(
        "\N{WHITE HEAVY CHECK MARK} RESOLVED: PostgresDown"
    )
    assert "  Resolved " in resolved[0]["content"]["body"]
    time.sleep(1.5)  # group_interval 1 s: a duplicate would show by now
    assert len(bed.with_marker(marker)) == 2
    delivered = [line for line in bed.relay.output().splitlines() if "delivered" in line]
    assert any("delivered firing notification (1 alert, PostgresDown)" in x for x in delivered)
    assert any("delivered resolved notification (1 alert, PostgresDown)" in x for x in delivered)
    relay_ms = [float(line.rsplit(" in ", 1)[1].split()[0]) for line in delivered[-2:]]
    bed.latencies["of which the relay (webhook in -> event stored)"] = max(relay_ms) / 1000


# --- the relay's own behaviour ----------------------------------------------------------------
def test_a_retried_webhook_posts_once(bed: Bed) -> None:
    marker = f"retry-{secrets.token_hex(4)}"
    body = payload(alert(summary=marker))
    replies = [bed.webhook(body), bed.webhook(body),
               bed.webhook(json.dumps(body, sort_keys=True, indent=1))]  # fmt: skip
    assert [r.status for r in replies] == [200, 200, 200], replies
    assert len({r.json["event_id"] for r in replies}) == 1
    assert len(bed.wait_for(marker)) == 1
    time.sleep(0.3)
    assert len(bed.with_marker(marker)) == 1


@pytest.mark.parametrize(
    ("path", "body", "status"),
    [("/alerts", "not json", 400),
     ("/alerts", {"version": "3", "status": "firing", "alerts": []}, 400),
     ("/alerts", {"version": "4", "status": "firing", "alerts": [{"status": "maybe"}]}, 400),
     ("/elsewhere", {"version": "4"}, 404)],
    ids=["not-json", "version-3", "bad-status", "wrong-path"],
)  # fmt: skip
def test_requests_that_are_not_notifications_get_4xx(
    bed: Bed, path: str, body: Any, status: int
) -> None:
    # 4xx: Alertmanager does not retry what cannot succeed.
    count = len(bed.bot_messages())
    reply = call(bed.lab, MON, "POST", f"http://127.0.0.1:8080{path}", body)
    assert reply.status == status, reply
    assert len(bed.bot_messages()) == count


def test_healthz_and_the_healthcheck_command(bed: Bed) -> None:
    health = call(bed.lab, MON, "GET", "http://127.0.0.1:8080/healthz").json
    assert health["status"] == "ok" and health["room_id"] == bed.room_id
    assert health["delivered"] >= 1
    healthcheck = [*as_nobody(), *relay_argv("healthcheck")]
    result = bed.lab.run(MON, healthcheck, env={ENV_LISTEN: "0.0.0.0:8080"}, check=False)
    assert result.returncode == 0, result.stderr
    down = bed.lab.run(MON, [*healthcheck, "--url", "http://127.0.0.1:8099/healthz"], check=False)
    assert down.returncode == 1 and "unhealthy" in down.stderr


def test_wrong_token_answers_5xx_alertmanager_retries_and_a_fixed_token_delivers_once(
    bed: Bed,
) -> None:
    # A second relay and Alertmanager: the relay's access token is wrong, and its webhook
    # wants a bearer token, which Alertmanager sends from a file (http_config).
    wrong = f"syt_{secrets.token_hex(16)}"
    webhook_secret = secrets.token_hex(16)
    directory = bed.shared / "relay-2"
    directory.mkdir(mode=0o700)
    shutil.chown(directory, NOBODY, NOBODY)
    token = secret_file(directory / "access-token", wrong)
    relay = bed.spawn_relay("relay-2", token, 8081, **{
        ENV_WEBHOOK_TOKEN_FILE: str(secret_file(directory / "webhook-token", webhook_secret)),
    })  # fmt: skip
    marker = f"wrong-{secrets.token_hex(4)}"
    direct = payload(alert(summary=f"direct {marker}"))
    assert bed.webhook(direct, port=8081).status == 401
    assert bed.webhook(direct, port=8081, token="not-it").status == 401
    refused = bed.webhook(direct, port=8081, token=webhook_secret)
    assert refused.status == 502, refused
    expected = (f"delivery failed, answering 502 so Alertmanager retries: the homeserver refused"
                f" the access token in {token} (401 M_UNKNOWN_TOKEN")  # fmt: skip
    assert expected in relay.output()
    assert "refused the access token" in refused.json["error"]
    unauthorised = relay.output().count("missing or wrong bearer token")
    assert unauthorised == 2

    config = alertmanager_config(webhook_routing(f"{RELAY_URL.rsplit(':', 1)[0]}:8081/alerts"))
    credentials = secret_file(bed.shared / "alertmanager-2-secrets" / "webhook-token",
                              webhook_secret)  # fmt: skip
    [webhook] = [r for r in config["receivers"] if "webhook_configs" in r]
    webhook["webhook_configs"][0]["http_config"] = {
        "authorization": {"type": "Bearer", "credentials_file": str(credentials)}
    }
    manager = spawn_alertmanager(bed.lab, bed.shared, "alertmanager-2", config, 9094)
    wait_until(lambda: http_ok(bed.lab, MON, "http://127.0.0.1:9094/-/ready"), timeout=20,
               what=manager.output)  # fmt: skip
    bed.post_alerts([{"labels": {"alertname": "RedisDown", "territory": POD},
                      "annotations": {"summary": f"via Alertmanager {marker}"}}], port=9094)  # fmt: skip
    wait_until(lambda: relay.output().count(expected) >= 3, timeout=WAIT,
               what=lambda: f"Alertmanager retrying:\n{relay.output()}\n{manager.output()}")  # fmt: skip
    # Alertmanager's bearer token was right: no refusal beyond the two direct ones.
    assert relay.output().count("missing or wrong bearer token") == unauthorised
    assert bed.with_marker(marker) == []
    assert wrong not in relay.output() and webhook_secret not in relay.output()

    secret_file(token, bed.token_file.read_text())  # e.g. the bootstrap rerun: no restart
    [delivered] = bed.wait_for(f"via Alertmanager {marker}", log=relay)
    assert delivered["content"]["body"].startswith("\N{FIRE} FIRING: RedisDown")
    time.sleep(2)  # two group intervals: a second delivery would show by now
    assert len(bed.with_marker(marker)) == 1


def test_relay_joins_a_room_it_was_invited_to(bed: Bed) -> None:
    room = bed.operator.ok("POST", f"{CLIENT}/createRoom",
                           {"preset": "private_chat", "invite": [bed.bot_id]})["room_id"]  # fmt: skip
    relay = bed.spawn_relay("relay-3", bed.token_file, 8082, **{ENV_ROOM: room})
    marker = f"invited-{secrets.token_hex(4)}"
    reply = bed.webhook(payload(alert(summary=marker)), port=8082)
    assert reply.status == 200, relay.output()
    assert len(bed.wait_for(marker, room_id=room, log=relay)) == 1
    assert f"joined {room} ({room})" in relay.output()
    # SIGTERM (docker stop; the relay is PID 1 in its container) ends it cleanly at once.
    started = time.monotonic()
    assert relay.stop() == 0, relay.output()
    assert time.monotonic() - started < 2
    assert relay.output().rstrip().endswith("stopped")


def test_a_lost_token_file_is_reissued_and_picked_up_without_restart(bed: Bed) -> None:
    old = bed.token_file.read_text()
    bed.token_file.unlink()
    code, lines = bed.bootstrap()
    assert code == 0, lines
    assert actions(lines) == [("user", "exists"), ("token", "issued"), ("room", "exists"),
                              ("invite", "none (join)")]  # fmt: skip
    assert lines[-1]["changed"] is True and bed.token_file.read_text() != old
    assert (DEVICE_ID, "alert relay") in bot_devices(bed)
    marker = f"reissued-{secrets.token_hex(4)}"
    assert bed.webhook(payload(alert(summary=marker))).status == 200
    assert len(bed.wait_for(marker)) == 1
    code, lines = bed.bootstrap()
    assert code == 0 and lines[-1]["changed"] is False, lines
    assert bed.token_file.read_text() not in bed.relay.output()


def test_a_burst_beyond_synapses_rate_limit_still_arrives(bed: Bed) -> None:
    # Synapse's default rc_message (the program sets none): 10 messages, then 1 per 5 s per
    # user. The relay waits out the 429's retry_after_ms within its send deadline.
    marker = f"burst-{secrets.token_hex(4)}"
    sent, limited_after = 0, None
    for i in range(15):
        started = time.monotonic()
        reply = bed.webhook(payload(alert(summary=f"{marker} #{i:02d}")))
        assert reply.status == 200, (reply, bed.relay.output())
        sent += 1
        if "rate-limited by the homeserver; retrying" in bed.relay.output():
            limited_after = time.monotonic() - started
            break
    assert limited_after is not None, f"no 429 in {sent} messages"
    bed.latencies[f"message {sent} of a burst (429, waited out)"] = limited_after
    assert limited_after < 20
    bodies = [e["content"]["body"] for e in bed.with_marker(marker)]
    assert len(bodies) == sent
    assert [f"{marker} #{i:02d}" in body for i, body in enumerate(bodies)] == [True] * sent
