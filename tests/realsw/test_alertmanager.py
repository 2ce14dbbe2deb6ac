"""The rendered Alertmanager config against Debian's Alertmanager 0.25 and its amtool.

- `amtool check-config` accepts the dev default and an email + webhook routing with SMTP
  auth (`auth_password_file`), and rejects broken ones (negative controls, including a
  misspelt field: so its acceptance of `auth_password_file` means the field is known).
- `amtool config routes test`: which receivers each alert of the rule file reaches.
- A real `alertmanager`, running as `nobody` like the prom/alertmanager image, with alerts
  posted to its API: every inhibition of `INHIBITIONS` mutes exactly what it should (a
  target with the same `territory`/`host`, not another one, not one lacking the label),
  only the unmuted alerts are notified, one notification per group, by email (SMTP AUTH
  with the password read from the 0600 file) and by webhook.
"""

from __future__ import annotations

import copy
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.deployments import multi_host_deployment
from tests.support.monitoring_bed import (
    FAST,
    Received,
    alertmanager_argv,
    http_json,
    http_ok,
    read_received,
    sink_argv,
    sink_env,
)
from tests.support.netns import Background, NetnsLab, wait_until
from tests.support.tools import run_checker
from unityplan_infra.render.alertmanager import (
    EMAIL,
    GROUP_BY,
    INHIBITIONS,
    UNROUTED,
    WEBHOOK,
    AlertRouting,
    EmailReceiver,
    alertmanager_config,
    alertmanager_secret_files,
    dev_routing,
    render_alertmanager_config,
)
from unityplan_infra.render.alerts import (
    HOST_DISK_FILLING_UP,
    POSTGRES_DOWN,
    POSTGRES_NEAR_MAX_CONNECTIONS,
    REDIS_MEMORY_NEAR_LIMIT,
    TARGET_DOWN,
    alert_rules,
)

AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
NOBODY = 65534  # the user of the prom/alertmanager image
HOST = "am"
SMTP_USER = "alertmanager"
SMTP_PASSWORD = "s3cret-not-in-the-config"
RECIPIENTS = ("ops@unityplan.test", "Oncall <oncall@unityplan.test>")
# Every alert of the rule file (multi-host: all groups), and those inhibitions name.
ALERT_NAMES = sorted(
    {rule["alert"] for group in alert_rules(multi_host_deployment())["groups"]
     for rule in group["rules"] if "alert" in rule}
    | {name for each in INHIBITIONS for name in (each.source, *each.targets)}
)  # fmt: skip


def full_routing(smarthost: str = "smtp.unityplan.test:587", require_tls: bool = True,
                 webhook: str = "http://matrix-relay:8080/alerts") -> AlertRouting:  # fmt: skip
    email = EmailReceiver(RECIPIENTS, "alertmanager@unityplan.test", smarthost,
                          SMTP_USER, SMTP_PASSWORD, require_tls=require_tls)  # fmt: skip
    return AlertRouting(email=email, webhook_url=webhook)


def amtool(*args: str) -> subprocess.CompletedProcess[str]:
    return run_checker([AMTOOL, *args])


def check_config(path: Path) -> subprocess.CompletedProcess[str]:
    return amtool("check-config", str(path))


def write(tmp_path: Path, config: dict[str, Any] | str, name: str = "alertmanager.yml") -> Path:
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else yaml.safe_dump(config))
    return path


def test_inhibitions_name_alerts_of_the_rule_file() -> None:
    rules = {rule["alert"] for group in alert_rules(multi_host_deployment())["groups"]
             for rule in group["rules"] if "alert" in rule}  # fmt: skip
    named = {name for each in INHIBITIONS for name in (each.source, *each.targets)}
    assert named <= rules, named - rules


# --- amtool check-config -----------------------------------------------------------------
@pytest.mark.parametrize("routing", [dev_routing(), full_routing(), AlertRouting()],
                         ids=["dev-mailhog", "email-auth-and-webhook", "no-channel"])  # fmt: skip
