"""The few Matrix client-server API calls the relay and its bootstrap make (stdlib only).

Requests go straight to the homeserver: no proxy from the environment (an `http_proxy`
variable must not route the access token elsewhere) and no redirects (urllib would copy the
Authorization header to wherever a redirect points). Every failure is a `MatrixError` with
the HTTP status (0: no answer at all), the Matrix `errcode` and `error`, and for 429 the
server's `retry_after_ms`. The access token never appears in a message or a repr.
"""

from __future__ import annotations

import http.client
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any

CLIENT_API = "/_matrix/client/v3"
DEFAULT_TIMEOUT = 10.0


class MatrixError(Exception):
    """A request the homeserver refused, or that got no answer (status 0)."""

    def __init__(
        self,
        method: str,
        path: str,
        status: int,
        errcode: str | None,
        error: str,
        retry_after_ms: int | None = None,
    ) -> None:
        self.method = method
        self.path = path
        self.status = status
        self.errcode = errcode
        self.error = error
        self.retry_after_ms = retry_after_ms
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f"{self.method} {self.path}"
        if self.status == 0:
            return f"{where}: no answer from the homeserver ({self.error})"
        code = f" {self.errcode}" if self.errcode else ""
        return f"{where}: {self.status}{code}: {self.error}"


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> None:
        return None  # urllib then raises HTTPError with the 3xx status


_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirect())


def quote(segment: str) -> str:
    """A room ID, alias or user ID as one path segment (`!`, `#`, `:` and `@` escaped)."""
    return urllib.parse.quote(segment, safe="")


@dataclass
class MatrixClient:
    """Calls to one homeserver, as the user of `token` (None: unauthenticated calls)."""

    homeserver: str  # base URL, e.g. http://service-matrix-dk:8008
    token: str | None = field(default=None, repr=False)
    timeout: float = DEFAULT_TIMEOUT

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.homeserver)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"homeserver URL {self.homeserver!r} is not an http(s) URL")
        if parts.query or parts.fragment or parts.username or parts.password:
            raise ValueError(f"homeserver URL {self.homeserver!r}: only scheme, host, port, path")
        self.homeserver = self.homeserver.rstrip("/")

    def request(
        self, method: str, path: str, body: Any = None, *, authenticated: bool = True
    ) -> dict[str, Any]:
        """`method` `path` (from the server root) with `body` as JSON; the JSON reply."""
        headers = {"Accept": "application/json"}
        data = None
        if body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if authenticated:
            if not self.token:
                raise ValueError(f"{method} {path} needs an access token")
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(
            self.homeserver + path, data=data, headers=headers, method=method
        )
        try:
            with _OPENER.open(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as error:
            raw = error.read()
            error.close()
            raise _refusal(
                method, path, error.code, raw, error.headers.get("Retry-After")
            ) from None
        except (OSError, http.client.HTTPException) as error:  # URLError, refused, timeout
            reason = getattr(error, "reason", error)
            raise MatrixError(method, path, 0, None, str(reason)) from None
        try:
            reply = json.loads(raw) if raw else {}
        except ValueError:
            raise MatrixError(method, path, 200, None, "the answer is not JSON") from None
        if not isinstance(reply, dict):
            raise MatrixError(method, path, 200, None, "the answer is not a JSON object")
        return reply

    # --- the calls -----------------------------------------------------------------------
    def whoami(self) -> str:
        """The user ID of the access token."""
        return str(self.request("GET", f"{CLIENT_API}/account/whoami")["user_id"])

    def join(self, room: str) -> str:
        """Join `room` (ID or alias; a no-op for a member); its room ID."""
        return str(self.request("POST", f"{CLIENT_API}/join/{quote(room)}", {})["room_id"])

    def send_message(self, room_id: str, txn_id: str, content: dict[str, Any]) -> str:
        """Send an `m.room.message`; its event ID. The same `txn_id` from the same device is
        one event, however often it is sent (the spec's transaction idempotency)."""
        path = f"{CLIENT_API}/rooms/{quote(room_id)}/send/m.room.message/{quote(txn_id)}"
        return str(self.request("PUT", path, content)["event_id"])

    def resolve_alias(self, alias: str) -> str | None:
        """The room ID of `alias`, or None if the alias does not exist."""
        try:
            reply = self.request("GET", f"{CLIENT_API}/directory/room/{quote(alias)}")
        except MatrixError as error:
            if error.status == 404:
                return None
            raise
        return str(reply["room_id"])

    def membership(self, room_id: str, user_id: str) -> str | None:
        """`user_id`'s membership in `room_id` (join, invite, leave, ban, knock), or None if
        the room has no membership event for them (never invited, never joined)."""
        path = f"{CLIENT_API}/rooms/{quote(room_id)}/state/m.room.member/{quote(user_id)}"
        try:
            reply = self.request("GET", path)
        except MatrixError as error:
            if error.status == 404:
                return None
            raise
        membership = reply.get("membership")
        return str(membership) if membership is not None else None


def _refusal(
    method: str, path: str, status: int, raw: bytes, retry_after: str | None
) -> MatrixError:
    errcode, message, retry_ms = None, raw[:200].decode(errors="replace").strip(), None
    try:
        body = json.loads(raw)
    except ValueError:
        body = None
    if isinstance(body, dict):
        errcode = body.get("errcode") if isinstance(body.get("errcode"), str) else None
        message = str(body.get("error", message))
        if isinstance(body.get("retry_after_ms"), int):
            retry_ms = body["retry_after_ms"]
    if retry_ms is None and retry_after is not None and retry_after.isdigit():
        retry_ms = int(retry_after) * 1000
    return MatrixError(method, path, status, errcode, message or "(empty answer)", retry_ms)
