"""One-time setup of the alert room on the monitoring pod's homeserver (stdlib only).

Run as `python matrix-relay.pyz bootstrap < spec.json` (a throwaway container beside
Synapse, like the stream job) before the relay starts. Secrets come on stdin, never in
argv or the environment. Steps, each idempotent (a second run changes nothing):

1. Access token: kept if `token_file` holds a token that is still the bot's (`whoami`).
   Otherwise the bot user is registered through Synapse's shared-secret registration
   (`/_synapse/admin/v1/register`: a nonce, then HMAC-SHA1 over
   nonce NUL user NUL password NUL notadmin NUL bot, keyed with the homeserver's
   registration_shared_secret; not an admin, user type `bot`), or, if it exists, logged
   in with its password (device `MATRIX_RELAY`, so a re-login replaces no other device).
   The token is written to `token_file` (0600, atomically, optionally chowned to the
   relay's user).
2. The room `#<room_alias>:<server_name>`: created if the alias does not resolve (private,
   invite-only, not encrypted: the relay speaks plain client-server API), else reused (the
   bot joins if it is not joined).
3. Operators: each Matrix ID without any membership in the room is invited. Members and
   pending invitations are left as they are, and so is anyone who left or was banned: a
   rerun does not pester someone who chose to leave.

The bot's password defaults to an HMAC of the registration secret (so no further secret
needs keeping: whoever holds the registration secret can create any account anyway).

Output: one JSON line per step (`{"step": ..., "action": ...}`), then a summary line with
`user_id`, `room_id`, `room_alias` and `changed`. Exit status 1 and an `{"error": ...}`
line on failure.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .matrix import CLIENT_API, DEFAULT_TIMEOUT, MatrixClient, MatrixError, quote

REGISTER_PATH = "/_synapse/admin/v1/register"
DEVICE_ID = "MATRIX_RELAY"
USER_TYPE = "bot"
_PASSWORD_CONTEXT = b"unityplan matrix relay bot password\x00"
_LOCALPART = re.compile(r"^[a-z0-9._=/+-]+$")  # the spec's user ID localpart grammar
_USER_ID = re.compile(r"^@[a-z0-9._=/+-]+:[A-Za-z0-9.:\[\]-]+$")
Report = Callable[[dict[str, Any]], None]


class BootstrapError(RuntimeError):
    """The homeserver refused a step; the message says which and why."""


@dataclass(frozen=True)
class BootstrapSpec:
    """What the bootstrap needs (JSON keys of the same names on stdin).

    homeserver: client API base URL, e.g. http://service-matrix-dk:8008.
    registration_shared_secret: the homeserver's (homeserver.yaml).
    token_file: where the bot's access token goes (the relay's MATRIX_RELAY_TOKEN_FILE).
    token_file_owner: [uid, gid] to chown the token file to (the relay's user), or None.
    bot: the bot's localpart.
    bot_password: its password; None: derived from the registration secret.
    display_name: the bot's display name (set at registration).
    room_alias: localpart of the room alias; the room is #<room_alias>:<server_name>.
    room_name, room_topic: set when the room is created.
    operators: Matrix IDs to invite (any homeserver the pod federates with).
    timeout: seconds per request.
    wait_seconds: how long to wait for a homeserver that does not answer yet (just started).
    """

    homeserver: str
    registration_shared_secret: str = field(repr=False)
    token_file: Path
    token_file_owner: tuple[int, int] | None = None
    bot: str = "alerts"
    bot_password: str | None = field(default=None, repr=False)
    display_name: str = "UnityPlan alerts"
    room_alias: str = "alerts"
    room_name: str = "UnityPlan alerts"
    room_topic: str = "Alertmanager notifications of the UnityPlan platform"
    operators: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    wait_seconds: float = 60.0

    def __post_init__(self) -> None:
        MatrixClient(self.homeserver)  # validates the URL
        if not (0 < self.timeout <= 300 and 0 <= self.wait_seconds <= 3600):
            raise ValueError("timeout and wait_seconds are seconds (0 < timeout <= 300)")
        if not self.registration_shared_secret:
            raise ValueError("registration_shared_secret is empty")
        for what, localpart in (("bot", self.bot), ("room_alias", self.room_alias)):
            if not _LOCALPART.fullmatch(localpart):
                raise ValueError(f"{what} {localpart!r} is not a Matrix localpart (a-z0-9._=/+-)")
        if isinstance(self.operators, str):
            raise ValueError("operators is a list of Matrix IDs, not one string")
        for operator in self.operators:
            if not _USER_ID.fullmatch(operator):
                raise ValueError(f"operator {operator!r} is not a Matrix user ID (@user:server)")
        if self.bot_password == "":
            raise ValueError("bot_password is empty (leave it out to derive one)")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> BootstrapSpec:
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown spec keys {unknown}; known: {sorted(known)}")
        values = dict(data)
        for key in ("homeserver", "registration_shared_secret", "token_file"):
            if not values.get(key):
                raise ValueError(f"the spec needs {key!r}")
        values["token_file"] = Path(values["token_file"])
        if values.get("token_file_owner") is not None:
            uid, gid = values["token_file_owner"]
            values["token_file_owner"] = (int(uid), int(gid))
        values["operators"] = tuple(values.get("operators") or ())
        return cls(**values)

    @property
    def password(self) -> str:
        if self.bot_password is not None:
            return self.bot_password
        return derived_password(self.registration_shared_secret, self.bot)


def derived_password(registration_shared_secret: str, bot: str) -> str:
    """The bot's default password: an HMAC of its localpart under the registration secret."""
    key = registration_shared_secret.encode()
    return hmac.new(key, _PASSWORD_CONTEXT + bot.encode(), hashlib.sha256).hexdigest()


def registration_mac(
    registration_shared_secret: str,
    nonce: str,
    user: str,
    password: str,
    admin: bool = False,
    user_type: str | None = None,
) -> str:
    """The `mac` of Synapse's shared-secret registration (its admin API documentation)."""
    mac = hmac.new(registration_shared_secret.encode(), digestmod=hashlib.sha1)
    mac.update(nonce.encode())
    mac.update(b"\x00")
    mac.update(user.encode())
    mac.update(b"\x00")
    mac.update(password.encode())
    mac.update(b"\x00")
    mac.update(b"admin" if admin else b"notadmin")
    if user_type:
        mac.update(b"\x00")
        mac.update(user_type.encode())
    return mac.hexdigest()


@dataclass(frozen=True)
class BootstrapResult:
    user_id: str
    room_id: str
    room_alias: str
    changed: bool


def bootstrap(spec: BootstrapSpec, report: Report = lambda line: None) -> BootstrapResult:
    """Make the bot, its token file, the room and the invitations exist; see the module doc."""
    changes: list[str] = []

    def step(line: dict[str, Any], changed: bool) -> None:
        if changed:
            changes.append(line["step"])
        report({**line, "changed": changed})

    _wait_for_homeserver(spec)
    bot = _bot_client(spec, step)
    user_id = bot.whoami()
    server_name = user_id.split(":", 1)[1]
    alias = f"#{spec.room_alias}:{server_name}"
    room_id = _room(spec, bot, user_id, alias, step)
    for operator in spec.operators:
        _invite(bot, room_id, operator, step)
    return BootstrapResult(user_id, room_id, alias, bool(changes))


def _wait_for_homeserver(spec: BootstrapSpec) -> None:
    """Until the client API answers (any HTTP status), at most `wait_seconds`."""
    anonymous = MatrixClient(spec.homeserver, None, spec.timeout)
    deadline = time.monotonic() + spec.wait_seconds
    while True:
        try:
            anonymous.request("GET", "/_matrix/client/versions", authenticated=False)
            return
        except MatrixError as error:
            if error.status != 0:
                return  # it answers; the steps report what it says
            if time.monotonic() >= deadline:
                raise BootstrapError(
                    f"homeserver {spec.homeserver} did not answer within"
                    f" {spec.wait_seconds:g} s: {error.error}"
                ) from None
        time.sleep(1.0)


def _bot_client(spec: BootstrapSpec, step: Callable[[dict[str, Any], bool], None]) -> MatrixClient:
    token = _current_token(spec)
    if token is not None:
        client = MatrixClient(spec.homeserver, token, spec.timeout)
        try:
            user_id = client.whoami()
        except MatrixError as error:
            if error.status != 401:
                raise
        else:
            if user_id.startswith(f"@{spec.bot}:"):
                _own_token_file(spec)
                step({"step": "token", "action": "kept", "user_id": user_id}, False)
                return client
    token = _register(spec, step) or _login(spec, step)
    _write_token(spec, token)
    return MatrixClient(spec.homeserver, token, spec.timeout)


def _current_token(spec: BootstrapSpec) -> str | None:
    try:
        token = spec.token_file.read_text().strip()
    except FileNotFoundError:
        return None
    return token or None


def _register(spec: BootstrapSpec, step: Callable[[dict[str, Any], bool], None]) -> str | None:
    """Register the bot; its access token, or None if the user exists already."""
    anonymous = MatrixClient(spec.homeserver, None, spec.timeout)
    nonce = str(anonymous.request("GET", REGISTER_PATH, authenticated=False)["nonce"])
    body = {
        "nonce": nonce,
        "username": spec.bot,
        "password": spec.password,
        "displayname": spec.display_name,
        "admin": False,
        "user_type": USER_TYPE,
        "mac": registration_mac(
            spec.registration_shared_secret, nonce, spec.bot, spec.password, False, USER_TYPE
        ),
    }
    try:
        reply = anonymous.request("POST", REGISTER_PATH, body, authenticated=False)
    except MatrixError as error:
        if error.errcode == "M_USER_IN_USE":
            step({"step": "user", "action": "exists"}, False)
            return None
        if error.status == 403:
            raise BootstrapError(
                f"shared-secret registration refused ({error}): is registration_shared_secret"
                " the homeserver's?"
            ) from None
        raise
    step({"step": "user", "action": "registered", "user_id": reply["user_id"]}, True)
    return str(reply["access_token"])


def _login(spec: BootstrapSpec, step: Callable[[dict[str, Any], bool], None]) -> str:
    anonymous = MatrixClient(spec.homeserver, None, spec.timeout)
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": spec.bot},
        "password": spec.password,
        "device_id": DEVICE_ID,
        "initial_device_display_name": "alert relay",
    }
    try:
        reply = anonymous.request("POST", f"{CLIENT_API}/login", body, authenticated=False)
    except MatrixError as error:
        if error.status == 403:
            raise BootstrapError(
                f"the bot @{spec.bot} exists but its password is not the one given or derived"
                f" ({error}); reset it with the admin API or pass bot_password"
            ) from None
        raise
    step({"step": "token", "action": "issued", "user_id": reply["user_id"]}, True)
    return str(reply["access_token"])