def test_rendered_config_passes_amtool(tmp_path: Path, routing: AlertRouting) -> None:
    text = render_alertmanager_config(routing)
    result = check_config(write(tmp_path, text))
    assert result.returncode == 0, result.stdout
    assert "SUCCESS" in result.stdout
    assert f" - {len(INHIBITIONS)} inhibit rules" in result.stdout
    assert f" - {1 + len(routing.receivers)} receivers" in result.stdout
    assert SMTP_PASSWORD not in text
    if routing.email is not None and routing.email.password is not None:
        assert "auth_password_file: /etc/alertmanager/secrets/smtp-password" in text
        assert alertmanager_secret_files(routing) == {"smtp-password": SMTP_PASSWORD}


def _misspelt_password_file(config: dict[str, Any]) -> None:
    email = config["receivers"][1]["email_configs"][0]
    email["auth_password_fil"] = email.pop("auth_password_file")


def _undefined_receiver(config: dict[str, Any]) -> None:
    config["receivers"] = [r for r in config["receivers"] if r["name"] != WEBHOOK]


def _broken_matcher(config: dict[str, Any]) -> None:
    config["inhibit_rules"][0]["target_matchers"].append('territory=~"(unclosed"')


def _password_and_file(config: dict[str, Any]) -> None:
    config["global"] = {"smtp_auth_password": "x", "smtp_auth_password_file": "/x"}


@pytest.mark.parametrize(
    ("breakage", "message"),
    [(_misspelt_password_file, "field auth_password_fil not found"),
     (_undefined_receiver, 'undefined receiver "webhook" used in route'),
     (_broken_matcher, "error parsing regexp"),
     (_password_and_file, "at most one of smtp_auth_password & smtp_auth_password_file")],
    ids=["misspelt-field", "undefined-receiver", "broken-regex", "password-twice"],
)  # fmt: skip
def test_amtool_rejects_a_broken_config(tmp_path: Path, breakage: Any, message: str) -> None:
    # Negative controls: the same check fails on a broken variant of a passing config.
    config = copy.deepcopy(alertmanager_config(full_routing()))
    breakage(config)
    result = check_config(write(tmp_path, config))
    assert result.returncode != 0, result.stdout
    assert "FAILED" in result.stdout and message in result.stdout, result.stdout


# --- amtool config routes test -----------------------------------------------------------
@pytest.mark.parametrize(
    ("routing", "receivers"),
    [(dev_routing(), EMAIL), (full_routing(), f"{EMAIL},{WEBHOOK}"),
     (AlertRouting(webhook_url="http://relay:8080/"), WEBHOOK), (AlertRouting(), UNROUTED)],
    ids=["dev", "email-and-webhook", "webhook-only", "no-channel"],
)  # fmt: skip
def test_every_alert_reaches_every_configured_channel(
    tmp_path: Path, routing: AlertRouting, receivers: str
) -> None:
    path = write(tmp_path, render_alertmanager_config(routing))
    for name in [*ALERT_NAMES, "SomethingNew"]:
        for labels in (["territory=no", "job=postgres"], ["host=fsn1-a"], []):
            result = amtool("config", "routes", "test", f"--config.file={path}",
                            f"--verify.receivers={receivers}", f"alertname={name}", *labels)  # fmt: skip
            assert result.returncode == 0, (name, labels, result.stdout)
            assert result.stdout.strip().splitlines()[-1] == receivers  # after a warning


def test_routes_test_fails_on_a_wrong_expectation(tmp_path: Path) -> None:
    # Negative control for the test above: --verify.receivers does fail.
    path = write(tmp_path, render_alertmanager_config(dev_routing()))
    result = amtool("config", "routes", "test", f"--config.file={path}",
                    f"--verify.receivers={EMAIL},{WEBHOOK}", "alertname=PostgresDown")  # fmt: skip
    assert result.returncode != 0, result.stdout


# --- the renderer's own refusals ------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"username": "u"}, "go together"),
     ({"password": "p"}, "go together"),
     ({"username": "u", "password": "p", "require_tls": False}, "in clear"),
     ({"username": "u", "password": "p\n"}, "newline"),
     ({"to": ("a@x.test, b@x.test",)}, "not one email address"),
     ({"to": "a@x.test"}, "not one string"),
     ({"to": ()}, "at least one recipient"),
     ({"smarthost": "smtp.x.test"}, "not host:port")],
)  # fmt: skip
def test_email_receiver_refuses(kwargs: dict[str, Any], message: str) -> None:
    fields: dict[str, Any] = {"to": ("a@x.test",), "sender": "am@x.test",
                              "smarthost": "smtp.x.test:587"} | kwargs  # fmt: skip
    with pytest.raises(ValueError, match=message):
        EmailReceiver(**fields)


