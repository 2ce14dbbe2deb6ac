"""IPFS (kubo) content of a pod: every recursive pin, exported as a CAR file with its blocks.

Through kubo's RPC API (the pod network reaches `service-ipfs-<code>:5001`):

- backup: `pin/ls?type=recursive` lists the pins; `dag/export?arg=<cid>` streams each
  pinned DAG as a CAR (blocks included), so a restored node serves what it served. A
  manifest keeps the pin list (CID, optional name).
- restore: `dag/import` with `pin-roots=true` takes each CAR back and pins its root.
  Importing adds blocks and pins and never removes any, so it cannot destroy data: there is
  nothing to refuse (no `--force` needed), and running it twice changes nothing.

Why not copy kubo's repo directory: its datastore is not consistent while kubo runs, and a
copy would also carry the node's identity (which the program generates) and config.

kubo does not install on the build machines, so this module is tested against the RPC
API's documented shapes only (tests/unit/test_backup_ipfs.py), not against a real node.
"""

from __future__ import annotations

import json
import shutil
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from unityplan_infra.backup.errors import BackupError

MANIFEST = "pins.json"
CHUNK = 1 << 20
DEFAULT_TIMEOUT = 600.0  # one DAG export or import; large DAGs stream for a while


@dataclass(frozen=True)
class KuboApi:
    """kubo's RPC API, e.g. `http://service-ipfs-dk:5001`."""

    url: str
    timeout: float = DEFAULT_TIMEOUT

    def _endpoint(self, command: str, **params: str | list[str]) -> str:
        query = urllib.parse.urlencode(params, doseq=True)
        return f"{self.url.rstrip('/')}/api/v0/{command}" + (f"?{query}" if query else "")

    def _post(
        self, command: str, body: Iterator[bytes] | None = None, content_type: str = "",
        **params: str | list[str],
    ) -> BinaryIO:
        headers = {"Content-Type": content_type} if content_type else {}
        request = urllib.request.Request(
            self._endpoint(command, **params), data=body, method="POST", headers=headers
        )
        try:
            response: BinaryIO = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            detail = error.read(2000).decode(errors="replace")
            raise BackupError(
                f"kubo {command} at {self.url} answered {error.code}: {detail.strip()}."
                " Fix: docker logs service-ipfs-<code>"
            ) from None
        except OSError as error:
            raise BackupError(
                f"kubo's API at {self.url} is unreachable ({error}). Fix: is service-ipfs-<code>"
                " running and on the pod network?"
            ) from None
        return response

    def recursive_pins(self) -> dict[str, str]:
        """CID -> pin name ("" when unnamed) of every recursive pin."""
        with self._post("pin/ls", type="recursive", names="true") as response:
            keys = _json(response.read(), "pin/ls").get("Keys") or {}
        return {cid: str(info.get("Name", "")) for cid, info in sorted(keys.items())}

    def export(self, cid: str, target: Path) -> int:
        with self._post("dag/export", arg=cid) as response, target.open("wb") as out:
            shutil.copyfileobj(response, out, CHUNK)
        return target.stat().st_size

    def import_car(self, car: Path) -> list[str]:
        """Import one CAR file, pinning its roots; returns the pinned root CIDs."""
        boundary = uuid.uuid4().hex
        with self._post(
            "dag/import", _multipart_file(car, boundary),
            f"multipart/form-data; boundary={boundary}", **{"pin-roots": "true"},
        ) as response:
            lines = response.read().decode().splitlines()
        roots: list[str] = []
        for line in filter(None, lines):
            root = _json(line.encode(), "dag/import").get("Root")
            if not root:
                continue
            if root.get("PinErrorMsg"):
                raise BackupError(f"kubo could not pin {root['Cid']['/']}: {root['PinErrorMsg']}")
            roots.append(root["Cid"]["/"])
        return roots


def _json(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        raise BackupError(f"kubo's {what} answer is not JSON: {raw[:200]!r}") from None
    if not isinstance(value, dict):
        raise BackupError(f"kubo's {what} answer is not an object: {raw[:200]!r}")
    return value


def _multipart_file(path: Path, boundary: str) -> Iterator[bytes]:
    """multipart/form-data with one file part, streamed (a CAR can be larger than memory).
    The framing is RFC 7578's; the standard library's email package would buffer it all."""
    yield (
        f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{path.name}\""
        "\r\nContent-Type: application/vnd.ipld.car\r\n\r\n"
    ).encode()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


def car_name(cid: str) -> str:
    if not cid.isalnum():
        raise BackupError(f"{cid!r} is not a CID")
    return f"{cid}.car"


def dump(api: KuboApi, out_dir: Path) -> dict[str, int]:
    """Export every recursive pin into `out_dir`; returns CAR sizes by CID."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pins = api.recursive_pins()
    sizes = {cid: api.export(cid, out_dir / car_name(cid)) for cid in pins}
    manifest = [{"cid": cid, "name": name} for cid, name in pins.items()]
    (out_dir / MANIFEST).write_text(json.dumps({"pins": manifest}, indent=1) + "\n")
    return sizes


def restore(api: KuboApi, in_dir: Path) -> list[str]:
    """Import every CAR of the manifest, pinning its root; returns the restored pins."""
    try:
        manifest = json.loads((in_dir / MANIFEST).read_text())["pins"]
    except (OSError, ValueError, KeyError) as error:
        raise BackupError(f"no IPFS pin manifest in the snapshot ({error})") from None
    restored: list[str] = []
    for pin in manifest:
        roots = api.import_car(in_dir / car_name(pin["cid"]))
        if pin["cid"] not in roots:
            raise BackupError(f"importing {pin['cid']} pinned {roots} instead")
        restored.append(pin["cid"])
    return restored
