"""`verify`'s contract without any service: exit codes, unreadable outputs, and a bounded
run time when endpoints accept connections and then never answer."""

from __future__ import annotations

import copy
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from tests.support.mocks import run_program
from tests.support.stackfile import stack_config

ROOT = Path(__file__).resolve().parents[2]


def verify(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "unityplan_infra", "verify", *args], cwd=ROOT,
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def outputs() -> dict[str, object]:
    return copy.deepcopy(run_program(stack_config("dev")).exports)


def test_unreadable_outputs_exit_2(tmp_path: Path) -> None:
    missing = verify("--outputs", str(tmp_path / "none.json"))
    assert missing.returncode == 2 and "cannot read" in missing.stderr
    (tmp_path / "bad.json").write_text("{not json")
    assert verify("--outputs", str(tmp_path / "bad.json")).returncode == 2
    (tmp_path / "hidden.json").write_text(json.dumps({"natsClientPassword": "[secret]"}))
    hidden = verify("--outputs", str(tmp_path / "hidden.json"))
    assert hidden.returncode == 2 and "--show-secrets" in hidden.stderr


def test_outputs_of_an_older_program_name_what_is_missing(
    tmp_path: Path, outputs: dict[str, object]
) -> None:
    older = copy.deepcopy(outputs)
    del older["nats"]
    (tmp_path / "older.json").write_text(json.dumps(older))
    result = verify("--outputs", str(tmp_path / "older.json"))
    assert result.returncode == 2
    assert "nats: Field required" in result.stderr and "deploy this version" in result.stderr


def test_unknown_service_is_bad_usage(tmp_path: Path, outputs: dict[str, object]) -> None:
    (tmp_path / "o.json").write_text(json.dumps(outputs))
    result = verify("--outputs", str(tmp_path / "o.json"), "--only", "postgres,kafka")
    assert result.returncode == 2 and "unknown service(s) kafka" in result.stderr


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def test_a_platform_that_never_answers_fails_within_the_bound(
    tmp_path: Path, outputs: dict[str, object], black_hole: int
) -> None:
    def into_the_hole(url: str) -> str:
        return urlunsplit(urlsplit(url)._replace(netloc=f"127.0.0.1:{black_hole}"))

    hung = copy.deepcopy(outputs)
    for pod in hung["pods"].values():  # type: ignore[attr-defined]
        pod["endpoints"] = {k: into_the_hole(v) for k, v in pod["endpoints"].items()}
    hung["urls"] = {k: into_the_hole(v) for k, v in hung["urls"].items()}  # type: ignore[attr-defined]
    (tmp_path / "hung.json").write_text(json.dumps(hung))
    started = time.monotonic()
    result = verify("--outputs", str(tmp_path / "hung.json"), "--json", "--timeout", "1")
    seconds = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    report = json.loads(result.stdout)
    assert report["passed"] == 0 and report["failed"] >= 3 * 5 + 2
    # 4 probe timeouts bound the checks; interpreter start and imports come on top.
    assert seconds < 4 * 1 + 5, seconds
