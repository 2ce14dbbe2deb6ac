"""A monitoring pipeline of real software, started once per test session.

One network namespace (`mon`) stands in for the single Docker host of the dev stack. In it
run, from Debian packages: PostgreSQL (tests/support/postgres.py) with
`prometheus-postgres-exporter`, `redis-server` with `prometheus-redis-exporter`,
`prometheus-node-exporter`, `prometheus` and `prometheus-alertmanager`; and a mail and
webhook sink (this module run as a script: `sink`), standing in for MailHog and a relay.

Prometheus runs the program's generated config (`render/prometheus.py`) for the dev
deployment, with the pods narrowed to the ones that run here (`dk`) and the jobs whose
exporter does not install here (nats, cadvisor) left out; its targets keep their
container names, resolved in the namespace's hosts file as Docker's network DNS would.
Prometheus evaluates the program's rule file (`render/alerts.py`) without its NATS group
(no NATS here) and with `for` 2 s (host alerts keep theirs: they would be about this
machine). Intervals are 1 s (2 s for postgres: SLOW_JOBS), Alertmanager's group_wait and
group_interval 1 s, so a state change reaches the sink in seconds. Alertmanager runs the
rendered dev routing (`render/alertmanager.py`: email to `dev-mailhog:1025`, no auth, no
TLS).

    @pytest.fixture
    def bed(request: pytest.FixtureRequest) -> MonitoringBed:
        return shared_bed(request)

`shared_bed` starts the bed on first use and stops it when pytest ends, so modules share
it (pytest's own session fixtures would need a conftest.py). A test that breaks something
puts it back (`stop_postgres` / `start_postgres`) and leaves no alert firing.
"""

from __future__ import annotations

import argparse
import base64
import copy
import email
import email.policy
import itertools
import json
import os
import secrets
import signal
import socketserver
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
import yaml

from tests.support.deployments import deployment_of
from tests.support.netns import DEFAULT_SUBNET, Background, NetnsLab, wait_until
from tests.support.postgres import Cluster as PgCluster
from tests.support.stackfile import stack_values
from unityplan_infra.render.alertmanager import (
    AlertRouting,
    Timing,
    dev_routing,
    render_alertmanager_config,
    split_smarthost,
)
from unityplan_infra.render.alerts import alert_rules
from unityplan_infra.render.prometheus import prometheus_config
from unityplan_infra.topology.plan import Deployment

REPO = Path(__file__).resolve().parents[2]
HOST = "mon"
POD = "dk"  # the pod whose services run in the bed (exporter ports are fixed: one pod)
SKIPPED_JOBS = ("nats", "cadvisor")  # no exporter installable here
SKIPPED_RULE_GROUPS = ("unityplan-nats",)
# Alerts about the machine running the tests keep their `for` (30 min and more): a CI
# runner's disk may be well filled and growing while the tests write.
SLOW_RULE_GROUPS = ("unityplan-host",)
INTERVAL = "1s"  # scrape and rule evaluation
# postgres_exporter (0.11 here, 0.16 in the image: cmd/postgres_exporter/server.go
# GetServer) sleeps 1 s under a lock after a failed ping: while PostgreSQL is down every
# scrape takes >= 1 s, so a 1 s timeout would show "exporter down" instead of pg_up 0.
SLOW_JOBS = {"postgres": ("2s", "1500ms")}  # job: (scrape_interval, scrape_timeout)
RULE_FOR = "2s"  # every rule's `for`, in the bed
FAST = Timing(group_wait=timedelta(seconds=1), group_interval=timedelta(seconds=1),
              repeat_interval=timedelta(hours=1))  # fmt: skip
ALERTMANAGER = "monitoring-alertmanager:9093"  # where the bed's Prometheus sends alerts
WEBHOOK_PORT = 8080  # the sink's HTTP side
PROMETHEUS_URL = "http://127.0.0.1:9090"
ALERTMANAGER_URL = "http://127.0.0.1:9093"
EXPORTER_ROLE = "exporter"