def _write_token(spec: BootstrapSpec, token: str) -> None:
    """Atomically, 0600 from the start: never a moment with the token readable by others."""
    path = spec.token_file
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=".token-", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(token)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _own_token_file(spec)


def _own_token_file(spec: BootstrapSpec) -> None:
    os.chmod(spec.token_file, 0o600)
    if spec.token_file_owner is not None:
        uid, gid = spec.token_file_owner
        stat = spec.token_file.stat()
        if (stat.st_uid, stat.st_gid) != (uid, gid):
            os.chown(spec.token_file, uid, gid)


def _room(
    spec: BootstrapSpec,
    bot: MatrixClient,
    user_id: str,
    alias: str,
    step: Callable[[dict[str, Any], bool], None],
) -> str:
    room_id = bot.resolve_alias(alias)
    if room_id is None:
        body = {
            "preset": "private_chat",
            "visibility": "private",
            "room_alias_name": spec.room_alias,
            "name": spec.room_name,
            "topic": spec.room_topic,
        }
        try:
            room_id = str(bot.request("POST", f"{CLIENT_API}/createRoom", body)["room_id"])
        except MatrixError as error:
            if error.errcode != "M_ROOM_IN_USE":  # created meanwhile: reuse it below
                raise
        else:
            step({"step": "room", "action": "created", "room_id": room_id, "alias": alias}, True)
            return room_id
        room_id = bot.resolve_alias(alias)
        if room_id is None:
            raise BootstrapError(f"{alias} is taken but does not resolve")
    if bot.membership(room_id, user_id) == "join":
        step({"step": "room", "action": "exists", "room_id": room_id, "alias": alias}, False)
        return room_id
    try:
        bot.join(room_id)
    except MatrixError as error:
        raise BootstrapError(
            f"{alias} ({room_id}) exists but the bot cannot join it ({error}): invite"
            f" {user_id} from the room, or remove the alias"
        ) from None
    step({"step": "room", "action": "joined", "room_id": room_id, "alias": alias}, True)
    return room_id


