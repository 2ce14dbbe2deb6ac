"""The IPFS backup (unityplan_infra/backup/ipfs.py) against a real IPFS node on loopback.

kubo cannot be installed on these machines (its npm package downloads the binary from an
unreachable host), so the node is js-ipfs 0.66.1 (tests/support/install_ipfs.sh), whose
RPC API serves the same endpoints: pin/ls, dag/export, dag/import, pin/add. What differs
from kubo, and what is therefore checked against kubo's source only, is listed in the
module's docstring (pin names above all: js-ipfs has none).

One source node gets known content (text, an empty file, binary data over several blocks,
a nested directory, a CIDv1 file with raw leaves, a pin made with a name, and a file
added without a pin), is backed up with `dump`, and the snapshot is restored with
`restore` into a second node with a new repo, and into the source itself after every pin
was removed and the repo garbage-collected."""

from __future__ import annotations

import json
import random
import shutil
import socket
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ipfs_node import IpfsNode
from unityplan_infra.backup import ipfs
from unityplan_infra.backup.errors import BackupError

_rng = random.Random(20261128)
PHOTO = _rng.randbytes(700_000)  # three 256 KiB chunks: a root and leaves
LOGO = _rng.randbytes(300_000)
V1_DATA = _rng.randbytes(400_000)
DAMAGED_DATA = _rng.randbytes(600_000)

FILES = {"notes.txt": b"territory dk\nline two\n", "empty.txt": b"", "photo.bin": PHOTO}
SITE = {
    "site": None,
    "site/index.html": b"<h1>UnityPlan</h1>\n",
    "site/assets": None,
    "site/assets/logo.bin": LOGO,
    "site/assets/readme.md": "# æøå\n".encode(),
}


@dataclass
class Source:
    node: IpfsNode
    api: ipfs.KuboApi
    paths: dict[str, bytes]  # IPFS path (/ipfs/<cid>/...) -> the bytes it must serve
    pinned: set[str]  # CIDs of the recursive pins
    unpinned: str  # CID added without a pin: not part of the backup


@dataclass
class Snapshot:
    directory: Path
    sizes: dict[str, int]


def canonical(cids: Iterable[str]) -> set[bytes]:
    return {ipfs.cid_bytes(cid) for cid in cids}


def local_blocks(node: IpfsNode) -> set[bytes]:
    answer = node.call("refs/local")
    return canonical(json.loads(line)["Ref"] for line in answer.splitlines() if line.strip())


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    with IpfsNode(tmp_path_factory.mktemp("ipfs-source")) as node:
        paths: dict[str, bytes] = {}
        for name, data in FILES.items():
            cid = node.add({name: data})[name]
            paths[f"/ipfs/{cid}"] = data
        site = node.add(SITE)
        for name, content in SITE.items():
            if content is not None:
                paths[f"/ipfs/{site['site']}/{name.removeprefix('site/')}"] = content
        v1 = node.add({"v1.bin": V1_DATA}, {"cid-version": "1", "raw-leaves": "true"})["v1.bin"]
        paths[f"/ipfs/{v1}"] = V1_DATA
        named = node.add({"named.txt": b"release notes\n"}, {"pin": "false"})["named.txt"]
        node.call("pin/add", {"arg": named, "name": "release-2026"})  # js-ipfs: no names
        paths[f"/ipfs/{named}"] = b"release notes\n"
        unpinned = node.add({"scratch.txt": b"not pinned, not backed up\n"}, {"pin": "false"})
        pinned = set(node.recursive_pins())
        assert len(pinned) == len(FILES) + 3  # the files, the site, v1, named
        yield Source(node, ipfs.KuboApi(node.url, timeout=20), paths, pinned,
                     unpinned["scratch.txt"])  # fmt: skip


@pytest.fixture(scope="module")
def snapshot(source: Source, tmp_path_factory: pytest.TempPathFactory) -> Snapshot:
    directory = tmp_path_factory.mktemp("ipfs-snapshot")
    return Snapshot(directory, ipfs.dump(source.api, directory))


@pytest.fixture(scope="module")
def target(snapshot: Snapshot, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IpfsNode]:
    """A second node with a new repo (a new identity), empty; the tests restore into it."""
    with IpfsNode(tmp_path_factory.mktemp("ipfs-target")) as node:
        assert node.recursive_pins() == {}
        yield node


def assert_serves_everything(node: IpfsNode, source: Source) -> None:
    assert canonical(node.recursive_pins()) == canonical(source.pinned)
    for path, data in source.paths.items():
        assert node.cat(path) == data, path
    assert ipfs.cid_bytes(source.unpinned) not in local_blocks(node)


def test_dump_writes_one_car_per_recursive_pin_and_the_manifest(
    source: Source, snapshot: Snapshot
) -> None:
    assert set(snapshot.sizes) == source.pinned
    manifest = json.loads((snapshot.directory / ipfs.MANIFEST).read_text())
    assert {pin["cid"] for pin in manifest["pins"]} == source.pinned
    assert {pin["name"] for pin in manifest["pins"]} == {""}  # js-ipfs keeps no names
    files = {path.name for path in snapshot.directory.iterdir()}
    assert files == {ipfs.MANIFEST} | {ipfs.car_name(cid) for cid in source.pinned}
    for cid, size in snapshot.sizes.items():
        assert (snapshot.directory / ipfs.car_name(cid)).stat().st_size == size
    photo = next(cid for cid in source.pinned if f"/ipfs/{cid}" in source.paths
                 and source.paths[f"/ipfs/{cid}"] == PHOTO)  # fmt: skip
    assert snapshot.sizes[photo] > len(PHOTO)  # the blocks themselves, not a reference