# --- the sink: SMTP and webhook receiver, run as `python -m tests.support.monitoring_bed sink`
@dataclass(frozen=True)
class Received:
    """One delivery the sink recorded: a mail (`kind` "smtp") or a webhook POST."""

    kind: str
    at: float  # time.time() when the sink had it all
    record: dict[str, Any]

    @property
    def message(self) -> EmailMessage:
        parsed = email.message_from_string(self.record["data"], policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    def text(self) -> str:
        """The mail's body parts, decoded and joined (the default template is HTML)."""
        parts = [part.get_content() for part in self.message.walk()
                 if part.get_content_maintype() == "text"]  # fmt: skip
        return "\n".join(str(part) for part in parts)


class _Recorder:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._sequence = itertools.count()
        self._lock = threading.Lock()

    def write(self, kind: str, record: dict[str, Any]) -> None:
        with self._lock:
            number = next(self._sequence)
        document = {"kind": kind, "at": time.time(), **record}
        temporary = self.directory / f".{number:06d}.tmp"
        temporary.write_text(json.dumps(document))
        temporary.rename(self.directory / f"{number:06d}-{kind}.json")  # whole, or not there


def read_received(directory: Path) -> list[Received]:
    """Everything the sink recorded in `directory`, in arrival order."""
    found = []
    for path in sorted(directory.glob("*.json")):
        record = json.loads(path.read_text())
        found.append(Received(record.pop("kind"), record.pop("at"), record))
    return found


class _SmtpHandler(socketserver.StreamRequestHandler):
    """Enough ESMTP for Go's net/smtp as Alertmanager drives it: EHLO, AUTH PLAIN/LOGIN
    (when the sink has credentials), MAIL, RCPT, DATA, RSET, NOOP, QUIT. No STARTTLS."""

    server: _SmtpServer

    def reply(self, line: str) -> None:
        self.wfile.write(line.encode() + b"\r\n")
        self.wfile.flush()

    def read_line(self) -> str:
        return self.rfile.readline(65536).decode("utf-8", "replace").rstrip("\r\n")

    def handle(self) -> None:
        sender: str | None = None
        recipients: list[str] = []
        auth: dict[str, Any] | None = None
        self.reply("220 sink ESMTP")
        while line := self.rfile.readline(65536):
            command = line.decode("utf-8", "replace").rstrip("\r\n")
            verb, _, argument = command.partition(" ")
            verb = verb.upper()
            if verb == "EHLO":
                extensions = ["AUTH PLAIN LOGIN"] if self.server.credentials else []
                lines = ["sink", *extensions, "8BITMIME"]
                for each in lines[:-1]:
                    self.reply(f"250-{each}")
                self.reply(f"250 {lines[-1]}")
            elif verb == "HELO":
                self.reply("250 sink")
            elif verb == "AUTH":
                auth = self.authenticate(argument)
                self.server.recorder.write("smtp-auth", auth)
                self.reply("235 2.7.0 accepted" if auth["ok"] else "535 5.7.8 bad credentials")
            elif verb == "MAIL":
                if self.server.credentials and not (auth and auth["ok"]):
                    self.reply("530 5.7.0 authentication required")
                    continue
                sender, recipients = _address(argument), []
                self.reply("250 ok")
            elif verb == "RCPT":
                recipients.append(_address(argument))
                self.reply("250 ok")
            elif verb == "DATA":
                if sender is None or not recipients:
                    self.reply("503 5.5.1 MAIL and RCPT first")
                    continue
                self.reply("354 end with <CRLF>.<CRLF>")
                data = self.read_data()
                self.server.recorder.write("smtp", {
                    "mail_from": sender, "rcpt_to": recipients, "data": data,
                    "auth": auth and {"mechanism": auth["mechanism"], "username": auth["username"]},
                })  # fmt: skip
                sender, recipients = None, []
                self.reply("250 ok: queued")
            elif verb in ("RSET", "NOOP"):
                if verb == "RSET":
                    sender, recipients = None, []
                self.reply("250 ok")
            elif verb == "QUIT":
                self.reply("221 bye")
                return
            else:
                self.reply("502 5.5.2 not implemented")

    def read_data(self) -> str:
        lines: list[str] = []
        while (line := self.rfile.readline(1 << 20)) not in (b".\r\n", b".\n", b""):
            text = line.decode("utf-8", "replace")
            lines.append(text[1:] if text.startswith("..") else text)  # dot-unstuffing
        return "".join(lines)

    def authenticate(self, argument: str) -> dict[str, Any]:
        mechanism, _, initial = argument.partition(" ")
        mechanism = mechanism.upper()
        if mechanism == "PLAIN":
            if not initial:
                self.reply("334 ")
                initial = self.read_line()
            _, username, password = _b64(initial).split("\0", 2)
        elif mechanism == "LOGIN":
            self.reply("334 " + base64.b64encode(b"Username:").decode())
            username = _b64(self.read_line())
            self.reply("334 " + base64.b64encode(b"Password:").decode())
            password = _b64(self.read_line())
        else:
            return {"mechanism": mechanism, "username": None, "ok": False}
        expected = self.server.credentials
        ok = expected is not None and (username, password) == expected
        # Never the password itself; its length shows a stray newline.
        return {"mechanism": mechanism, "username": username, "ok": ok,
                "password_length": len(password)}  # fmt: skip


class _SmtpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128  # the default 5 resets Alertmanager's burst of group flushes

    def __init__(
        self, address: tuple[str, int], recorder: _Recorder, credentials: tuple[str, str] | None
    ) -> None:
        super().__init__(address, _SmtpHandler)
        self.recorder = recorder
        self.credentials = credentials


class _WebhookHandler(BaseHTTPRequestHandler):
    server: _WebhookServer

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        try:
            document: Any = json.loads(body)
        except ValueError:
            document = body.decode("utf-8", "replace")
        self.server.recorder.write("webhook", {"path": self.path, "body": document})
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _WebhookServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], recorder: _Recorder) -> None:
        super().__init__(address, _WebhookHandler)
        self.recorder = recorder