def _invite(
    bot: MatrixClient, room_id: str, operator: str, step: Callable[[dict[str, Any], bool], None]
) -> None:
    membership = bot.membership(room_id, operator)
    if membership is not None:
        step({"step": "invite", "user": operator, "action": f"none ({membership})"}, False)
        return
    try:
        bot.request("POST", f"{CLIENT_API}/rooms/{quote(room_id)}/invite", {"user_id": operator})
    except MatrixError as error:
        raise BootstrapError(f"cannot invite {operator}: {error}") from None
    step({"step": "invite", "user": operator, "action": "invited"}, True)


def run(stdin_text: str, emit: Callable[[str], None]) -> int:
    """The `bootstrap` command: spec JSON in, JSON lines out; 0 done, 1 failed."""
    try:
        spec = BootstrapSpec.from_json(json.loads(stdin_text))
        result = bootstrap(spec, lambda line: emit(json.dumps(line)))
    except (ValueError, TypeError, KeyError, BootstrapError, MatrixError, OSError) as error:
        emit(json.dumps({"error": f"{type(error).__name__}: {error}"}))
        return 1
    emit(json.dumps({"user_id": result.user_id, "room_id": result.room_id,
                     "room_alias": result.room_alias, "changed": result.changed}))  # fmt: skip
    return 0
