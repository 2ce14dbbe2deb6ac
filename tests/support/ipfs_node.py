"""A real IPFS node on loopback for the IPFS backup tests: js-ipfs 0.66.1 (`jsipfs daemon`),
whose HTTP RPC API serves the kubo endpoints the backup uses. Installed by
tests/support/install_ipfs.sh; real kubo cannot be installed on these machines.

Each node has its own repo (IPFS_PATH) in a temporary directory, runs `--offline` (no
bootstrap peers, no network beyond loopback) and takes free loopback ports, which it prints
when it is ready."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from types import TracebackType
from typing import Any

DEFAULT_JSIPFS = Path("/opt/unityplan-ipfs/node_modules/.bin/jsipfs")
API_LINE = re.compile(r"HTTP API listening on /ip4/127\.0\.0\.1/tcp/(\d+)/http")
_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"


def jsipfs() -> Path:
    path = Path(os.environ.get("UNITYPLAN_JSIPFS", DEFAULT_JSIPFS))
    if not path.is_file():
        raise RuntimeError(
            f"{path} is missing: run tests/support/install_ipfs.sh (or set UNITYPLAN_JSIPFS)"
        )
    return path


def loopback_only(config: dict[str, Any]) -> dict[str, Any]:
    """A js-ipfs config on loopback only: no bootstrap, discovery, delegates or gateway."""
    config["Addresses"].update(
        API="/ip4/127.0.0.1/tcp/0", Gateway="", RPC="", Swarm=["/ip4/127.0.0.1/tcp/0"],
        Announce=[], Delegates=[],
    )  # fmt: skip
    config["Bootstrap"] = []
    config["Discovery"] = {"MDNS": {"Enabled": False}, "webRTCStar": {"Enabled": False}}
    return config


def start_daemon(
    repo: Path, log: Path, *, offline: bool, timeout: float
) -> tuple[subprocess.Popen[bytes], str]:
    """`jsipfs daemon` on the prepared `repo`; returns it and its RPC API URL once ready."""
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [str(jsipfs()), "daemon", *(["--offline"] if offline else []),
             "--enable-preload=false"],
            env={**os.environ, "IPFS_PATH": str(repo)},
            stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    deadline = time.monotonic() + timeout
    while True:
        text = log.read_text(errors="replace")
        port = API_LINE.search(text)
        if port and "Daemon is ready" in text:
            return process, f"http://127.0.0.1:{port.group(1)}"
        if process.poll() is not None or time.monotonic() > deadline:
            stop_daemon(process)
            raise RuntimeError(f"jsipfs daemon did not start:\n{text[-3000:]}")
        time.sleep(0.1)


def stop_daemon(process: subprocess.Popen[bytes] | None) -> None:
    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)  # the daemon's own group (start_new_session)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class IpfsNode:
    """One js-ipfs daemon; `url` is its RPC API (`http://127.0.0.1:PORT`)."""

    def __init__(self, workdir: Path, start_timeout: float = 60.0) -> None:
        self.repo = workdir / "repo"
        self.log = workdir / "daemon.log"
        self.start_timeout = start_timeout
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None
        self._env = {**os.environ, "IPFS_PATH": str(self.repo)}

    def __enter__(self) -> IpfsNode:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        subprocess.run(
            [str(jsipfs()), "init", "--profile", "test", "--emptyRepo"], env=self._env,
            check=True, capture_output=True, timeout=self.start_timeout,
        )  # fmt: skip
        config_path = self.repo / "config"
        config = loopback_only(json.loads(config_path.read_text()))
        config_path.write_text(json.dumps(config, indent=1))
        self._process, self.url = start_daemon(
            self.repo, self.log, offline=True, timeout=self.start_timeout
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_daemon(process)

    # --- RPC calls the tests use beside the backup module -------------------------------

    def call(
        self,
        command: str,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = "",
        timeout: float = 20.0,
    ) -> bytes:
        query = urllib.parse.urlencode(params or {})
        request = urllib.request.Request(
            f"{self.url}/api/v0/{command}" + (f"?{query}" if query else ""), data=body,
            method="POST", headers={"Content-Type": content_type} if content_type else {},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=timeout) as response:
            data: bytes = response.read()
        return data

    def add(
        self, entries: dict[str, bytes | None], params: dict[str, str] | None = None
    ) -> dict[str, str]:
        """`add` files (bytes) and directories (None) by path; returns CID by path.
        Recursive pins are made for the top-level entries, as `ipfs add` does."""
        boundary = uuid.uuid4().hex
        parts: list[bytes] = []
        for path, data in entries.items():
            kind = "application/x-directory" if data is None else "application/octet-stream"
            parts.append(
                f'--{boundary}\r\nContent-Disposition: form-data; name="file";'
                f' filename="{urllib.parse.quote(path, safe="")}"\r\n'
                f"Content-Type: {kind}\r\n\r\n".encode()
                + (data or b"")
                + b"\r\n"
            )
        body = b"".join(parts) + f"--{boundary}--\r\n".encode()
        answer = self.call(
            "add", {"pin": "true", **(params or {})}, body,
            f"multipart/form-data; boundary={boundary}",
        )  # fmt: skip
        lines = [json.loads(line) for line in answer.splitlines() if line.strip()]
        return {line["Name"]: line["Hash"] for line in lines}

    def cat(self, path: str, timeout: float = 10.0) -> bytes:
        return self.call("cat", {"arg": path}, timeout=timeout)

    def recursive_pins(self) -> dict[str, dict[str, Any]]:
        answer = json.loads(self.call("pin/ls", {"type": "recursive", "names": "true"}))
        keys: dict[str, dict[str, Any]] = answer.get("Keys") or {}
        return keys

    def unpin_all_and_gc(self) -> None:
        for cid in self.recursive_pins():
            self.call("pin/rm", {"arg": cid})
        self.call("repo/gc", timeout=30)

    def repo_objects(self) -> int:
        return int(json.loads(self.call("repo/stat"))["NumObjects"])

    def refs(self, cid: str) -> list[str]:
        answer = self.call("refs", {"arg": cid, "recursive": "true"})
        return [json.loads(line)["Ref"] for line in answer.splitlines() if line.strip()]

    def block_file(self, cid: str) -> Path:
        """Where the repo keeps the block of a CIDv0 (`Qm...`): js-ipfs's blockstore names
        it by its multihash in base32, sharded by the two characters before the last."""
        number = 0
        for char in cid:
            number = number * 58 + _B58.index(char)
        key = base64.b32encode(number.to_bytes(34, "big")).decode().rstrip("=")
        return self.repo / "blocks" / key[-3:-1] / f"{key}.data"