def test_credentials_without_tls_are_fine_on_loopback_and_port_465() -> None:
    EmailReceiver(("a@x.test",), "am@x.test", "localhost:25", "u", "p", require_tls=False)
    EmailReceiver(("a@x.test",), "am@x.test", "smtp.x.test:465", "u", "p", require_tls=False)
    assert "p" not in repr(EmailReceiver(("a@x.test",), "am@x.test", "h:25", "u", "p"))


# --- a real Alertmanager ------------------------------------------------------------------
@dataclass
class Manager:
    lab: NetnsLab
    workdir: Path
    routing: AlertRouting
    process: Background

    def api(self, path: str, data: Any = None) -> Any:
        return http_json(self.lab, HOST, f"http://127.0.0.1:9093{path}", data=data)

    def received(self) -> list[Received]:
        return read_received(self.workdir / "sink")


@pytest.fixture(scope="module")
def manager(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Manager]:
    # Not under pytest's root-only tmp dir: `nobody` must reach the config.
    workdir = Path(tempfile.mkdtemp(prefix="unityplan-am-"))
    workdir.chmod(0o755)
    try:
        routing = replace(full_routing("localhost:2525", require_tls=False,
                                       webhook="http://localhost:8080/alerts"), timing=FAST)  # fmt: skip
        secrets_dir = workdir / "secrets"
        secrets_dir.mkdir(mode=0o700)
        for name, content in alertmanager_secret_files(routing).items():
            (secrets_dir / name).write_text(content)
            (secrets_dir / name).chmod(0o600)
            shutil.chown(secrets_dir / name, NOBODY, NOBODY)
        shutil.chown(secrets_dir, NOBODY, NOBODY)
        config = workdir / "alertmanager.yml"
        config.write_text(render_alertmanager_config(routing, secrets_dir=str(secrets_dir)))
        (workdir / "data").mkdir()
        shutil.chown(workdir / "data", NOBODY, NOBODY)
        (workdir / "sink").mkdir()
        # The sink's own copy: a stray byte in the rendered file must fail the login.
        (workdir / "sink-password").write_text(SMTP_PASSWORD)
        with NetnsLab([HOST], workdir=tmp_path_factory.mktemp("am-lab")) as lab:
            sink = lab.spawn(HOST, sink_argv(workdir / "sink", "127.0.0.1:2525",
                                             http="127.0.0.1:8080",
                                             auth=(SMTP_USER, workdir / "sink-password")),
                             name="sink", env=sink_env())  # fmt: skip
            drop = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--"]
            process = lab.spawn(HOST, [*drop, *alertmanager_argv(config, workdir / "data")],
                                name="alertmanager")  # fmt: skip
            sink.wait_for_output("sink ready")
            wait_until(lambda: http_ok(lab, HOST, "http://127.0.0.1:9093/-/ready"), timeout=20,
                       what=process.output)  # fmt: skip
            yield Manager(lab, workdir, routing, process)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _alert(labels: dict[str, str]) -> dict[str, Any]:
    return {"labels": labels, "annotations": {"summary": "posted by the test"}}


def inhibition_cases() -> tuple[list[dict[str, str]], set[str]]:
    """Alerts exercising every inhibition (each with a unique `id`), and the ids of those
    that must be muted. Label values are unique per inhibition, so cases do not meet."""
    alerts: list[dict[str, str]] = []
    muted: set[str] = set()

    def add(labels: dict[str, str], mute: bool = False) -> None:
        labels["id"] = f"a{len(alerts):03d}z"  # no id is a substring of another
        alerts.append(labels)
        if mute:
            muted.add(labels["id"])

    for i, rule in enumerate(INHIBITIONS):
        source_job = {"job": rule.source_jobs[0]} if rule.source_jobs else {}
        target_job = {"job": rule.target_jobs[0]} if rule.target_jobs else {}
        same = {label: f"r{i}-same" for label in rule.equal}
        add({"alertname": rule.source, **source_job, **same})
        add({"alertname": rule.source, **source_job})  # lacks the `equal` labels
        for j, target in enumerate(rule.targets):
            add({"alertname": target, **target_job, **same}, mute=True)
            # Per target: PostgresDown of one pod would rightly mute the other target,
            # PostgresNearMaxConnections, of the same pod (the next inhibition).
            add({"alertname": target, **target_job, **{k: f"r{i}-{j}-other" for k in same}})
            # Empty == empty in Alertmanager's `equal`: without the rule's presence
            # matchers the label-less source above would mute this one.
            add({"alertname": target, **target_job})
    # Not a cause: TargetDown of another job does not mute the pod's service alerts.
    add({"alertname": TARGET_DOWN, "job": "redis", "territory": "x-redis"})
    add({"alertname": "PostgresDown", "territory": "x-redis"})
    # Grouping: two instances of one alert on one pod are one notification.
    add({"alertname": "PostgresNearMaxConnections", "territory": "grp", "instance": "one"})
    add({"alertname": "PostgresNearMaxConnections", "territory": "grp", "instance": "two"})
    return alerts, muted


