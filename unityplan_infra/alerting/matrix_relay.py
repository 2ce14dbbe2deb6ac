"""Alertmanager webhook -> one Matrix room message per notification (stdlib only).

Alertmanager (webhook_configs, payload version 4) POSTs each notification of a group to
`/alerts`; the relay formats it (plain `body` and HTML `formatted_body`: firing or resolved,
alert name, severity/territory/pod/host labels, summary, description, runbook) and sends it
to one room with `PUT /_matrix/client/v3/rooms/{roomId}/send/m.room.message/{txnId}`.

- Idempotent: the transaction ID is a hash of the payload. Alertmanager resends the same
  bytes when it retries a notification, and the homeserver turns a repeated transaction ID
  (same device) into the same event, so a retried webhook posts once.
- Retried when it should be: every Matrix failure answers 5xx (Alertmanager retries 5xx,
  not 4xx), after the relay itself waited out rate limits (429, `retry_after_ms`) for up to
  `send_deadline` seconds. A payload that is not Alertmanager's gets 400 (a retry would
  not help). Every failure is one log line saying what to fix.
- The room is given by ID or alias (`#alerts:<server_name>`); the relay joins it at start
  and again if the homeserver says the bot is not in it.
- The access token is read from a file at every delivery (a rotated token is picked up
  without a restart); it never appears in argv, the environment, the logs or a reply.
  Optionally the webhook itself requires `Authorization: Bearer <secret>`
  (`webhook_token_file`; Alertmanager's `http_config.authorization.credentials_file`).
- `GET /healthz`: 200 while the server runs and the token file is readable, else 503;
  the body is JSON (room ID once joined, delivery counts, the last error).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import logging
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from .matrix import DEFAULT_TIMEOUT, MatrixClient, MatrixError

log = logging.getLogger("matrix-relay")

DEFAULT_LISTEN = "0.0.0.0:8080"
ALERTS_PATH = "/alerts"
HEALTH_PATH = "/healthz"
PAYLOAD_VERSION = "4"
MSGTYPES = ("m.text", "m.notice")  # m.text: clients notify; m.notice is muted by default
MAX_BODY_BYTES = 8 * 1024 * 1024  # a webhook larger than this is refused (413)
MAX_ALERTS = 20  # alerts listed in one message; the rest are counted
MAX_FIELD = 1000  # characters of one label or annotation value
SHOWN_LABELS = ("severity", "territory", "pod", "host")
# Environment variables of `RelayConfig.from_env` (no secret is ever in one: files only).
ENV_HOMESERVER = "MATRIX_RELAY_HOMESERVER"
ENV_ROOM = "MATRIX_RELAY_ROOM"
ENV_TOKEN_FILE = "MATRIX_RELAY_TOKEN_FILE"
ENV_LISTEN = "MATRIX_RELAY_LISTEN"
ENV_WEBHOOK_TOKEN_FILE = "MATRIX_RELAY_WEBHOOK_TOKEN_FILE"
ENV_MSGTYPE = "MATRIX_RELAY_MSGTYPE"
ENV_TIMEOUT = "MATRIX_RELAY_TIMEOUT"
ENV_SEND_DEADLINE = "MATRIX_RELAY_SEND_DEADLINE"

_ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's zero time: a firing alert's endsAt
_TIMESTAMP = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(Z|[+-]\d\d:\d\d)$")
_SIGNS = {"firing": "\N{FIRE}", "resolved": "\N{WHITE HEAVY CHECK MARK}"}


class PayloadError(ValueError):
    """The request body is not an Alertmanager webhook notification (version 4)."""


class TokenFileError(RuntimeError):
    """A secret file is missing, unreadable or empty."""


class DeliveryError(RuntimeError):
    """The notification did not reach the room; `status` is the HTTP answer (5xx)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# --- configuration ------------------------------------------------------------------------
