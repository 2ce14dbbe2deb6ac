"""IPFS (kubo) content of a pod: every recursive pin, exported as a CAR file with its blocks.

Through kubo's RPC API (the pod network reaches `service-ipfs-<code>:5001`):

- backup: `pin/ls?type=recursive&names=true` lists the pins; `dag/export?arg=<cid>` streams
  each pinned DAG as a CAR (blocks included), so a restored node serves what it served. A
  manifest keeps the pin list (CID, name). Exports run with `offline=true`: a pinned DAG is
  local by definition, so a missing block means a damaged repo, and kubo should say so at
  once rather than search the network for it.
- restore: `dag/import?pin-roots=true` takes each CAR back and pins its root; a pin that had
  a name gets it back with `pin/add?arg=<cid>&name=<name>` (kubo: "Pinning a second time with
  a different name will update the name of the pin"; boxo's pinner replaces the recursive
  pin). Importing adds blocks and pins and never removes any, so it cannot destroy data:
  there is nothing to refuse (no `--force` needed), and running it twice changes nothing.
  (On kubo, `dag/import` re-pins an existing root under the empty name, and the `pin/add`
  that follows puts the name back: a second restore briefly shows a named pin unnamed.)

Errors that happen after kubo has begun a streamed answer (a block missing half-way through
an export) arrive with status 200 and an HTTP trailer, `X-Stream-Error` (go-ipfs-cmds,
http/responseemitter.go). The standard library discards trailers, so a truncated CAR would
pass for a complete one; `_TrailerResponse` keeps that trailer and every call checks it.

Why not copy kubo's repo directory: its datastore is not consistent while kubo runs, and a
copy would also carry the node's identity (which the program generates) and config.

kubo itself does not install on the build machines. tests/realsw/test_backup_ipfs.py runs
this module against js-ipfs 0.66.1 (a real node serving the same RPC endpoints), which
differs from kubo v0.32.1 in ways this module allows for:

- js-ipfs has no pin names: `pin/ls` entries carry no `Name` (kubo's always do with
  `names=true`, "" when unnamed) and `pin/add` ignores `name`. Names are therefore read
  with a default of "" and their restore is checked against kubo's source only.
- js-ipfs ignores `offline=true`: an export of a damaged DAG waits for the missing block
  until the client's timeout instead of failing at once.
- js-ipfs prints CIDv1 in base58btc (`zb2...`) in `pin/ls` but in base32 (`bafk...`) in
  `dag/import`'s roots; kubo prints base32 in both. CIDs are compared in binary
  (`cid_bytes`). Asking for `cid-base=base32` instead would not do: kubo then also
  upgrades CIDv0 pins to CIDv1 in `pin/ls` (cmdenv/cidbase.go), which `dag/import` does not.
- js-ipfs's `X-Stream-Error` value is JSON (`{"Message": ...}`), kubo's is the plain
  message; both are shown as they come.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from unityplan_infra.backup.errors import BackupError

MANIFEST = "pins.json"
CHUNK = 1 << 20
DEFAULT_TIMEOUT = 600.0  # seconds without a byte from kubo; large DAGs stream for a while
STREAM_ERROR = "x-stream-error"
_MAX_TRAILER_LINE = 65536


class _TrailerResponse(http.client.HTTPResponse):
    """An HTTP response that keeps the `X-Stream-Error` trailer of a chunked body.

    `http.client` reads the trailer section in `_read_and_discard_trailer` (CPython 3.8 up
    to at least 3.13), called once the last chunk has been read; this override reads the
    same lines and keeps that field instead of dropping it."""

    stream_error = ""

    def _read_and_discard_trailer(self) -> None:
        while True:
            line = self.fp.readline(_MAX_TRAILER_LINE + 1)
            if len(line) > _MAX_TRAILER_LINE:
                raise http.client.LineTooLong("trailer line")
            if line in (b"\r\n", b"\n", b""):
                return
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == STREAM_ERROR:
                self.stream_error = value.strip()


class _Connection(http.client.HTTPConnection):
    response_class = _TrailerResponse


class _Handler(urllib.request.HTTPHandler):
    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_Connection, req)


# No proxies: kubo's RPC API is on the pod network, never behind an HTTP proxy.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _Handler)


@dataclass(frozen=True)
class KuboApi:
    """kubo's RPC API, e.g. `http://service-ipfs-dk:5001`."""

    url: str
    timeout: float = DEFAULT_TIMEOUT

    def _endpoint(self, command: str, params: Mapping[str, str]) -> str:
        query = urllib.parse.urlencode(params, doseq=True)
        return f"{self.url.rstrip('/')}/api/v0/{command}" + (f"?{query}" if query else "")

    def _open(
        self,
        command: str,
        params: Mapping[str, str],
        body: Iterator[bytes] | None = None,
        content_type: str = "",
    ) -> http.client.HTTPResponse:
        headers = {"Content-Type": content_type} if content_type else {}
        request = urllib.request.Request(
            self._endpoint(command, params), data=body, method="POST", headers=headers
        )
        try:
            response: http.client.HTTPResponse = _OPENER.open(request, timeout=self.timeout)
        except urllib.error.HTTPError as error:
            detail = _error_message(error.read(2000))
            error.close()
            raise BackupError(
                f"kubo {command} at {self.url} answered {error.code}: {detail}."
                " Fix: docker logs service-ipfs-<code>"
            ) from None
        except (OSError, http.client.HTTPException) as error:
            raise BackupError(
                f"kubo's API at {self.url} is unreachable ({error}). Fix: is service-ipfs-<code>"
                " running and on the pod network?"
            ) from None
        return response

    def _chunks(self, response: http.client.HTTPResponse, command: str) -> Iterator[bytes]:
        """The body of `response`, then a BackupError if kubo reported a late error."""
        while True:
            try:
                chunk = response.read(CHUNK)
            except (OSError, http.client.HTTPException) as error:
                raise BackupError(
                    f"kubo {command} at {self.url} broke off its answer ({error!r}; no byte"
                    f" for {self.timeout:g} s, or the connection was lost)."
                    " Fix: docker logs service-ipfs-<code>"
                ) from None
            if not chunk:
                break
            yield chunk
        stream_error = getattr(response, "stream_error", "")
        if stream_error:
            raise BackupError(
                f"kubo {command} at {self.url} failed after it began answering:"
                f" {_error_message(stream_error.encode())}. Fix: docker logs service-ipfs-<code>"
            )

    def _call(self, command: str, **params: str) -> bytes:
        with self._open(command, params) as response:
            return b"".join(self._chunks(response, command))

    def recursive_pins(self) -> dict[str, str]:
        """CID -> pin name ("" when unnamed) of every recursive pin."""
        answer = _json(self._call("pin/ls", type="recursive", names="true"), "pin/ls")
        keys = answer.get("Keys") or {}
        if not isinstance(keys, dict):
            raise BackupError(f"kubo's pin/ls answer has no Keys object: {answer!r:.200}")
        return {cid: str(info.get("Name") or "") for cid, info in sorted(keys.items())}

    def export(self, cid: str, target: Path) -> int:
        """Write the DAG under `cid` as a CAR to `target` (complete, or not at all)."""
        partial = target.with_name(target.name + ".part")
        try:
            with (
                self._open("dag/export", {"arg": cid, "offline": "true"}) as response,
                partial.open("wb") as out,
            ):
                for chunk in self._chunks(response, f"dag/export of {cid}"):
                    out.write(chunk)
            os.replace(partial, target)
        finally:
            partial.unlink(missing_ok=True)
        return target.stat().st_size

    def import_car(self, car: Path) -> list[str]:
        """Import one CAR file, pinning its roots; returns the pinned root CIDs."""
        boundary = uuid.uuid4().hex
        with self._open(
            "dag/import",
            {"pin-roots": "true"},
            _multipart_file(car, boundary),
            f"multipart/form-data; boundary={boundary}",
        ) as response:
            lines = b"".join(self._chunks(response, f"dag/import of {car.name}")).splitlines()
        roots: list[str] = []
        for line in filter(None, lines):
            root = _json(line, "dag/import").get("Root")
            if not root:
                continue  # e.g. {"Stats": ...}
            cid = str(root["Cid"]["/"])
            if root.get("PinErrorMsg"):
                raise BackupError(f"kubo could not pin {cid}: {root['PinErrorMsg']}")
            roots.append(cid)
        return roots

    def name_pin(self, cid: str, name: str) -> None:
        """Give the recursive pin of `cid` the name `name` (kubo replaces the pin)."""
        self._call("pin/add", arg=cid, name=name, recursive="true")