def differences(states: dict[str, tuple[str, list[str]]], expected: dict[str, str],
                alerts: list[dict[str, str]]) -> list[str]:  # fmt: skip
    by_id = {labels["id"]: labels for labels in alerts}
    return [f"{by_id[id_]}: {states.get(id_)} expected {state}"
            for id_, state in expected.items() if states.get(id_, ("",))[0] != state]  # fmt: skip


def group_key(labels: dict[str, str]) -> tuple[str, ...]:
    return tuple(labels.get(name, "") for name in GROUP_BY)


@pytest.mark.timeout(90)
def test_inhibition_grouping_and_delivery(manager: Manager) -> None:
    uid = Path(f"/proc/{manager.process.pid}/status").read_text().split("Uid:")[1].split()[0]
    assert uid == str(NOBODY)
    alerts, muted = inhibition_cases()
    manager.api("/api/v2/alerts", data=[_alert(labels) for labels in alerts])

    def states() -> dict[str, tuple[str, list[str]]]:
        return {a["labels"]["id"]: (a["status"]["state"], a["status"]["inhibitedBy"])
                for a in manager.api("/api/v2/alerts")}  # fmt: skip

    expected = {labels["id"]: "suppressed" if labels["id"] in muted else "active"
                for labels in alerts}  # fmt: skip
    wait_until(lambda: {k: v[0] for k, v in states().items()} == expected, timeout=10,
               what=lambda: f"differ: {differences(states(), expected, alerts)}")  # fmt: skip
    assert all(inhibitors for state, inhibitors in states().values() if state == "suppressed")
    assert len(muted) == sum(len(rule.targets) for rule in INHIBITIONS)

    active = [labels for labels in alerts if labels["id"] not in muted]
    groups = {group_key(labels) for labels in active}

    def delivered(kind: str) -> list[Received]:
        return [each for each in manager.received() if each.kind == kind]

    wait_until(lambda: len(delivered("webhook")) >= len(groups)
               and len(delivered("smtp")) >= len(groups), timeout=30,
               what=lambda: f"{len(groups)} notifications each way; got"
               f" {len(delivered('webhook'))} webhooks, {len(delivered('smtp'))} mails;"
               f" auth {[r.record for r in manager.received() if r.kind == 'smtp-auth']}"
               f"\n{manager.process.output()[-3000:]}")  # fmt: skip

    # Webhook: one payload per group, with exactly the unmuted alerts.
    hooks = [each.record for each in delivered("webhook")]
    assert {hook["path"] for hook in hooks} == {"/alerts"}
    assert len(hooks) == len(groups)
    notified = {a["labels"]["id"]: hook["body"]["groupLabels"]
                for hook in hooks for a in hook["body"]["alerts"]}  # fmt: skip
    assert set(notified) == {labels["id"] for labels in active}
    for hook in hooks:
        body = hook["body"]
        assert body["receiver"] == WEBHOOK and body["status"] == "firing"
        assert set(body["groupLabels"]) <= {*GROUP_BY}
        assert len({group_key(a["labels"]) for a in body["alerts"]}) == 1
    grouped = next(h["body"] for h in hooks if h["body"]["groupLabels"].get("territory") == "grp")
    assert len(grouped["alerts"]) == 2

    # Email: one per group, to both recipients, after AUTH with the file's password.
    mails = delivered("smtp")
    assert len(mails) == len(groups)
    for mail in mails:
        assert mail.record["rcpt_to"] == ["ops@unityplan.test", "oncall@unityplan.test"]
        assert mail.record["auth"] == {"mechanism": "PLAIN", "username": SMTP_USER}
        assert mail.subject.startswith("[FIRING:")
    text = "\n".join(mail.text() for mail in mails)
    assert all(labels["id"] in text for labels in active)
    assert not [id_ for id_ in muted if id_ in text]
    logins = [r.record for r in manager.received() if r.kind == "smtp-auth"]
    assert logins and all(login["ok"] for login in logins), logins
    print(f"\n{len(alerts)} alerts posted, {len(muted)} inhibited;"
          f" {len(groups)} groups -> {len(hooks)} webhooks, {len(mails)} mails")


