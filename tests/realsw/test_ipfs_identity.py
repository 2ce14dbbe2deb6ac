"""Program-made kubo identities on a real IPFS node: js-ipfs 0.66.1 (tests/support/
install_ipfs.sh; kubo cannot be installed on these machines).

What runs for real:
- `jsipfs init --private-key <Identity.PrivKey>`: js-libp2p decodes the program's key and
  derives the same peer ID; the daemon's `id` reports it and the program's public key.
- The kubo container's init script (render/ipfs.py INIT_SCRIPT_BODY), with `ipfs` being
  jsipfs and the mounted config dir a temporary one, on a repo that made its own identity
  at `init` (what every node deployed before had): afterwards the repo holds the program's
  identity, the rest of its config as before, and a second start changes nothing. It runs
  under the machine's `sh` and, where busybox is installed, under busybox's sh and applets
  (the kubo image is busybox-based; Debian's busybox has no `install`, the system's is used).
- Two daemons with program identities connect over loopback by `/p2p/<program peer ID>`:
  the libp2p handshake proves each holds the private key of the peer ID the program gave it
  (a wrong expected ID is refused).

What differs from kubo: js-ipfs writes its config as kubo does (2-space indented JSON,
"Identity" with "PeerID" and "PrivKey"), but it derives the peer ID from PrivKey alone,
where kubo also checks Identity.PeerID against it (core/node/identity.go); kubo's `ipfs
config` refusal to set Identity.PrivKey, why the script edits the file, is from kubo's
source (core/commands/config.go). js-ipfs has no `swarm peering`, so LIVE_APPLY is only
checked by shellcheck here.
"""

from __future__ import annotations

import base64
import json
import os
import random
import re
import shutil
import stat
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support.ipfs_node import jsipfs, loopback_only, start_daemon, stop_daemon
from unityplan_infra.crypto.keys import ipfs_peer_id, ipfs_private_key, libp2p_public_key
from unityplan_infra.render.ipfs import (
    IDENTITY_FILE,
    INIT_SCRIPT_BODY,
    LIVE_APPLY,
    MOUNT,
    render_identity,
)

pytestmark = pytest.mark.timeout(240)

SWARM_KEY = "/key/swarm/psk/1.0.0/\n/base16/\n" + "5a" * 32 + "\n"
BUSYBOX_APPLETS = ("sh", "awk", "sed", "cat", "rm", "grep")
SHELLS = [
    "sh",
    pytest.param(
        "busybox",
        # busybox: Debian package, installed by scripts/test.sh (the kubo image's shell).
    ),
]


@dataclass(frozen=True)
class Identity:
    seed: str  # the 32 random bytes, base64, as pulumi-random gives them
    peer_id: str
    private_key: str

    @property
    def public_key(self) -> str:
        """base64 of the libp2p PublicKey message, as `id` reports it."""
        raw = base64.b64decode(self.private_key)[4 + 32 :]  # Data = seed || public key
        return base64.b64encode(libp2p_public_key(raw)).decode()


def program_identity(number: int) -> Identity:
    seed = base64.b64encode(random.Random(f"ipfs-identity-{number}").randbytes(32)).decode()
    return Identity(seed, ipfs_peer_id(seed), ipfs_private_key(seed))


# --- a repo, the init script, a daemon ----------------------------------------------------