def _address(argument: str) -> str:
    """The address of `FROM:<a@b> SIZE=1` / `TO:<a@b>`."""
    _, _, rest = argument.partition(":")
    return rest.strip().split(" ")[0].strip("<>")


def _b64(text: str) -> str:
    return base64.b64decode(text).decode("utf-8", "replace")


def _listen(value: str) -> tuple[str, int]:
    host, port = value.rsplit(":", 1)
    return host, int(port)


def sink_main(argv: Sequence[str]) -> int:
    parser = argparse.ArgumentParser(prog="sink", description="record mails and webhooks")
    parser.add_argument("--smtp", required=True, type=_listen, help="host:port")
    parser.add_argument("--http", required=True, type=_listen, help="host:port")
    parser.add_argument("--out", required=True, type=Path, help="directory for records")
    parser.add_argument("--auth-user", help="require SMTP AUTH as this user")
    parser.add_argument("--auth-password-file", type=Path, help="...with this password")
    args = parser.parse_args(argv)
    credentials = None
    if args.auth_user:
        credentials = (args.auth_user, args.auth_password_file.read_text())
    recorder = _Recorder(args.out)
    servers: list[socketserver.BaseServer] = [
        _SmtpServer(args.smtp, recorder, credentials), _WebhookServer(args.http, recorder),
    ]  # fmt: skip
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("sink ready", flush=True)
    stop.wait()
    return 0


def sink_argv(
    out: Path,
    smtp: str,
    http: str = f"0.0.0.0:{WEBHOOK_PORT}",
    auth: tuple[str, Path] | None = None,
) -> list[str]:
    """Command line of the sink (the repo's Python; run with `sink_env()`)."""
    argv = [sys.executable, "-m", "tests.support.monitoring_bed", "sink",
            "--smtp", smtp, "--http", http, "--out", str(out)]  # fmt: skip
    if auth is not None:
        argv += ["--auth-user", auth[0], "--auth-password-file", str(auth[1])]
    return argv


def sink_env() -> dict[str, str]:
    return {"PYTHONPATH": str(REPO)}


# --- shared helpers for processes in a namespace ------------------------------------------
def http_json(lab: NetnsLab, host: str, url: str, *, data: Any = None, timeout: float = 3) -> Any:
    """GET (or with `data`, POST as JSON) `url` from inside `host`; the decoded reply."""
    argv = ["curl", "-sS", "-f", "--max-time", str(timeout), url]
    stdin = None
    if data is not None:
        argv += ["-H", "Content-Type: application/json", "--data-binary", "@-"]
        stdin = json.dumps(data)
    result = lab.run(host, argv, stdin=stdin, timeout=timeout + 5)
    return json.loads(result.stdout) if result.stdout.strip() else None


