"""One S3-compatible server (moto in server mode) per test session, on loopback.

    server = MotoS3.shared()          # started on first use, stopped at interpreter exit
    server.create_bucket("backups")   # plain S3 PUT /<bucket>
    server.endpoint                   # "http://127.0.0.1:<port>"

moto keeps everything in memory and accepts any access key unless told otherwise; buckets
are the isolation between tests (and repository paths inside them).
"""

from __future__ import annotations

import atexit
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

MOTO_SERVER = Path(sys.prefix) / "bin" / "moto_server"
ACCESS_KEY_ID = "unityplan-test"
SECRET_ACCESS_KEY = "unityplan-test-secret"
REGION = "us-east-1"


def free_port() -> int:
    """A loopback TCP port nothing listens on (the kernel's choice, released at once)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class MotoS3:
    _shared: MotoS3 | None = None
    _lock = threading.Lock()

    def __init__(self, port: int) -> None:
        self.port = port
        self.endpoint = f"http://127.0.0.1:{port}"
        self.log = Path(tempfile.mkstemp(prefix="moto-", suffix=".log")[1])
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY_ID,
                     "AWS_SECRET_ACCESS_KEY": SECRET_ACCESS_KEY},
            )  # fmt: skip

    @classmethod
    def shared(cls) -> MotoS3:
        with cls._lock:
            if cls._shared is None or cls._shared.process.poll() is not None:
                server = cls(free_port())
                try:
                    server.wait_ready()
                except BaseException:
                    server.stop()
                    raise
                atexit.register(server.stop)
                cls._shared = server
            return cls._shared

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise AssertionError(f"moto_server exited: {self.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/", timeout=2) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"moto_server not ready in {timeout}s")
            time.sleep(0.1)

    def request(self, method: str, path: str) -> int:
        """An unsigned S3 request (moto accepts any); returns the HTTP status."""
        request = urllib.request.Request(f"{self.endpoint}/{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return int(response.status)
        except urllib.error.HTTPError as error:
            return int(error.code)

    def create_bucket(self, name: str) -> None:
        status = self.request("PUT", name)
        assert status == 200, f"creating bucket {name}: HTTP {status}"

    def bucket_exists(self, name: str) -> bool:
        return self.request("HEAD", name) == 200

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.log.unlink(missing_ok=True)