def run_jsipfs(repo: Path, *args: str) -> str:
    result = subprocess.run(
        [str(jsipfs()), *args], env={**os.environ, "IPFS_PATH": str(repo)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def init_repo(repo: Path, private_key: str | None = None) -> dict[str, Any]:
    """A new repo, on loopback only: no bootstrap, discovery, delegates or gateway."""
    run_jsipfs(repo, "init", "--profile", "test", "--emptyRepo",
               *(["--private-key", private_key] if private_key else []))  # fmt: skip
    config_path = repo / "config"
    config = loopback_only(json.loads(config_path.read_text()))
    # As js-ipfs writes it (2-space JSON, no final newline); kubo writes the same layout,
    # mode 0600 (config/serialize/serialize.go).
    config_path.write_text(json.dumps(config, indent=2))
    config_path.chmod(0o600)
    return config


# Stands in for kubo's CLI where only the script's own logic is under test: reads
# Identity.PeerID from the config file, accepts everything else.
FAKE_IPFS = """#!/bin/sh
case "$*" in
  "config Identity.PeerID") sed -n 's/^ *"PeerID": "\\([^"]*\\)".*/\\1/p' "$IPFS_PATH/config" ;;
esac
"""


def tools(directory: Path, shell: str, fake: bool) -> tuple[list[str], dict[str, str]]:
    """The command that runs a script, and its environment: `ipfs` is jsipfs (or a stand-in
    when `fake`); under busybox its applets come first on PATH."""
    directory.mkdir(parents=True, exist_ok=True)
    shim = directory / "ipfs"
    shim.write_text(FAKE_IPFS if fake else f'#!/bin/sh\nexec {jsipfs()} "$@"\n')
    shim.chmod(0o755)
    command = ["sh"]
    if shell == "busybox":
        busybox = shutil.which("busybox")
        assert busybox
        for applet in BUSYBOX_APPLETS:
            link = directory / applet
            if not link.is_symlink():
                link.symlink_to(busybox)
        command = [busybox, "sh"]
    return command, {**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ['PATH']}"}


def mounted_files(
    mount: Path, identity: Identity | None, peers: list[dict[str, Any]] | None = None
) -> None:
    """What the program writes to pods/<code>/ipfs (mounted at /unityplan)."""
    mount.mkdir(parents=True, exist_ok=True)
    (mount / "swarm.key").write_text(SWARM_KEY)
    if identity is not None:
        (mount / IDENTITY_FILE).write_text(render_identity(identity.peer_id, identity.private_key))
    if peers is not None:
        (mount / "peers.json").write_text(json.dumps(peers, indent=2) + "\n")


def run_init_script(
    workdir: Path, repo: Path, mount: Path, shell: str = "sh", fake: bool = False
) -> subprocess.CompletedProcess[str]:
    script = workdir / "init.sh"
    assert INIT_SCRIPT_BODY.count(MOUNT) == INIT_SCRIPT_BODY.count(f"{MOUNT}/")
    script.write_text(INIT_SCRIPT_BODY.replace(f"{MOUNT}/", f"{mount}/"))
    command, env = tools(workdir / f"bin-{shell}{'-fake' if fake else ''}", shell, fake)
    return subprocess.run(
        [*command, str(script)], env={**env, "IPFS_PATH": str(repo)},
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


class Daemon:
    """`jsipfs daemon` on a prepared repo; online (loopback only) unless `offline`."""

    def __init__(self, repo: Path, log: Path, offline: bool) -> None:
        self.repo, self.log, self.offline = repo, log, offline
        self.url = ""
        self._process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self._process, self.url = start_daemon(
            self.repo, self.log, offline=self.offline, timeout=timeout
        )

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_daemon(process)

    def call(self, command: str, *args: str, timeout: float = 20.0) -> Any:
        query = urllib.parse.urlencode([("arg", arg) for arg in args])
        request = urllib.request.Request(
            f"{self.url}/api/v0/{command}" + (f"?{query}" if query else ""), method="POST"
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read() or b"null")

    def swarm_address(self) -> str:
        """The node's TCP listen address on loopback, without /p2p/."""
        for address in self.call("id")["Addresses"]:
            found = re.fullmatch(r"(/ip4/127\.0\.0\.1/tcp/\d+)/p2p/\w+", address)
            if found:
                return found.group(1)
        raise AssertionError("no loopback TCP address")


@pytest.fixture(scope="module")
def self_made(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repo that made its own identity at `init`, as every node deployed before did;
    tests work on copies (an `init` takes seconds)."""
    repo = tmp_path_factory.mktemp("self-made") / "repo"
    init_repo(repo)
    return repo


def copy_of(template: Path, repo: Path) -> dict[str, Any]:
    shutil.copytree(template, repo)
    config: dict[str, Any] = json.loads((repo / "config").read_text())
    return config


@contextmanager
def daemon(repo: Path, offline: bool = True) -> Iterator[Daemon]:
    node = Daemon(repo, repo.parent / f"{repo.name}.log", offline)
    try:
        node.start()
        yield node
    finally:
        node.stop()


# --- the tests ----------------------------------------------------------------------------


@pytest.mark.parametrize("script", [INIT_SCRIPT_BODY, LIVE_APPLY], ids=["init", "live-apply"])
def test_scripts_pass_shellcheck(script: str) -> None:
    result = subprocess.run(["shellcheck", "--shell=sh", "-"], input=script,
                            capture_output=True, text=True, timeout=30, check=False)  # fmt: skip
    assert result.returncode == 0, result.stdout


def test_jsipfs_init_with_the_programs_private_key(tmp_path: Path) -> None:
    identity = program_identity(1)
    repo = tmp_path / "repo"
    config = init_repo(repo, identity.private_key)
    assert config["Identity"] == {"PeerID": identity.peer_id, "PrivKey": identity.private_key}
    with daemon(repo) as node:
        answer = node.call("id")
    assert answer["ID"] == identity.peer_id
    assert answer["PublicKey"] == identity.public_key


def test_init_script_gives_a_self_made_repo_the_programs_identity(
    tmp_path: Path, self_made: Path
) -> None:
    identity, other = program_identity(2), program_identity(3)
    repo, mount = tmp_path / "repo", tmp_path / "mount"
    before = copy_of(self_made, repo)
    assert before["Identity"]["PeerID"] != identity.peer_id  # made its own at init
    peers = [{"ID": other.peer_id, "Addrs": ["/ip4/127.0.0.1/tcp/4002"]}]
    mounted_files(mount, identity, peers)

    result = run_init_script(tmp_path, repo, mount)
    assert result.returncode == 0, result.stdout + result.stderr
    after = json.loads((repo / "config").read_text())
    assert after["Identity"] == {"PeerID": identity.peer_id, "PrivKey": identity.private_key}
    assert after["Bootstrap"] == [] and after["Peering"]["Peers"] == peers
    rest = {key for key in before if key not in ("Identity", "Bootstrap", "Peering")}
    assert {key: after[key] for key in rest} == {key: before[key] for key in rest}
    assert stat.S_IMODE((repo / "config").stat().st_mode) == 0o600  # still: the key is inside
    assert (repo / "swarm.key").read_text() == SWARM_KEY
    assert stat.S_IMODE((repo / "swarm.key").stat().st_mode) == 0o400
    assert not list(repo.glob(".config*")), "temporary file left in the repo"
    assert identity.private_key not in result.stdout + result.stderr

    # Every container start runs it again: nothing changes.
    written = (repo / "config").read_bytes()
    result = run_init_script(tmp_path, repo, mount)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (repo / "config").read_bytes() == written

    with daemon(repo) as node:
        answer = node.call("id")
    assert answer["ID"] == identity.peer_id
    assert answer["PublicKey"] == identity.public_key


def test_identity_step_under_busybox(tmp_path: Path, self_made: Path) -> None:
    """busybox's sh, awk, sed (the kubo image's), a stand-in for `ipfs`."""
    identity = program_identity(7)
    repo, mount = tmp_path / "repo", tmp_path / "mount"
    before = copy_of(self_made, repo)
    mounted_files(mount, identity)
    for _ in range(2):  # the second start changes nothing
        result = run_init_script(tmp_path, repo, mount, "busybox", fake=True)
        assert result.returncode == 0, result.stdout + result.stderr
        after = json.loads((repo / "config").read_text())
        assert after == {**before, "Identity": {"PeerID": identity.peer_id,
                                                "PrivKey": identity.private_key}}  # fmt: skip
        assert stat.S_IMODE((repo / "config").stat().st_mode) == 0o600
        assert not list(repo.glob(".config*"))


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(
    "content",
    ["", "PeerID=12D3KooWxyz\n", "PeerID=12D3KooW$(id)\nPrivKey=CAESQ\n",
     "PeerID=12D3KooWabc\nPrivKey=CAES&QQ==\n"],
    ids=["empty", "no-key", "bad-id", "bad-key"],
)  # fmt: skip
def test_init_script_refuses_a_broken_identity_file(
    tmp_path: Path, self_made: Path, shell: str, content: str
) -> None:
    repo, mount = tmp_path / "repo", tmp_path / "mount"
    copy_of(self_made, repo)
    mounted_files(mount, None)
    (mount / IDENTITY_FILE).write_text(content)
    config = (repo / "config").read_bytes()
    result = run_init_script(tmp_path, repo, mount, shell, fake=True)
    assert result.returncode != 0
    assert "unityplan:" in result.stderr
    assert (repo / "config").read_bytes() == config
    assert not list(repo.glob(".config*"))


def test_nodes_with_program_identities_authenticate_each_other(
    tmp_path: Path, self_made: Path
) -> None:
    first, second, stranger = program_identity(4), program_identity(5), program_identity(6)
    repos = {}
    for name, identity in (("first", first), ("second", second)):
        repo, mount = tmp_path / name, tmp_path / f"{name}-mount"
        copy_of(self_made, repo)
        mounted_files(mount, identity)
        result = run_init_script(tmp_path / name, repo, mount)
        assert result.returncode == 0, result.stdout + result.stderr
        repos[name] = repo
    with daemon(repos["first"], offline=False) as a, daemon(repos["second"], offline=False) as b:
        address = b.swarm_address()
        # Claiming the wrong identity for the second node fails the handshake.
        with pytest.raises(urllib.error.HTTPError):
            a.call("swarm/connect", f"{address}/p2p/{stranger.peer_id}")
        a.call("swarm/connect", f"{address}/p2p/{second.peer_id}")
        deadline = time.monotonic() + 20
        while True:
            peers = {peer["Peer"] for peer in b.call("swarm/peers")["Peers"] or []}
            if first.peer_id in peers or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert first.peer_id in peers
        assert {peer["Peer"] for peer in a.call("swarm/peers")["Peers"]} == {second.peer_id}