def http_ok(lab: NetnsLab, host: str, url: str) -> bool:
    argv = ["curl", "-s", "-f", "-o", "/dev/null", "--max-time", "2", url]
    return lab.run(host, argv, check=False, timeout=10).returncode == 0


def alertmanager_argv(config: Path, storage: Path, listen: str = ":9093") -> list[str]:
    """Debian's Alertmanager, standalone: no HA cluster (its gossip and settling delay)."""
    return ["prometheus-alertmanager", f"--config.file={config}", f"--storage.path={storage}",
            f"--web.listen-address={listen}", "--cluster.listen-address="]  # fmt: skip


def fast_rules(
    document: dict[str, Any], rule_for: str = RULE_FOR, keep: Sequence[str] = ()
) -> dict[str, Any]:
    """A rule file with every alert's `for` (where set) shortened, except in the groups
    named in `keep`; group intervals removed (the global one applies)."""
    fast = copy.deepcopy(document)
    for group in fast["groups"]:
        group.pop("interval", None)
        if group["name"] in keep:
            continue
        for rule in group["rules"]:
            if "alert" in rule and "for" in rule:
                rule["for"] = rule_for
    return fast


def bed_rules(deployment: Deployment) -> dict[str, Any]:
    """The program's rule file (render/alerts.py), at bed speed, without the groups about
    services that do not run here (NATS: no exporter installs; its cluster-size alert
    would fire from the start)."""
    rules = fast_rules(alert_rules(deployment), keep=SLOW_RULE_GROUPS)
    rules["groups"] = [g for g in rules["groups"] if g["name"] not in SKIPPED_RULE_GROUPS]
    return rules


def bed_prometheus_config(
    deployment: Deployment, pods: Sequence[str], rule_file: Path, alertmanager: str
) -> dict[str, Any]:
    """The generated config, narrowed to what runs in the bed, at bed speed."""
    config = copy.deepcopy(prometheus_config(deployment))
    config["global"].update(scrape_interval=INTERVAL, scrape_timeout=INTERVAL,
                            evaluation_interval=INTERVAL)  # fmt: skip
    jobs = []
    for job in config["scrape_configs"]:
        if job["job_name"] in SKIPPED_JOBS:
            continue
        job["static_configs"] = [
            static for static in job["static_configs"]
            if static.get("labels", {}).get("territory", pods[0]) in pods
        ]  # fmt: skip
        if job["job_name"] in SLOW_JOBS:
            job["scrape_interval"], job["scrape_timeout"] = SLOW_JOBS[job["job_name"]]
        jobs.append(job)
    config["scrape_configs"] = jobs
    config["rule_files"] = [str(rule_file)]
    config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    return config


def target_names(config: Mapping[str, Any]) -> set[str]:
    """Host names (not addresses, not localhost) of every target in a Prometheus config."""
    statics = [static for job in config["scrape_configs"] for static in job["static_configs"]]
    statics += [static for manager in config.get("alerting", {}).get("alertmanagers", [])
                for static in manager.get("static_configs", [])]  # fmt: skip
    names = {target.rsplit(":", 1)[0] for static in statics for target in static["targets"]}
    return {name for name in names if name != "localhost" and not name[0].isdigit()}


