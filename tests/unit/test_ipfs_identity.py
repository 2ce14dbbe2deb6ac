"""kubo identities derived by the program (crypto/keys.py), against published vectors.

Sources:
- libp2p specs, peer-ids/peer-ids.md, "Test vectors" (github.com/libp2p/specs, commit
  7740c076350b6636b868a9e4a411280eea34d335): the Ed25519 private and public key, hex of the
  protobuf encoding; and the example peer ID of the "String representation" section.
- kubo's own repos used by its migration tests (github.com/ipfs/kubo,
  test/cli/migrations/testdata/v15-repo/config and v16-repo/config, commit
  867cdc5d80d88f390f3ee2882ff50e056ffe3aad): `Identity.PeerID` and `Identity.PrivKey` as
  `ipfs init` wrote them, i.e. a pair made and stored by kubo itself.
"""

from __future__ import annotations

import base64
import json

import base58
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from tests.support.deployments import dev_deployment
from unityplan_infra.crypto.keys import (
    ipfs_peer_id,
    ipfs_private_key,
    libp2p_public_key,
    peer_id_of,
)
from unityplan_infra.render.ipfs import (
    IDENTITY_FILE,
    INIT_SCRIPT_BODY,
    MOUNT,
    render_identity,
    render_peers_json,
)

