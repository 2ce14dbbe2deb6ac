"""The Matrix alert relay as `pulumi up` ships it, and HTTP helpers for lab namespaces.

The relay is the program's own zip application (render/matrix_relay_job.py), run by the
base interpreter (not the venv) with `-I -S`: no site-packages at all, so anything beyond
the standard library fails here as it would in the stock python image.
"""

from __future__ import annotations

import atexit
import json
import shutil
import sys
import tempfile
import urllib.parse
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from tests.support.netns import NetnsLab
from unityplan_infra.alerting.bootstrap import REGISTER_PATH, registration_mac
from unityplan_infra.render.matrix_relay_job import RELAY_FILE, build_matrix_relay

# The interpreter the venv was made from: only its standard library is there.
BASE_PYTHON = Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"
CLIENT = "/_matrix/client/v3"


@cache
def relay_file() -> Path:
    """The archive, built by the program's own code, in a directory readable by all."""
    directory = Path(tempfile.mkdtemp(prefix="unityplan-matrix-relay-"))
    atexit.register(shutil.rmtree, directory, True)
    directory.chmod(0o755)
    path = directory / RELAY_FILE
    path.write_bytes(build_matrix_relay().archive)
    path.chmod(0o644)
    return path


def relay_argv(*args: str) -> list[str]:
    return [str(BASE_PYTHON), "-I", "-S", str(relay_file()), *args]


@dataclass(frozen=True)
class Reply:
    status: int
    text: str

    @property
    def json(self) -> Any:
        return json.loads(self.text) if self.text.strip() else None


def call(
    lab: NetnsLab,
    host: str,
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    timeout: float = 15.0,
) -> Reply:
    """One HTTP request with curl from inside `host`; any status is returned, not raised."""
    argv = ["curl", "-sS", "-X", method, "--max-time", str(timeout), "-w", "\n%{http_code}"]
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    stdin = None
    if body is not None:
        all_headers["Content-Type"] = "application/json"
        argv += ["--data-binary", "@-"]
        stdin = body if isinstance(body, str) else json.dumps(body)
    for name, value in all_headers.items():
        argv += ["-H", f"{name}: {value}"]
    result = lab.run(host, [*argv, url], stdin=stdin, timeout=timeout + 5, check=False)
    text, _, status = result.stdout.rpartition("\n")
    if not status.isdigit():
        raise AssertionError(f"curl {method} {url} failed: {result.stdout}{result.stderr}")
    return Reply(int(status), text)


def quote(segment: str) -> str:
    return urllib.parse.quote(segment, safe="")


@dataclass(frozen=True)
class MatrixUser:
    """A user of the lab's homeserver, with an access token; requests from `host`."""

    lab: NetnsLab
    host: str
    homeserver: str
    user_id: str
    token: str

    def call(self, method: str, path: str, body: Any = None) -> Reply:
        return call(self.lab, self.host, method, self.homeserver + path, body, token=self.token)

    def ok(self, method: str, path: str, body: Any = None) -> Any:
        reply = self.call(method, path, body)
        assert reply.status == 200, f"{method} {path}: {reply}"
        return reply.json

    def join(self, room: str) -> str:
        return str(self.ok("POST", f"{CLIENT}/join/{quote(room)}", {})["room_id"])

    def messages(self, room_id: str, limit: int = 100) -> list[dict[str, Any]]:
        """The room's latest `m.room.message` events, oldest first."""
        query = urllib.parse.urlencode({"dir": "b", "limit": str(limit)})
        chunk = self.ok("GET", f"{CLIENT}/rooms/{quote(room_id)}/messages?{query}")["chunk"]
        return [event for event in reversed(chunk) if event["type"] == "m.room.message"]

    def state(self, room_id: str) -> list[dict[str, Any]]:
        state: list[dict[str, Any]] = self.ok("GET", f"{CLIENT}/rooms/{quote(room_id)}/state")
        return state


def register(
    lab: NetnsLab, host: str, homeserver: str, secret: str, name: str, password: str
) -> MatrixUser:
    """A new ordinary user, through Synapse's shared-secret registration."""
    nonce = call(lab, host, "GET", homeserver + REGISTER_PATH).json["nonce"]
    body = {"nonce": nonce, "username": name, "password": password, "admin": False,
            "mac": registration_mac(secret, nonce, name, password)}  # fmt: skip
    reply = call(lab, host, "POST", homeserver + REGISTER_PATH, body)
    assert reply.status == 200, reply
    return MatrixUser(lab, host, homeserver, reply.json["user_id"], reply.json["access_token"])
