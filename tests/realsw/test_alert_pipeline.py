"""The whole alert path, real software end to end: PostgreSQL stops, and its alert arrives
by email; it starts again, and the resolve arrives.

PostgreSQL -> prometheus-postgres-exporter -> Prometheus (the generated scrape config and
the alert rules) -> Alertmanager (the rendered dev routing) -> SMTP sink in MailHog's
place (tests/support/monitoring_bed.py: intervals 1 s, `for` 2 s, group_wait and
group_interval 1 s). Latencies are from the stop (start) to the sink having the whole mail.
"""

from __future__ import annotations

import time
from datetime import datetime

import pytest

from tests.support.monitoring_bed import ALERTMANAGER, MonitoringBed, Received, shared_bed
from tests.support.netns import wait_until
from unityplan_infra.render.alertmanager import DEV_RECIPIENT, DEV_SENDER

ALERT = "PostgresDown"
FIRING_WITHIN = 15.0  # s; expected ~5: scrape 1 + evaluation 1 + for 2 + group_wait 1
RESOLVED_WITHIN = 15.0  # s; expected ~3: restart + scrape 1 + evaluation 1 + group_interval 1


@pytest.fixture
def bed(request: pytest.FixtureRequest) -> MonitoringBed:
    return shared_bed(request)


def mails(bed: MonitoringBed, since: float, status: str) -> list[Received]:
    """Mails about ALERT with `status` ("FIRING" or "RESOLVED") that arrived after `since`."""
    return [each for each in bed.received(since) if each.kind == "smtp"
            and each.subject.startswith(f"[{status}") and ALERT in each.subject]  # fmt: skip


def timestamp(text: str) -> float:
    """Seconds since the epoch of an RFC 3339 time as Prometheus and Alertmanager print it."""
    whole, _, fraction = text.rstrip("Z").partition(".")
    seconds = datetime.fromisoformat(whole + "+00:00").timestamp()
    return seconds + (float(f"0.{fraction}") if fraction else 0.0)


@pytest.mark.timeout(120)
def test_bed_runs_the_generated_config_and_routing(bed: MonitoringBed) -> None:
    bed.wait_healthy()
    jobs = {target["labels"]["job"] for target in bed.targets()}
    assert jobs == {"prometheus", "postgres", "redis", "node"}
    postgres = next(t for t in bed.targets() if t["labels"]["job"] == "postgres")
    assert postgres["labels"]["territory"] == "dk" and postgres["labels"]["pod"] == "denmark"
    managers = bed.prometheus("/api/v1/alertmanagers")["activeAlertmanagers"]
    assert [m["url"] for m in managers] == [f"http://{ALERTMANAGER}/api/v2/alerts"]
    rules = [rule["name"] for group in bed.prometheus("/api/v1/rules")["groups"]
             for rule in group["rules"] if rule["type"] == "alerting"]  # fmt: skip
    assert ALERT in rules
    status = bed.alertmanager("/api/v2/status")
    assert "dev-mailhog:1025" in status["config"]["original"]
    print(f"\nmonitoring bed started in {bed.started_in:.1f} s; {len(rules)} alert rules")


@pytest.mark.timeout(120)
def test_postgres_down_mails_firing_then_resolved(bed: MonitoringBed) -> None:
    bed.wait_healthy()
    stopped = time.time()
    bed.stop_postgres()
    try:
        wait_until(lambda: bool(mails(bed, stopped, "FIRING")), timeout=FIRING_WITHIN + 5,
                   interval=0.1, what=lambda: f"a FIRING mail; sink has {bed.received(stopped)};"
                   f" Prometheus alerts {bed.prometheus_alerts()}\n{bed.log('alertmanager')}")
        firing = mails(bed, stopped, "FIRING")[0]
        prometheus_alert = next(a for a in bed.prometheus_alerts()
                                if a["labels"]["alertname"] == ALERT)  # fmt: skip
        manager_alert = next(a for a in bed.alertmanager("/api/v2/alerts")
                             if a["labels"]["alertname"] == ALERT)  # fmt: skip
    finally:
        started = time.time()
        bed.start_postgres()
    wait_until(lambda: bool(mails(bed, started, "RESOLVED")), timeout=RESOLVED_WITHIN + 5,
               interval=0.1, what=lambda: f"a RESOLVED mail; sink has {bed.received(started)}")
    resolved = mails(bed, started, "RESOLVED")[0]

    fire_latency, resolve_latency = firing.at - stopped, resolved.at - started
    pending = timestamp(prometheus_alert["activeAt"]) - stopped
    fired = timestamp(manager_alert["startsAt"]) - stopped
    print(f"\nPostgreSQL stopped -> FIRING mail: {fire_latency:.2f} s (Prometheus pending at"
          f" {pending:.2f} s, firing at {fired:.2f} s); started -> RESOLVED mail:"
          f" {resolve_latency:.2f} s")
    assert fire_latency < FIRING_WITHIN
    assert resolve_latency < RESOLVED_WITHIN
    # `for` held it back: firing no earlier than 2 s after pending.
    assert fired - pending >= 2.0 - 0.05, (pending, fired)

    for mail in (firing, resolved):
        assert mail.record["mail_from"] == DEV_SENDER
        assert mail.record["rcpt_to"] == [DEV_RECIPIENT]
        assert mail.record["auth"] is None  # MailHog: no AUTH
        assert mail.message["To"] == DEV_RECIPIENT
    # Grouped by alertname, host and territory: the subject's group values, then the other
    # common labels (pod, job, ...).
    assert firing.subject.startswith(f"[FIRING:1] {ALERT} local dk ("), firing.subject
    assert resolved.subject.startswith(f"[RESOLVED] {ALERT} local dk ("), resolved.subject
    assert "denmark" in firing.subject and "denmark" in firing.text()
    assert manager_alert["labels"]["territory"] == "dk"
    assert manager_alert["labels"]["cluster"] == "unityplan-central"  # external label

    # One notification each way: nothing repeated, nothing else sent.
    wait_until(lambda: not bed.alertmanager("/api/v2/alerts"), timeout=10, what="alert gone")
    assert [m.subject for m in bed.received(stopped)] == [firing.subject, resolved.subject]
    bed.wait_healthy()
