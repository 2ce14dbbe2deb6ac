"""Alertmanager configuration (`alertmanager.yml`) of the monitoring host.

Input is `AlertRouting`, a plain frozen value the program builds from stack config: an
email receiver, a webhook URL, or both (or neither: alerts then show in Alertmanager's UI
and API only). Every alert goes to every configured channel; there is one receiver per
channel, so `amtool config routes test` names the channels an alert reaches.

Grouping: by `alertname`, `territory` and `host`. One notification per kind of trouble and
pod (or host); two pods with the same problem are two notifications, the same problem on
one pod seen by several targets (e.g. several instances) is one.

Inhibition is data (`INHIBITIONS`): while a cause fires (a scrape target down, a host
down, PostgreSQL down), the alerts it explains are muted when they carry the same
`territory` (pod) or `host`. The alert names are the rule file's constants
(`render/alerts.py`), imported: renaming an alert there renames it here. Alertmanager treats
a label missing on both sides as equal (empty == empty), so an inhibit rule on `equal:
[host]` would let any host-less source mute every host-less target; every rule here
therefore also requires each `equal` label to be present (`label=~".+"`) on both sides.

Secrets: the SMTP password is not in this file. It is referenced with
`auth_password_file` (supported by the email receiver since Alertmanager 0.25, checked
against Debian's 0.25.0 and its source) and its content comes from
`alertmanager_secret_files`, to be written 0600 and owned by the user Alertmanager runs as
(`nobody`, 65534, in the prom/alertmanager image): the file is read at every send, so an
unreadable file passes `amtool check-config` and startup, and fails only when a
notification is due. Alertmanager before 0.27 uses the file's bytes verbatim (0.27 trims
newlines): the content carries no trailing newline. The webhook URL stays inline: 0.25 has
no `url_file` (0.26 added it), so a URL carrying a token makes this file a secret too.

Matrix: Alertmanager has no Matrix integration. The intended route is the webhook: a small
relay beside the platform's Synapse takes Alertmanager's webhook JSON and posts
`m.room.message` to one room as a bot user (its access token in the relay, not here).
This renderer needs nothing more than `webhook_url` for it.

Resolved notifications are on for both channels (`send_resolved`; email's default is off).

Pure: dicts emitted with `yaml.safe_dump` (quoting is the emitter's job, so a territory
called "no" stays a string).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from email.utils import getaddresses
from typing import Any
from urllib.parse import urlsplit

import yaml

from unityplan_infra.render.alerts import (
    HOST_DISK_FILLING_UP,
    HOST_MEMORY_LOW,
    JETSTREAM_REPLICA_LAGGING,
    NATS_CLUSTER_SMALL,
    NATS_SERVER_UNREACHABLE,
    POSTGRES_DOWN,
    POSTGRES_NEAR_MAX_CONNECTIONS,
    REDIS_DOWN,
    REDIS_MEMORY_HIGH_NO_LIMIT,
    REDIS_MEMORY_NEAR_LIMIT,
    TARGET_DOWN,
    WIREGUARD_PEER_NO_HANDSHAKE,
)

GROUP_BY = ("alertname", "territory", "host")
# Receiver names: also what `amtool config routes test` prints.
EMAIL = "email"
WEBHOOK = "webhook"
MATRIX = "matrix"  # the Matrix alert relay, a webhook
UNROUTED = "unrouted"  # the root's receiver: no integration, catches nothing routed
# Where the container sees the files of `alertmanager_secret_files`.
DEFAULT_SECRETS_DIR = "/etc/alertmanager/secrets"
SMTP_PASSWORD_FILE = "smtp-password"
# The dev stack's MailHog: container name and SMTP port on the dev network.
DEV_SMARTHOST = "dev-mailhog:1025"
DEV_RECIPIENT = "alerts@unityplan.test"
DEV_SENDER = "alertmanager@unityplan.test"

_ALERT_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_LABEL_NAME = _ALERT_NAME
_JOB = re.compile(r"^[A-Za-z0-9_:-]+$")  # literal in a regex: rendered into job=~"a|b"
_LOOPBACK = frozenset({"localhost", "127.0.0.1", "::1"})
_IMPLICIT_TLS_PORT = 465  # Alertmanager dials TLS directly on this port (no STARTTLS)


@dataclass(frozen=True)
class Inhibition:
    """While a `source` alert fires, the `targets` alerts with the same `equal` labels are
    muted (not notified; still listed, as suppressed).

    `source_jobs` / `target_jobs` narrow either side to alerts whose `job` label is one
    of them (for `TargetDown`, whose meaning depends on the job that is down).
    """

    why: str
    source: str
    targets: tuple[str, ...]
    equal: tuple[str, ...]
    source_jobs: tuple[str, ...] = ()
    target_jobs: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in (self.source, *self.targets):
            if not _ALERT_NAME.fullmatch(name):
                raise ValueError(f"alert name {name!r} is not a valid Prometheus alert name")
        if not self.targets:
            raise ValueError(f"inhibition of {self.source} has no targets")
        if not self.equal:
            # Without `equal` one source would mute the targets of every pod and host.
            raise ValueError(f"inhibition of {self.source} names no `equal` label")
        for label in self.equal:
            if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
                raise ValueError(f"{label!r} is not a label name")
        for job in (*self.source_jobs, *self.target_jobs):
            if not _JOB.fullmatch(job):
                raise ValueError(f"job {job!r}: only letters, digits and _:- are supported")


# Prometheus's external label (render/prometheus.py): on every alert, one value per
# Prometheus, so `equal: [cluster]` means "anywhere in this deployment".
CLUSTER = "cluster"
HOST_TARGET_JOBS = ("postgres", "redis", "nats", "cadvisor", "wireguard")
INHIBITIONS: tuple[Inhibition, ...] = (
    # A pod's exporter is unreachable: nothing is known about the service behind it.
    Inhibition(
        "the pod's postgres exporter is unreachable",
        TARGET_DOWN, (POSTGRES_DOWN, POSTGRES_NEAR_MAX_CONNECTIONS), ("territory",),
        source_jobs=("postgres",),
    ),
    Inhibition(
        "PostgreSQL is down: its connection count says nothing",
        POSTGRES_DOWN, (POSTGRES_NEAR_MAX_CONNECTIONS,), ("territory",),
    ),
    Inhibition(
        "the pod's redis exporter is unreachable",
        TARGET_DOWN, (REDIS_DOWN, REDIS_MEMORY_NEAR_LIMIT, REDIS_MEMORY_HIGH_NO_LIMIT),
        ("territory",), source_jobs=("redis",),
    ),
    Inhibition(
        "Redis is down: its memory says nothing",
        REDIS_DOWN, (REDIS_MEMORY_NEAR_LIMIT, REDIS_MEMORY_HIGH_NO_LIMIT), ("territory",),
    ),
    Inhibition(
        "the pod's NATS exporter is unreachable: its replicas' view is stale",
        TARGET_DOWN, (JETSTREAM_REPLICA_LAGGING,), ("territory",), source_jobs=("nats",),
    ),
    Inhibition(
        "the pod's NATS server does not answer: its replicas' view is stale",
        NATS_SERVER_UNREACHABLE, (JETSTREAM_REPLICA_LAGGING,), ("territory",),
    ),
    # NatsClusterSmall is cluster-wide (no pod label): a named NATS server being out
    # explains it. JetStreamStreamNoLeader is not muted: it names the streams that stopped.
    Inhibition(
        "a NATS server does not answer: the cluster is small because of it",
        NATS_SERVER_UNREACHABLE, (NATS_CLUSTER_SMALL,), (CLUSTER,),
    ),
    Inhibition(
        "a NATS exporter is unreachable: its server does not count towards the cluster",
        TARGET_DOWN, (NATS_CLUSTER_SMALL,), (CLUSTER,), source_jobs=("nats",),
    ),
    # A host's node exporter is unreachable: the host is down or cut off.
    Inhibition(
        "the host's node exporter is unreachable: its disk, memory and WireGuard alerts",
        TARGET_DOWN, (HOST_DISK_FILLING_UP, HOST_MEMORY_LOW, WIREGUARD_PEER_NO_HANDSHAKE),
        ("host",), source_jobs=("node",),
    ),
    Inhibition(
        "the host's node exporter is unreachable: its other targets are down for the same "
        "reason (and in turn mute their pods' service alerts)",
        TARGET_DOWN, (TARGET_DOWN,), ("host",),
        source_jobs=("node",), target_jobs=HOST_TARGET_JOBS,
    ),
)  # fmt: skip


@dataclass(frozen=True)
class EmailReceiver:
    """Email through an SMTP server.

    to: recipients (each one address, optionally with a display name).
    sender: the From address.
    smarthost: "host:port" of the SMTP server; port 465 means TLS from the first byte.
    username, password: SMTP AUTH (PLAIN or LOGIN, as the server offers); both or neither.
    require_tls: insist on STARTTLS (Alertmanager's default); off for a local MailHog.
    """

    to: tuple[str, ...]
    sender: str
    smarthost: str
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    require_tls: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.to, str):
            raise ValueError("`to` is a sequence of addresses, not one string")
        if not self.to:
            raise ValueError("an email receiver needs at least one recipient")
        for address in (*self.to, self.sender):
            _check_address(address)
        host, port = split_smarthost(self.smarthost)
        if (self.username is None) != (self.password is None):
            # A password without a user is silently not used: Alertmanager skips AUTH.
            raise ValueError("SMTP username and password go together: set both or neither")
        if (self.password is not None and not self.require_tls
                and port != _IMPLICIT_TLS_PORT and host not in _LOOPBACK):  # fmt: skip
            raise ValueError(
                f"SMTP credentials for {self.smarthost} without TLS would cross the network"
                " in clear (and Go's PLAIN auth refuses it): set require_tls"
            )
        if self.password == "" or (self.password is not None and "\n" in self.password):
            raise ValueError("the SMTP password is empty or has a newline")


@dataclass(frozen=True)
class Timing:
    """How long Alertmanager waits before notifying.

    group_wait: after a group's first alert, for more of the same group.
    group_interval: between notifications of a group whose alerts changed (also resolves).
    repeat_interval: between repeats of an unchanged, still-firing group.
    """

    group_wait: timedelta = timedelta(seconds=30)
    group_interval: timedelta = timedelta(minutes=5)
    repeat_interval: timedelta = timedelta(hours=4)


@dataclass(frozen=True)
class AlertRouting:
    """Where alerts go: email, a webhook (e.g. a Matrix relay), both, or neither.

    timing: group_wait / group_interval / repeat_interval (tests shorten them).
    inhibitions: which alerts mute which (the default is the platform's policy).
    """

    email: EmailReceiver | None = None
    webhook_url: str | None = None
    matrix_relay_url: str | None = None
    """The Matrix alert relay's webhook (alerting/matrix_relay.py), when it runs."""
    timing: Timing = Timing()
    inhibitions: tuple[Inhibition, ...] = INHIBITIONS

    def __post_init__(self) -> None:
        for url in (self.webhook_url, self.matrix_relay_url):
            parts = urlsplit(url or "")
            if url is not None and (parts.scheme not in ("http", "https") or not parts.hostname):
                raise ValueError(f"webhook URL {url!r} is not an http(s) URL")

    @property
    def receivers(self) -> tuple[str, ...]:
        """Names of the configured channels, in routing order."""
        channels = ((EMAIL, self.email), (WEBHOOK, self.webhook_url),
                    (MATRIX, self.matrix_relay_url))  # fmt: skip
        return tuple(name for name, on in channels if on)


def dev_routing(
    smarthost: str = DEV_SMARTHOST,
    to: Sequence[str] = (DEV_RECIPIENT,),
    sender: str = DEV_SENDER,
) -> AlertRouting:
    """The dev stack's default: every alert by email to MailHog (no auth, no TLS)."""
    return AlertRouting(email=EmailReceiver(tuple(to), sender, smarthost, require_tls=False))


def split_smarthost(smarthost: str) -> tuple[str, int]:
    """("host", port) of "host:port" ("[::1]:25" for IPv6)."""
    host, sep, port = smarthost.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"smarthost {smarthost!r} is not host:port")
    return host, int(port)


def duration(value: timedelta) -> str:
    """`value` as a Prometheus duration in one unit ("90s", "1500ms", "4h")."""
    milliseconds, rest = divmod(value, timedelta(milliseconds=1))
    if rest or milliseconds <= 0:
        raise ValueError(f"{value} is not a positive whole number of milliseconds")
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if milliseconds % size == 0:
            return f"{milliseconds // size}{unit}"
    return f"{milliseconds}ms"


def inhibit_rule(inhibition: Inhibition) -> dict[str, Any]:
    """One `inhibit_rules` entry; every `equal` label must be present on both sides."""
    present = [f'{label}=~".+"' for label in inhibition.equal]
    return {
        "source_matchers": [
            f'alertname="{inhibition.source}"', *_job_matcher(inhibition.source_jobs), *present
        ],
        "target_matchers": [
            _name_matcher(inhibition.targets), *_job_matcher(inhibition.target_jobs), *present
        ],
        "equal": list(inhibition.equal),
    }


def alertmanager_config(
    routing: AlertRouting, secrets_dir: str = DEFAULT_SECRETS_DIR
) -> dict[str, Any]:
    """The config of `routing` as a dict; secret files are referenced under `secrets_dir`."""
    receivers: list[dict[str, Any]] = [{"name": UNROUTED}]
    if routing.email is not None:
        receivers.append({"name": EMAIL, "email_configs": [_email(routing.email, secrets_dir)]})
    for name, url in ((WEBHOOK, routing.webhook_url), (MATRIX, routing.matrix_relay_url)):
        if url is not None:
            receivers.append(
                {"name": name, "webhook_configs": [{"url": url, "send_resolved": True}]}
            )
    timing = routing.timing
    return {
        "route": {
            "receiver": UNROUTED,
            "group_by": list(GROUP_BY),
            "group_wait": duration(timing.group_wait),
            "group_interval": duration(timing.group_interval),
            "repeat_interval": duration(timing.repeat_interval),
            # No matchers: every alert to every channel; `continue` to reach the next one.
            "routes": [{"receiver": name, "continue": True} for name in routing.receivers],
        },
        "inhibit_rules": [inhibit_rule(each) for each in routing.inhibitions],
        "receivers": receivers,
    }


def render_alertmanager_config(
    routing: AlertRouting, secrets_dir: str = DEFAULT_SECRETS_DIR
) -> str:
    """`alertmanager.yml` of `routing`, as YAML text (holds no secret)."""
    return yaml.safe_dump(alertmanager_config(routing, secrets_dir), sort_keys=False)


def alertmanager_secret_files(routing: AlertRouting) -> dict[str, str]:
    """Secret files the config references, by name under its `secrets_dir`: write each
    0600, owned by Alertmanager's user, exactly as given (no trailing newline)."""
    files: dict[str, str] = {}
    if routing.email is not None and routing.email.password is not None:
        files[SMTP_PASSWORD_FILE] = routing.email.password
    return files


# --- helpers -----------------------------------------------------------------------------
def _email(email: EmailReceiver, secrets_dir: str) -> dict[str, Any]:
    config: dict[str, Any] = {
        "to": ", ".join(email.to),
        "from": email.sender,
        "smarthost": email.smarthost,
        "require_tls": email.require_tls,
        "send_resolved": True,
    }
    if email.username is not None:
        config["auth_username"] = email.username
        config["auth_password_file"] = f"{secrets_dir.rstrip('/')}/{SMTP_PASSWORD_FILE}"
    return config


def _name_matcher(names: tuple[str, ...]) -> str:
    unique = list(dict.fromkeys(names))
    if len(unique) == 1:
        return f'alertname="{unique[0]}"'
    return f'alertname=~"{"|".join(unique)}"'


def _job_matcher(jobs: tuple[str, ...]) -> list[str]:
    if not jobs:
        return []
    if len(jobs) == 1:
        return [f'job="{jobs[0]}"']
    return [f'job=~"{"|".join(jobs)}"']


def _check_address(address: str) -> None:
    parsed = getaddresses([address])
    if len(parsed) != 1 or "@" not in parsed[0][1] or "{{" in address:
        # Alertmanager joins `to` with commas and renders it as a Go template.
        raise ValueError(f"{address!r} is not one email address")