@dataclass(frozen=True)
class RelayConfig:
    """What the relay needs; see the ENV_* names for `from_env`.

    homeserver: base URL of the client API, e.g. http://service-matrix-dk:8008.
    room: room ID (`!...`) or alias (`#alerts:dk.unityplan.local`) to post to.
    token_file: file holding the bot's access token (bootstrap writes it).
    listen: "host:port" of the webhook server.
    webhook_token_file: if set, POST /alerts requires `Authorization: Bearer <content>`.
    msgtype: m.text (default: operators' clients notify) or m.notice.
    timeout: seconds for one request to the homeserver.
    send_deadline: seconds one delivery may spend, waiting out rate limits included.
    """

    homeserver: str
    room: str
    token_file: Path
    listen: str = DEFAULT_LISTEN
    webhook_token_file: Path | None = None
    msgtype: str = "m.text"
    timeout: float = DEFAULT_TIMEOUT
    send_deadline: float = 20.0

    def __post_init__(self) -> None:
        MatrixClient(self.homeserver)  # validates the URL
        # Room IDs of room version 12 have no server part (`!<hash>`); aliases always do.
        if not re.fullmatch(r"![^\s/]+|#[^:\s/]+:[^\s/]+", self.room):
            raise ValueError(f"room {self.room!r} is neither a room ID (!...) nor an alias (#x:y)")
        if self.msgtype not in MSGTYPES:
            raise ValueError(f"msgtype {self.msgtype!r} is not one of {MSGTYPES}")
        if not (0 < self.timeout <= 300 and 0 < self.send_deadline <= 600):
            raise ValueError("timeout and send_deadline are positive seconds (at most 300/600)")
        split_listen(self.listen)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> RelayConfig:
        env = os.environ if env is None else env
        missing = [name for name in (ENV_HOMESERVER, ENV_ROOM, ENV_TOKEN_FILE) if not env.get(name)]
        if missing:
            raise ValueError(f"set {', '.join(missing)}")
        webhook_token = env.get(ENV_WEBHOOK_TOKEN_FILE)
        return cls(
            homeserver=env[ENV_HOMESERVER],
            room=env[ENV_ROOM],
            token_file=Path(env[ENV_TOKEN_FILE]),
            listen=env.get(ENV_LISTEN) or DEFAULT_LISTEN,
            webhook_token_file=Path(webhook_token) if webhook_token else None,
            msgtype=env.get(ENV_MSGTYPE) or "m.text",
            timeout=float(env.get(ENV_TIMEOUT) or DEFAULT_TIMEOUT),
            send_deadline=float(env.get(ENV_SEND_DEADLINE) or 20.0),
        )


def split_listen(listen: str) -> tuple[str, int]:
    """("host", port) of "host:port", ":port" (all IPv4 addresses) or "[::]:port"."""
    host, sep, port = listen.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"listen address {listen!r} is not host:port")
    return host or "0.0.0.0", int(port)


def read_secret_file(path: Path, what: str) -> str:
    """The file's content without surrounding whitespace; never part of an error message."""
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as error:
        raise TokenFileError(f"{what} file {path}: {error.strerror or error}") from None
    except UnicodeDecodeError:
        raise TokenFileError(f"{what} file {path} is not UTF-8 text") from None
    if not value:
        raise TokenFileError(f"{what} file {path} is empty")
    return value


# --- the notification -----------------------------------------------------------------------
@dataclass(frozen=True)
class Alert:
    status: str
    labels: dict[str, str]
    annotations: dict[str, str]
    starts_at: str = ""
    ends_at: str = ""


@dataclass(frozen=True)
class Notification:
    """The fields of one webhook payload that the message shows."""

    status: str
    alerts: tuple[Alert, ...]
    group_labels: dict[str, str] = field(default_factory=dict)
    common_labels: dict[str, str] = field(default_factory=dict)
    truncated: int = 0
    external_url: str = ""