# --- the bed ------------------------------------------------------------------------------
@dataclass
class MonitoringBed:
    lab: NetnsLab
    deployment: Deployment
    workdir: Path
    routing: AlertRouting
    postgres: PgCluster
    processes: dict[str, Background] = field(default_factory=dict)
    started_in: float = 0.0

    @property
    def sink_dir(self) -> Path:
        return self.workdir / "sink"

    # --- start and stop --------------------------------------------------------------
    @classmethod
    def start(cls, workdir: Path) -> MonitoringBed:
        began = time.monotonic()
        # The lab's subnet as mesh subnet (a user setting): the lab host's address is then
        # the mesh gateway, where the program's node-exporter listens.
        values = copy.deepcopy(stack_values("dev"))
        values["unityplan-infra:meshSubnet"] = str(DEFAULT_SUBNET)
        deployment = deployment_of(values)
        routing = replace(dev_routing(), timing=FAST)
        lab = NetnsLab([HOST], workdir=workdir / "lab")
        lab.start()
        postgres: PgCluster | None = None
        try:
            postgres = PgCluster.create(port=5432)
            bed = cls(lab, deployment, workdir, routing, postgres)
            bed._start_all()
            bed.started_in = time.monotonic() - began
            return bed
        except BaseException:
            lab.close(raise_errors=False)
            if postgres is not None:
                postgres.remove()
            raise

    def _start_all(self) -> None:
        pod = self.deployment.pod(POD)
        rules = self.workdir / "rules.yml"
        rules.write_text(yaml.safe_dump(bed_rules(self.deployment), sort_keys=False))
        prometheus_yml = self.workdir / "prometheus.yml"
        config = bed_prometheus_config(self.deployment, [POD], rules, ALERTMANAGER)
        prometheus_yml.write_text(yaml.safe_dump(config, sort_keys=False))
        assert self.routing.email is not None
        smtp_host, smtp_port = split_smarthost(self.routing.email.smarthost)
        self.lab.alias(HOST, *sorted(target_names(config) | {smtp_host}))
        alertmanager_yml = self.workdir / "alertmanager.yml"
        alertmanager_yml.write_text(render_alertmanager_config(self.routing))
        self.sink_dir.mkdir()

        self._spawn_postgres()
        self.postgres.wait_ready(self.processes["postgres"].running)
        password = secrets.token_urlsafe(18)
        self.postgres.create_login(EXPORTER_ROLE, password)
        self.postgres.psql("-c", f"GRANT pg_monitor TO {EXPORTER_ROLE}")
        redis_password = secrets.token_urlsafe(18)
        spawn = self._spawn
        spawn("redis", ["redis-server", "--port", "6379", "--bind", "127.0.0.1",
                        "--requirepass", redis_password, "--save", "", "--appendonly", "no",
                        "--dir", str(self.workdir)])  # fmt: skip
        port = {kind: pod.exporter_target(kind).rsplit(":", 1)[1] for kind in ("postgres", "redis")}
        spawn("postgres-exporter",
              ["prometheus-postgres-exporter", f"--web.listen-address=:{port['postgres']}"],
              env={"DATA_SOURCE_NAME": f"postgresql://{EXPORTER_ROLE}:{password}@127.0.0.1:"
                                       f"{self.postgres.port}/postgres?sslmode=disable"})  # fmt: skip
        spawn("redis-exporter", ["prometheus-redis-exporter",
                                 f"-web.listen-address=:{port['redis']}",
                                 "-redis.addr=redis://127.0.0.1:6379"],
              env={"REDIS_PASSWORD": redis_password})  # fmt: skip
        node_listen = self.deployment.monitoring_host.node_exporter_target()
        spawn("node-exporter", ["prometheus-node-exporter", f"--web.listen-address={node_listen}"])
        sink = spawn("sink", sink_argv(self.sink_dir, f"0.0.0.0:{smtp_port}"), env=sink_env())
        spawn("alertmanager", alertmanager_argv(alertmanager_yml, self.workdir / "am-data",
                                                listen=f":{ALERTMANAGER.rsplit(':', 1)[1]}"))
        spawn("prometheus", ["prometheus", f"--config.file={prometheus_yml}",
                             f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                             "--web.listen-address=:9090"])  # fmt: skip
        sink.wait_for_output("sink ready")
        for name, url in (("alertmanager", ALERTMANAGER_URL), ("prometheus", PROMETHEUS_URL)):
            self._wait_ready(name, url)
        self.wait_healthy()

    def _wait_ready(self, name: str, url: str) -> None:
        wait_until(lambda: http_ok(self.lab, HOST, f"{url}/-/ready"), timeout=30, interval=0.2,
                   what=lambda: self.log(name))  # fmt: skip

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> Background:
        self.processes[name] = self.lab.spawn(HOST, argv, name=f"{name}-{time.monotonic_ns()}",
                                              env=env)  # fmt: skip
        return self.processes[name]

    def _spawn_postgres(self) -> None:
        self._spawn("postgres", self.postgres.server_argv("127.0.0.1"))

    def close(self) -> None:
        try:
            self.lab.close()
        finally:
            self.postgres.remove()

    # --- breaking and mending -------------------------------------------------------
    def stop_postgres(self) -> None:
        """Fast shutdown (SIGINT to the postmaster): the exporter's open connection would
        hold a smart shutdown (SIGTERM) until it ends."""
        server = self.processes["postgres"]
        os.kill(server.pid, signal.SIGINT)
        server.popen.wait(15)

    def start_postgres(self) -> None:
        self._spawn_postgres()
        self.postgres.wait_ready(self.processes["postgres"].running)

    # --- looking ----------------------------------------------------------------------
    def log(self, name: str) -> str:
        return f"{name} log:\n{self.processes[name].output()[-3000:]}"

    def prometheus(self, path: str, **params: str) -> Any:
        """`data` of a Prometheus API reply (`path` like "/api/v1/query")."""
        query = f"?{urlencode(params)}" if params else ""
        reply = http_json(self.lab, HOST, f"{PROMETHEUS_URL}{path}{query}")
        assert reply["status"] == "success", reply
        return reply["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector of `expr`."""
        result: list[dict[str, Any]] = self.prometheus("/api/v1/query", query=expr)["result"]
        return result

    def targets(self) -> list[dict[str, Any]]:
        targets: list[dict[str, Any]] = self.prometheus("/api/v1/targets")["activeTargets"]
        return targets

    def prometheus_alerts(self) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = self.prometheus("/api/v1/alerts")["alerts"]
        return alerts

    def alertmanager(self, path: str, data: Any = None) -> Any:
        return http_json(self.lab, HOST, f"{ALERTMANAGER_URL}{path}", data=data)

    def received(self, since: float = 0.0) -> list[Received]:
        return [each for each in read_received(self.sink_dir) if each.at >= since]

    def unexpected_alerts(self) -> list[dict[str, Any]]:
        """Prometheus alerts, pending or firing, but for the pending ones about this
        machine (SLOW_RULE_GROUPS: their `for` is long, they never fire in a test run)."""
        slow = {rule["alert"] for group in alert_rules(self.deployment)["groups"]
                if group["name"] in SLOW_RULE_GROUPS for rule in group["rules"]
                if "alert" in rule}  # fmt: skip
        return [alert for alert in self.prometheus_alerts()
                if alert["state"] == "firing" or alert["labels"]["alertname"] not in slow]  # fmt: skip

    def healthy(self) -> bool:
        targets = self.targets()
        return (bool(targets) and all(t["health"] == "up" for t in targets)
                and [v["value"][1] for v in self.query("pg_up")] == ["1"]
                and not self.unexpected_alerts() and not self.alertmanager("/api/v2/alerts"))  # fmt: skip

    def wait_healthy(self, timeout: float = 30) -> None:
        """Every target up, PostgreSQL seen up, no alert pending or firing anywhere (but
        the host group's pending ones: `unexpected_alerts`)."""
        wait_until(self.healthy, timeout=timeout, interval=0.3, what=lambda: (
            f"bed healthy: targets {[(t['labels'], t['health'], t['lastError']) for t in self.targets()]}"
            f" alerts {self.unexpected_alerts()} alertmanager {self.alertmanager('/api/v2/alerts')}"
        ))  # fmt: skip


_shared: dict[str, MonitoringBed | BaseException] = {}


def shared_bed(request: pytest.FixtureRequest) -> MonitoringBed:
    """The session's bed: started on first use, stopped when pytest ends (a failed start
    is reported to every test that asks, not retried)."""
    if "bed" not in _shared:
        factory: pytest.TempPathFactory = request.getfixturevalue("tmp_path_factory")
        workdir = factory.mktemp("monitoring-bed")
        try:
            bed = MonitoringBed.start(workdir)
        except BaseException as error:
            _shared["bed"] = error
            raise
        _shared["bed"] = bed
        request.config.add_cleanup(bed.close)
    found = _shared["bed"]
    if isinstance(found, BaseException):
        raise AssertionError(f"the monitoring bed failed to start: {found}") from found
    return found


def main(argv: Sequence[str]) -> int:
    if argv[:1] == ["sink"]:
        return sink_main(argv[1:])
    print("usage: python -m tests.support.monitoring_bed sink --help", file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))