@pytest.mark.timeout(30)
def test_the_sink_refuses_a_wrong_smtp_password(manager: Manager) -> None:
    # Negative control for the AUTH assertions above: the sink does check the password.
    client = ("import smtplib, sys\n"
              "s = smtplib.SMTP('127.0.0.1', 2525)\n"
              "try:\n"
              "    s.login(sys.argv[1], sys.argv[2])\n"
              "except smtplib.SMTPAuthenticationError as e:\n"
              "    print('refused', e.smtp_code); sys.exit(3)\n")  # fmt: skip
    python = sys.executable
    wrong = manager.lab.run(HOST, [python, "-c", client, SMTP_USER, "not-it"], check=False)
    assert wrong.returncode == 3 and "refused 535" in wrong.stdout, wrong.stdout + wrong.stderr
    right = manager.lab.run(HOST, [python, "-c", client, SMTP_USER, SMTP_PASSWORD], check=False)
    assert right.returncode == 0, right.stdout + right.stderr


@pytest.mark.timeout(60)
def test_a_host_down_notifies_its_cause_not_its_consequences(manager: Manager) -> None:
    """The policy, spelt out: host fsn1 is cut off. Its node exporter's TargetDown is
    notified; the pod targets on it, their pod's service alerts and its disk alert are
    muted. Host hel1's node exporter answers: its alerts are all notified."""
    where = {"host": "fsn1", "territory": "dk"}
    cause = {"alertname": TARGET_DOWN, "job": "node", "host": "fsn1"}
    consequences = [{"alertname": TARGET_DOWN, "job": "postgres", **where},
                    {"alertname": TARGET_DOWN, "job": "redis", **where},
                    {"alertname": POSTGRES_DOWN, "territory": "dk"},
                    {"alertname": POSTGRES_NEAR_MAX_CONNECTIONS, "territory": "dk"},
                    {"alertname": REDIS_MEMORY_NEAR_LIMIT, "territory": "dk"},
                    {"alertname": HOST_DISK_FILLING_UP, "host": "fsn1"}]  # fmt: skip
    elsewhere = [{"alertname": TARGET_DOWN, "job": "nats", "host": "hel1", "territory": "se"},
                 {"alertname": POSTGRES_DOWN, "territory": "se"},
                 {"alertname": REDIS_MEMORY_NEAR_LIMIT, "territory": "se"},
                 {"alertname": HOST_DISK_FILLING_UP, "host": "hel1"}]  # fmt: skip
    for n, labels in enumerate([cause, *consequences, *elsewhere]):
        labels["scenario"] = f"s{n:02d}"
    since = time.time()
    manager.api("/api/v2/alerts", data=[_alert(x) for x in [cause, *consequences, *elsewhere]])
    expected_notified = {x["scenario"] for x in [cause, *elsewhere]}

    def notified() -> set[str]:
        return {alert["labels"]["scenario"] for each in manager.received()
                if each.kind == "webhook" and each.at >= since
                for alert in each.record["body"]["alerts"] if "scenario" in alert["labels"]}  # fmt: skip

    wait_until(lambda: notified() >= expected_notified, timeout=15,
               what=lambda: f"notified {sorted(notified())}, want {sorted(expected_notified)}")
    time.sleep(1.5)  # one more group_wait/group_interval: nothing else arrives
    assert notified() == expected_notified
    states = {a["labels"]["scenario"]: a["status"]["state"]
              for a in manager.api("/api/v2/alerts") if "scenario" in a["labels"]}  # fmt: skip
    assert {s for s, state in states.items() if state == "suppressed"} == (
        {x["scenario"] for x in [cause, *consequences, *elsewhere]} - expected_notified
    )