# libp2p peer-ids spec, "Test vectors": ED25519 private key / public key.
SPEC_PRIVATE = bytes.fromhex(
    "080112407e0830617c4a7de83925dfb2694556b12936c477a0e1feb2e148ec9da60fee7d"
    "1ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
SPEC_PUBLIC = bytes.fromhex(
    "080112201ed1e8fae2c4a144b8be8fd4b47bf3d3b34b871c3cacf6010f0e42d474fce27e"
)
# libp2p peer-ids spec, "String representation": an Ed25519 peer ID (identity multihash).
SPEC_PEER_ID = "12D3KooWD3eckifWpRn9wQpMG9R9hX3sD158z7EqHWmweQAJU5SA"
# kubo test/cli/migrations/testdata/v1{5,6}-repo/config: (Identity.PeerID, Identity.PrivKey).
KUBO_IDENTITIES = [
    (
        "12D3KooWPeo9gaDV6URwwwyWWjEJsCaMeZ7PBE5vpqvR1KFnPv3B",
        "CAESQGPAQlzI5P/KnsbQ3e7dPNbv5Ztw8YwLv9k1dtS3pkd1zZAOR2796fXBZSKyo8Lw/wOqFb9plijC0iW0vTDuxXI=",
    ),
    (
        "12D3KooWGU72UzYkzVAiTyNLugX72zoDPTGkRegoKcTfB8oWxSuu",
        "CAESQNfpGWI4zS+x+HSggBd7qqBai+Je5fopjmBylaTo7uZZYtESGX1PLDr5HmS3NJmrK7glW5kGRuYDvpqwJ2hnC2g=",
    ),
]


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def seed_of(private_key_b64: str) -> str:
    """The 32 random bytes (base64) behind a kubo PrivKey: the first half of its Data."""
    message = base64.b64decode(private_key_b64)
    assert message[:4] == b"\x08\x01\x12\x40"  # Type = Ed25519, Data = 64 bytes
    return b64(message[4:36])


def test_spec_vector_private_key() -> None:
    seed = SPEC_PRIVATE[4:36]
    assert base64.b64decode(ipfs_private_key(b64(seed))) == SPEC_PRIVATE


def test_spec_vector_public_key_derives_from_the_private_key() -> None:
    seed = SPEC_PRIVATE[4:36]
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    assert libp2p_public_key(public.public_bytes(Encoding.Raw, PublicFormat.Raw)) == SPEC_PUBLIC
    # The peer ID is the identity multihash of that encoding: 0x00, length 36, the bytes.
    peer_id = ipfs_peer_id(b64(seed))
    assert base58.b58decode(peer_id) == b"\x00\x24" + SPEC_PUBLIC
    assert peer_id.startswith("12D3KooW")


def test_spec_example_peer_id_round_trips() -> None:
    multihash = base58.b58decode(SPEC_PEER_ID)
    assert multihash[:2] == b"\x00\x24"  # identity multihash of 36 bytes
    encoded = multihash[2:]
    assert encoded[:4] == b"\x08\x01\x12\x20"  # an Ed25519 PublicKey message
    assert libp2p_public_key(encoded[4:]) == encoded
    assert peer_id_of(encoded) == SPEC_PEER_ID


@pytest.mark.parametrize(("peer_id", "private_key"), KUBO_IDENTITIES)
def test_identities_written_by_kubo(peer_id: str, private_key: str) -> None:
    seed = seed_of(private_key)
    assert ipfs_private_key(seed) == private_key
    assert ipfs_peer_id(seed) == peer_id


def _libp2p_messages() -> tuple[type, type]:
    """libp2p's crypto.proto (proto2), built at run time with the protobuf runtime."""
    proto = descriptor_pb2.FileDescriptorProto(name="crypto.proto", package="crypto.pb")
    proto.syntax = "proto2"
    key_type = proto.enum_type.add(name="KeyType")
    for number, name in enumerate(["RSA", "Ed25519", "Secp256k1", "ECDSA"]):
        key_type.value.add(name=name, number=number)
    required = descriptor_pb2.FieldDescriptorProto.LABEL_REQUIRED
    for message_name in ("PublicKey", "PrivateKey"):
        message = proto.message_type.add(name=message_name)
        message.field.add(
            name="Type", number=1, label=required, type_name=".crypto.pb.KeyType",
            type=descriptor_pb2.FieldDescriptorProto.TYPE_ENUM,
        )  # fmt: skip
        message.field.add(
            name="Data", number=2, label=required,
            type=descriptor_pb2.FieldDescriptorProto.TYPE_BYTES,
        )  # fmt: skip
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return (
        message_factory.GetMessageClass(pool.FindMessageTypeByName("crypto.pb.PublicKey")),
        message_factory.GetMessageClass(pool.FindMessageTypeByName("crypto.pb.PrivateKey")),
    )


@pytest.mark.parametrize("fill", [0x00, 0x5A, 0xFF])
def test_encoding_matches_the_protobuf_runtime(fill: int) -> None:
    public_message, private_message = _libp2p_messages()
    seed = bytes([fill]) * 32
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    raw_public = public.public_bytes(Encoding.Raw, PublicFormat.Raw)
    expected_private = private_message(Type=1, Data=seed + raw_public).SerializeToString()
    assert base64.b64decode(ipfs_private_key(b64(seed))) == expected_private
    expected_public = public_message(Type=1, Data=raw_public).SerializeToString()
    assert libp2p_public_key(raw_public) == expected_public


def test_different_bytes_different_identities() -> None:
    ids = {ipfs_peer_id(b64(bytes([n]) * 32)) for n in range(16)}
    assert len(ids) == 16 and all(len(i) == 52 and i.startswith("12D3KooW") for i in ids)


@pytest.mark.parametrize("length", [16, 31, 33, 64])
def test_only_32_random_bytes_make_a_key(length: int) -> None:
    with pytest.raises(ValueError):
        ipfs_private_key(b64(bytes(length)))
    with pytest.raises(ValueError):
        libp2p_public_key(bytes(length))


def test_identity_file_is_what_the_init_script_reads() -> None:
    peer_id, private_key = KUBO_IDENTITIES[0]
    assert render_identity(peer_id, private_key).splitlines() == [
        f"PeerID={peer_id}",
        f"PrivKey={private_key}",
    ]
    # From the mounted config dir; awk opens the file itself, so the key is on no command
    # line (tests/realsw/test_ipfs_identity.py runs the script).
    assert f"awk -v identity={MOUNT}/{IDENTITY_FILE} " in INIT_SCRIPT_BODY
    assert 'sub(/^PeerID=/, "", line)' in INIT_SCRIPT_BODY
    assert 'sub(/^PrivKey=/, "", line)' in INIT_SCRIPT_BODY


def test_peers_file_lists_the_programs_peer_ids() -> None:
    deployment = dev_deployment()
    ids = {code: ipfs_peer_id(b64(bytes([n]) * 32)) for n, code in enumerate(["dk", "no", "se"])}
    peers = json.loads(render_peers_json(deployment, deployment.pod("no"), ids))
    assert [peer["ID"] for peer in peers] == [ids["dk"], ids["se"]]