def test_restore_into_a_new_node_pins_and_serves_everything_again(
    source: Source, snapshot: Snapshot, target: IpfsNode
) -> None:
    restored = ipfs.restore(ipfs.KuboApi(target.url, timeout=20), snapshot.directory)
    assert sorted(restored) == sorted(source.pinned)
    assert_serves_everything(target, source)


def test_restoring_twice_changes_nothing(
    source: Source, snapshot: Snapshot, target: IpfsNode
) -> None:
    api = ipfs.KuboApi(target.url, timeout=20)
    ipfs.restore(api, snapshot.directory)
    pins, blocks, objects = target.recursive_pins(), local_blocks(target), target.repo_objects()
    assert sorted(ipfs.restore(api, snapshot.directory)) == sorted(source.pinned)
    assert target.recursive_pins() == pins
    assert local_blocks(target) == blocks
    assert target.repo_objects() == objects
    assert_serves_everything(target, source)


def test_a_named_pin_is_pinned_again_under_its_name(
    source: Source, snapshot: Snapshot, target: IpfsNode, tmp_path: Path
) -> None:
    """js-ipfs accepts `pin/add?name=` and keeps no name; this runs the code path on a real
    API (the pin must survive it), the name itself is kubo's to keep."""
    renamed = tmp_path / "snapshot"
    shutil.copytree(snapshot.directory, renamed)
    manifest = json.loads((renamed / ipfs.MANIFEST).read_text())
    manifest["pins"][0]["name"] = "release-2026"
    (renamed / ipfs.MANIFEST).write_text(json.dumps(manifest))
    assert ipfs.read_manifest(renamed)[0][1] == "release-2026"
    ipfs.restore(ipfs.KuboApi(target.url, timeout=20), renamed)
    assert canonical(target.recursive_pins()) == canonical(source.pinned)


def test_restore_after_unpinning_everything_and_gc_on_the_same_node(
    source: Source, snapshot: Snapshot
) -> None:
    source.node.unpin_all_and_gc()
    assert source.node.recursive_pins() == {}
    assert not canonical(source.pinned) & local_blocks(source.node)  # really gone
    assert sorted(ipfs.restore(source.api, snapshot.directory)) == sorted(source.pinned)
    assert canonical(source.node.recursive_pins()) == canonical(source.pinned)
    for path, data in source.paths.items():
        assert source.node.cat(path) == data, path


def test_a_snapshot_without_manifest_is_refused_clearly(source: Source, tmp_path: Path) -> None:
    with pytest.raises(BackupError, match=r"no IPFS pin manifest in the snapshot: .*pins\.json"):
        ipfs.restore(source.api, tmp_path)
    (tmp_path / ipfs.MANIFEST).write_text("{not json")
    with pytest.raises(BackupError, match=r"pin manifest .* is unreadable"):
        ipfs.restore(source.api, tmp_path)


def test_a_missing_car_is_refused_before_anything_is_imported(
    snapshot: Snapshot, target: IpfsNode, tmp_path: Path
) -> None:
    partial = tmp_path / "snapshot"
    shutil.copytree(snapshot.directory, partial)
    lost = next(iter(snapshot.sizes))
    (partial / ipfs.car_name(lost)).unlink()
    with pytest.raises(BackupError, match=f"lists pin {lost} but has no .*{lost}.car"):
        ipfs.restore(ipfs.KuboApi("http://127.0.0.1:9", timeout=2), partial)  # never called


def test_an_unreachable_api_is_a_clear_error(snapshot: Snapshot, tmp_path: Path) -> None:
    with socket.socket() as sock:  # a loopback port that nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    api = ipfs.KuboApi(f"http://127.0.0.1:{port}", timeout=2)
    with pytest.raises(BackupError, match=f"API at http://127.0.0.1:{port} is unreachable"):
        ipfs.dump(api, tmp_path / "out")
    assert not (tmp_path / "out" / ipfs.MANIFEST).exists()
    with pytest.raises(BackupError, match="is unreachable"):
        ipfs.restore(api, snapshot.directory)


class _ServerTimeoutApi(ipfs.KuboApi):
    """Asks the node to give up on an export after 1 s (`timeout`, a global option of the
    RPC API in js-ipfs and kubo alike), so that it reports the failure the way kubo reports
    any late one: status 200 was sent with part of the CAR, and the error follows in the
    `X-Stream-Error` trailer (go-ipfs-cmds http/responseemitter.go)."""

    def _endpoint(self, command: str, params: Mapping[str, str]) -> str:
        return super()._endpoint(command, {**params, "timeout": "1s"})


def test_a_damaged_repo_fails_the_backup_without_leaving_a_short_car(
    source: Source, tmp_path: Path
) -> None:
    cid = source.node.add({"damaged.bin": DAMAGED_DATA})["damaged.bin"]
    block = source.node.block_file(source.node.refs(cid)[-1])  # the last leaf
    aside = tmp_path / "block"
    shutil.move(block, aside)
    try:
        # js-ipfs waits for the missing block (kubo, asked for offline=true, fails at once):
        # the read times out.
        with pytest.raises(BackupError, match=f"dag/export of {cid} .* broke off"):
            ipfs.dump(ipfs.KuboApi(source.node.url, timeout=3), tmp_path / "waited")
        # The node gives up first and says so in the trailer, after a 200 and part of the CAR.
        with pytest.raises(BackupError, match=f"dag/export of {cid} .* failed after it began"):
            ipfs.dump(_ServerTimeoutApi(source.node.url, timeout=10), tmp_path / "trailer")
        for out in ("waited", "trailer"):
            assert not (tmp_path / out / ipfs.MANIFEST).exists()
            assert not list((tmp_path / out).glob(f"{cid}.car*"))
    finally:
        shutil.move(aside, block)
        source.node.call("pin/rm", {"arg": cid})