def _strings(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise PayloadError(f"{what} is not an object of strings")
    return dict(value)


def _status(value: Any, what: str) -> str:
    if value not in ("firing", "resolved"):
        raise PayloadError(f"{what} is {value!r}, not firing or resolved")
    return str(value)


def parse_notification(payload: Any) -> Notification:
    """The notification in an Alertmanager webhook payload; `PayloadError` if it is none."""
    if not isinstance(payload, dict):
        raise PayloadError("the payload is not a JSON object")
    if payload.get("version") != PAYLOAD_VERSION:
        raise PayloadError(
            f"payload version {payload.get('version')!r}: only Alertmanager's webhook version"
            f" {PAYLOAD_VERSION} is understood"
        )
    alerts = payload.get("alerts")
    if not isinstance(alerts, list) or not alerts:
        raise PayloadError("the payload has no alerts")
    parsed = []
    for index, alert in enumerate(alerts):
        if not isinstance(alert, dict):
            raise PayloadError(f"alerts[{index}] is not an object")
        parsed.append(
            Alert(
                status=_status(alert.get("status"), f"alerts[{index}].status"),
                labels=_strings(alert.get("labels"), f"alerts[{index}].labels"),
                annotations=_strings(alert.get("annotations"), f"alerts[{index}].annotations"),
                starts_at=str(alert.get("startsAt") or ""),
                ends_at=str(alert.get("endsAt") or ""),
            )
        )
    truncated = payload.get("truncatedAlerts") or 0
    if not isinstance(truncated, int) or truncated < 0:
        raise PayloadError("truncatedAlerts is not a count")
    return Notification(
        status=_status(payload.get("status"), "status"),
        alerts=tuple(parsed),
        group_labels=_strings(payload.get("groupLabels"), "groupLabels"),
        common_labels=_strings(payload.get("commonLabels"), "commonLabels"),
        truncated=truncated,
        external_url=str(payload.get("externalURL") or ""),
    )


def transaction_id(payload: Any) -> str:
    """The Matrix transaction ID of a payload: equal payloads, equal IDs (key order and
    whitespace aside), so a retried webhook is one event."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return "alertmanager-" + hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Message:
    body: str
    formatted_body: str

    def content(self, msgtype: str = "m.text") -> dict[str, Any]:
        return {
            "msgtype": msgtype,
            "body": self.body,
            "format": "org.matrix.custom.html",
            "formatted_body": self.formatted_body,
        }


def _clip(value: str) -> str:
    return value if len(value) <= MAX_FIELD else value[: MAX_FIELD - 1] + "\N{HORIZONTAL ELLIPSIS}"


def _when(timestamp: str) -> str:
    """RFC 3339 (nanoseconds and all) as "YYYY-MM-DD HH:MM:SS UTC"; "" for none."""
    match = _TIMESTAMP.match(timestamp)
    if not match or timestamp == _ZERO_TIME:
        return ""
    zone = "+00:00" if match[2] == "Z" else match[2]
    moment = datetime.fromisoformat(match[1] + zone).astimezone(UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _title(notification: Notification) -> tuple[str, list[tuple[str, str]]]:
    """(alert name, other group labels) naming the group."""
    labels = dict(notification.group_labels)
    name = labels.pop("alertname", "") or notification.common_labels.get("alertname", "")
    if not name:
        names = {a.labels.get("alertname", "") for a in notification.alerts}
        name = names.pop() if len(names) == 1 else "Alerts"
    return _clip(name), [(k, _clip(v)) for k, v in sorted(labels.items()) if v]


def _headline(notification: Notification) -> str:
    status = notification.status
    firing = sum(1 for a in notification.alerts if a.status == "firing")
    resolved = len(notification.alerts) - firing
    count = ""
    if status == "firing" and (firing > 1 or resolved):
        count = f" ({firing}" + (f", {resolved} resolved" if resolved else "") + ")"
    elif status == "resolved" and len(notification.alerts) > 1:
        count = f" ({len(notification.alerts)})"
    return f"{_SIGNS[status]} {status.upper()}{count}"


def _alert_labels(alert: Alert) -> list[tuple[str, str]]:
    return [(name, _clip(alert.labels[name])) for name in SHOWN_LABELS if alert.labels.get(name)]


def _is_url(value: str) -> bool:
    return re.match(r"^https?://\S+$", value) is not None


def format_notification(notification: Notification) -> Message:
    """The room message of one notification: a headline, then one entry per alert."""
    name, group = _title(notification)
    headline = _headline(notification)
    group_text = "".join(f" \N{MIDDLE DOT} {k} {v}" for k, v in group)
    text = [f"{headline}: {name}{group_text}"]
    markup = [
        f"<p><strong>{html.escape(headline)}: {html.escape(name)}</strong>"
        + "".join(f" \N{MIDDLE DOT} {html.escape(k)} <code>{html.escape(v)}</code>"
                  for k, v in group)
        + "</p>",
        "<ul>",
    ]  # fmt: skip
    shown = notification.alerts[:MAX_ALERTS]
    for alert in shown:
        alert_name = _clip(alert.labels.get("alertname", name))
        labels = _alert_labels(alert)
        sign = _SIGNS[alert.status]
        text.append(f"{sign} {alert_name}" + "".join(f" \N{MIDDLE DOT} {k} {v}" for k, v in labels))
        item = [
            f"{sign} <strong>{html.escape(alert_name)}</strong>"
            + "".join(f" \N{MIDDLE DOT} {html.escape(k)} <code>{html.escape(v)}</code>"
                      for k, v in labels)
        ]  # fmt: skip
        for key in ("summary", "description"):
            value = alert.annotations.get(key, "").strip()
            if value:
                text.append(f"  {_clip(value)}")
                item.append(html.escape(_clip(value)))
        runbook = alert.annotations.get("runbook") or alert.annotations.get("runbook_url") or ""
        runbook = _clip(runbook.strip())
        if runbook:
            text.append(f"  Runbook: {runbook}")
            shown_runbook = (
                f'<a href="{html.escape(runbook)}">{html.escape(runbook)}</a>'
                if _is_url(runbook) else f"<code>{html.escape(runbook)}</code>"
            )  # fmt: skip
            item.append(f"<em>Runbook:</em> {shown_runbook}")
        when = _when(alert.ends_at) if alert.status == "resolved" else _when(alert.starts_at)
        if when:
            phrase = "Resolved" if alert.status == "resolved" else "Since"
            text.append(f"  {phrase} {when}")
            item.append(f"<em>{phrase}</em> {when}")
        markup.append("<li>" + "<br/>".join(item) + "</li>")
    markup.append("</ul>")
    hidden = len(notification.alerts) - len(shown) + notification.truncated
    if hidden:
        more = f"\N{HORIZONTAL ELLIPSIS} and {hidden} more alert{'s' if hidden > 1 else ''}"
        text.append(more)
        markup.append(f"<p>{html.escape(more)}</p>")
    if _is_url(notification.external_url):
        text.append(f"Alertmanager: {notification.external_url}")
        url = html.escape(notification.external_url)
        markup.append(f'<p><a href="{url}">Alertmanager</a></p>')
    return Message("\n".join(text), "".join(markup))


# --- delivery -----------------------------------------------------------------------------------
@dataclass
class Stats:
    delivered: int = 0
    failed: int = 0
    last_error: str | None = None


class Relay:
    """Delivers notifications to the configured room; safe to call from several threads."""

    def __init__(self, config: RelayConfig, sleep: Callable[[float], None] = time.sleep) -> None:
        self.config = config
        self.stats = Stats()
        self._sleep = sleep
        self._lock = threading.Lock()
        self._room_id: str | None = None

    @property
    def room_id(self) -> str | None:
        return self._room_id

    def client(self) -> MatrixClient:
        token = read_secret_file(self.config.token_file, "access token")
        return MatrixClient(self.config.homeserver, token, self.config.timeout)

    def join(self, client: MatrixClient | None = None) -> str:
        """Join the room (a no-op when joined); its room ID, remembered."""
        client = client or self.client()
        room_id = client.join(self.config.room)
        with self._lock:
            if room_id != self._room_id:
                log.info("joined %s (%s)", self.config.room, room_id)
            self._room_id = room_id
        return room_id

    def deliver(self, payload: Any) -> str:
        """Post the notification in `payload`; its event ID. Raises `PayloadError` (the
        payload is not a notification) or `DeliveryError` (the room was not reached)."""
        notification = parse_notification(payload)
        content = format_notification(notification).content(self.config.msgtype)
        txn_id = transaction_id(payload)
        try:
            client = self.client()
        except TokenFileError as error:
            raise self._failed(500, f"{error}; nothing was sent") from None
        deadline = time.monotonic() + self.config.send_deadline
        rejoined = False
        while True:
            try:
                room_id = self._room_id or self.join(client)
                event_id = client.send_message(room_id, txn_id, content)
            except MatrixError as error:
                wait = (error.retry_after_ms or 1000) / 1000
                if error.status == 429 and time.monotonic() + wait < deadline:
                    log.info("rate-limited by the homeserver; retrying in %.1f s", wait)
                    self._sleep(wait)
                    continue
                if error.status == 403 and not rejoined and self._room_id is not None:
                    rejoined = True  # removed from the room? join again, once
                    self._room_id = None
                    continue
                raise self._failed(*self._explain(error)) from None
            with self._lock:
                self.stats.delivered += 1
            return event_id

    def _failed(self, status: int, message: str) -> DeliveryError:
        with self._lock:
            self.stats.failed += 1
            self.stats.last_error = message
        return DeliveryError(status, message)

    def _explain(self, error: MatrixError) -> tuple[int, str]:
        """(HTTP status for Alertmanager, the log line) of a Matrix failure."""
        config = self.config
        if error.status == 0:
            return 502, f"homeserver {config.homeserver} unreachable: {error.error}"
        if error.status == 401:
            return 502, (
                f"the homeserver refused the access token in {config.token_file}"
                f" ({error.status} {error.errcode}: {error.error}): wrong, expired or logged"
                " out; rerun the bootstrap to issue a new one"
            )
        if error.status == 429:
            return 503, (
                f"rate-limited by the homeserver for more than {config.send_deadline:g} s ({error})"
            )
        if "/join/" in error.path:
            return 502, (
                f"cannot join {config.room} ({error.status} {error.errcode}: {error.error}):"
                " does the room exist, and is the bot invited? (rerun the bootstrap)"
            )
        if error.status == 403:
            return 502, f"the bot may not post in {config.room} ({error.errcode}: {error.error})"
        return 502, f"the homeserver refused the message: {error}"


# --- the HTTP side ---------------------------------------------------------------------------
class RelayServer(ThreadingHTTPServer):
    """The webhook server; finishes the deliveries in flight when shut down."""

    daemon_threads = False
    block_on_close = True

    def __init__(self, relay: Relay) -> None:
        host, port = split_listen(relay.config.listen)
        if ":" in host:
            self.address_family = socket.AF_INET6
        self.relay = relay
        super().__init__((host, port), RelayHandler)


class RelayHandler(BaseHTTPRequestHandler):
    server: RelayServer
    timeout = 30  # seconds to read a request: a stalled client cannot hold a thread
    server_version = "matrix-relay"

    def do_POST(self) -> None:
        if self.path.split("?", 1)[0].rstrip("/") != ALERTS_PATH:
            self._reply(404, {"error": f"POST webhooks to {ALERTS_PATH}"})
            return
        relay = self.server.relay
        if relay.config.webhook_token_file is not None and not self._authorised(
            relay.config.webhook_token_file
        ):
            return
        try:
            length = int(self.headers.get("Content-Length", ""))
        except ValueError:
            self._reply(411, {"error": "Content-Length required"})
            return
        if not 0 < length <= MAX_BODY_BYTES:
            self._reply(413, {"error": f"the body must be 1 to {MAX_BODY_BYTES} bytes"})
            return
        started = time.monotonic()
        try:
            payload = json.loads(self.rfile.read(length))
            event_id = relay.deliver(payload)
        except (json.JSONDecodeError, UnicodeDecodeError, PayloadError) as error:
            # Not JSON, or not a notification: 400, so Alertmanager does not retry in vain.
            log.warning("refused a webhook from %s: %s", self.client_address[0], error)
            self._reply(400, {"error": str(error)})
            return
        except DeliveryError as error:
            log.error("delivery failed, answering %d so Alertmanager retries: %s",
                      error.status, error)  # fmt: skip
            self._reply(error.status, {"error": str(error)})
            return
        except Exception:  # a bug or an odd answer: still a 5xx, so Alertmanager retries
            log.exception("delivery failed unexpectedly, answering 500")
            self._reply(500, {"error": "internal error; see the relay's log"})
            return
        log.info(
            "delivered %s notification (%d alert%s, %s) as %s in %.0f ms",
            payload.get("status"), len(payload["alerts"]),
            "" if len(payload["alerts"]) == 1 else "s",
            ",".join(sorted({str(a.get("labels", {}).get("alertname")) for a in payload["alerts"]})),
            event_id, (time.monotonic() - started) * 1000,
        )  # fmt: skip
        self._reply(200, {"event_id": event_id})

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != HEALTH_PATH:
            self._reply(404, {"error": f"GET {HEALTH_PATH}"})
            return
        relay = self.server.relay
        health: dict[str, Any] = {
            "room": relay.config.room,
            "room_id": relay.room_id,
            "delivered": relay.stats.delivered,
            "failed": relay.stats.failed,
            "last_error": relay.stats.last_error,
        }
        try:
            read_secret_file(relay.config.token_file, "access token")
        except TokenFileError as error:
            self._reply(503, {"status": "token file unreadable", "error": str(error), **health})
            return
        self._reply(200, {"status": "ok", **health})

    def _authorised(self, secret_file: Path) -> bool:
        try:
            expected = read_secret_file(secret_file, "webhook token")
        except TokenFileError as error:
            log.error("refused a webhook: %s", error)
            self._reply(500, {"error": "the relay cannot read its webhook token file"})
            return False
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), expected):
            return True
        log.warning("refused a webhook from %s: missing or wrong bearer token",
                    self.client_address[0])  # fmt: skip
        self._reply(401, {"error": "bearer token required"}, {"WWW-Authenticate": "Bearer"})
        return False

    def _reply(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.client_address[0], format % args)


def serve(config: RelayConfig) -> int:
    """Run the relay until SIGTERM or SIGINT; 2 if the token file cannot be read at start."""
    try:
        read_secret_file(config.token_file, "access token")
    except TokenFileError as error:
        log.error("cannot start: %s", error)
        return 2
    relay = Relay(config)
    server = RelayServer(relay)

    def stop(signum: int, frame: FrameType | None) -> None:
        log.info("signal %d: finishing deliveries in flight, then stopping", signum)
        threading.Thread(target=server.shutdown, daemon=True).start()

    # As PID 1 in a container, Python would ignore SIGTERM without a handler of its own.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def warm_up() -> None:
        try:
            relay.join()
        except (MatrixError, TokenFileError) as error:
            log.warning("cannot join %s yet (will retry at the first alert): %s",
                        config.room, error)  # fmt: skip

    threading.Thread(target=warm_up, daemon=True).start()
    host, port = server.server_address[:2]
    log.info("listening on %s:%s; POST %s relays to %s on %s", host, port, ALERTS_PATH,
             config.room, config.homeserver)  # fmt: skip
    try:
        server.serve_forever(poll_interval=0.5)
    finally:
        server.server_close()
    log.info("stopped")
    return 0