def _error_message(raw: bytes) -> str:
    """The message of a kubo error body (`{"Message": ..., "Code": ..., "Type": "error"}`)."""
    text = raw.decode(errors="replace").strip()
    try:
        value = json.loads(text)
    except ValueError:
        return text
    if isinstance(value, dict) and isinstance(value.get("Message"), str):
        return str(value["Message"])
    return text


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
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"'
        "\r\nContent-Type: application/vnd.ipld.car\r\n\r\n"
    ).encode()
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk
    yield f"\r\n--{boundary}--\r\n".encode()


_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def _base58(text: str) -> bytes:
    number = 0
    for char in text:
        number = number * 58 + _B58.index(char)  # ValueError outside the alphabet
    zeros = len(text) - len(text.lstrip("1"))
    return b"\0" * zeros + number.to_bytes((number.bit_length() + 7) // 8, "big")


def cid_bytes(cid: str) -> bytes:
    """The binary form of a CID string, to compare CIDs printed in different multibases
    (kubo prints CIDv1 in base32, `bafy...`; js-ipfs in base58btc, `zb2...`, in `pin/ls`
    and `add` but base32 in `dag/import`). A CID in a multibase not decoded here stays as
    its text, so it still equals itself."""
    try:
        if len(cid) == 46 and cid.startswith("Qm"):  # CIDv0: a bare base58btc multihash
            return _base58(cid)
        prefix, rest = cid[:1], cid[1:]
        if prefix in ("b", "B"):  # base32, RFC 4648 alphabet, no padding
            return base64.b32decode(rest.upper() + "=" * (-len(rest) % 8))
        if prefix == "z":
            return _base58(rest)
        if prefix in ("f", "F"):
            return bytes.fromhex(rest)
    except ValueError:
        pass
    return cid.encode()


def car_name(cid: str) -> str:
    if not cid.isalnum():
        raise BackupError(f"{cid!r} is not a CID")
    return f"{cid}.car"


def dump(api: KuboApi, out_dir: Path) -> dict[str, int]:
    """Export every recursive pin into `out_dir`; returns CAR sizes by CID.
    The manifest is written last: a snapshot without it is incomplete."""
    out_dir.mkdir(parents=True, exist_ok=True)
    pins = api.recursive_pins()
    sizes = {cid: api.export(cid, out_dir / car_name(cid)) for cid in pins}
    manifest = [{"cid": cid, "name": name} for cid, name in pins.items()]
    (out_dir / MANIFEST).write_text(json.dumps({"pins": manifest}, indent=1) + "\n")
    return sizes


def read_manifest(in_dir: Path) -> list[tuple[str, str]]:
    """(CID, name) of every pin in the snapshot's manifest."""
    path = in_dir / MANIFEST
    try:
        pins = json.loads(path.read_text())["pins"]
        entries = [(pin["cid"], pin.get("name") or "") for pin in pins]
    except FileNotFoundError:
        raise BackupError(
            f"no IPFS pin manifest in the snapshot: {path} is missing (an IPFS backup writes"
            " it last, so the dump did not finish). Fix: restore another snapshot"
        ) from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise BackupError(f"the IPFS pin manifest {path} is unreadable ({error!r})") from None
    for cid, name in entries:
        if not isinstance(cid, str) or not isinstance(name, str):
            raise BackupError(f"the IPFS pin manifest {path} has a bad entry: {cid!r} {name!r}")
    return entries


def restore(api: KuboApi, in_dir: Path) -> list[str]:
    """Import every CAR of the manifest, pinning its root; returns the restored pins."""
    entries = read_manifest(in_dir)
    for cid, _ in entries:  # all there before anything is imported
        car = in_dir / car_name(cid)
        if not car.is_file():
            raise BackupError(f"the snapshot lists pin {cid} but has no {car}")
    restored: list[str] = []
    for cid, name in entries:
        roots = api.import_car(in_dir / car_name(cid))
        if cid_bytes(cid) not in {cid_bytes(root) for root in roots}:
            raise BackupError(f"importing {car_name(cid)} pinned {roots} instead of {cid}")
        if name:
            api.name_pin(cid, name)
        restored.append(cid)
    return restored
