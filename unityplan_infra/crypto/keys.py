"""Key material derived from random bytes that Pulumi stores (pulumi-random RandomBytes).

Pulumi programs run on every `up`, so keys cannot be generated in Python at run time: they
would change every time. The random bytes live (secret) in the stack state and the public
halves are derived here with `cryptography`: WireGuard keys, Synapse signing keys and kubo
(IPFS) node identities.
"""

from __future__ import annotations

import base64
import hashlib

import base58
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

KEY_BYTES = 32


def _seed(private_b64: str) -> bytes:
    raw = base64.b64decode(private_b64, validate=True)
    if len(raw) != KEY_BYTES:
        raise ValueError(f"expected {KEY_BYTES} random bytes, got {len(raw)}")
    return raw


def wireguard_private_key(random_b64: str) -> str:
    """WireGuard private key (base64, clamped as `wg genkey` does) from 32 random bytes."""
    raw = bytearray(_seed(random_b64))
    raw[0] &= 248
    raw[31] = (raw[31] & 127) | 64
    return base64.b64encode(bytes(raw)).decode()


def wireguard_public_key(private_b64: str) -> str:
    """Public key of a WireGuard private key, as `wg pubkey` prints it."""
    key = X25519PrivateKey.from_private_bytes(_seed(private_b64))
    return base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def synapse_signing_key(random_b64: str) -> str:
    """Synapse signing key file content: `ed25519 <key id> <unpadded base64 seed>`."""
    seed = _seed(random_b64)
    return f"ed25519 {synapse_key_id(random_b64)} {base64.b64encode(seed).decode().rstrip('=')}\n"


def synapse_key_id(random_b64: str) -> str:
    """Stable key id (`a_` + 4 characters) derived from the public key."""
    public = synapse_verify_key(random_b64)
    return "a_" + hashlib.sha256(public.encode()).hexdigest()[:4]


def synapse_verify_key(random_b64: str) -> str:
    """Unpadded base64 Ed25519 public key, as Synapse publishes it."""
    key = Ed25519PrivateKey.from_private_bytes(_seed(random_b64))
    raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode().rstrip("=")


def ipfs_swarm_key(random_hex: str) -> str:
    """Private-network key file of kubo (libp2p PSK v1) from 32 random bytes in hex."""
    if len(bytes.fromhex(random_hex)) != KEY_BYTES:
        raise ValueError(f"expected {KEY_BYTES} random bytes")
    return "\n".join(["/key/swarm/psk/1.0.0/", "/base16/", random_hex.lower()]) + "\n"


# --- libp2p / kubo identities -------------------------------------------------------------
#
# A kubo node's identity is an Ed25519 key pair (libp2p peer-ids spec,
# github.com/libp2p/specs peer-ids/peer-ids.md). Keys travel as the protobuf messages of
# libp2p's crypto.proto:
#
#     message PublicKey  { required KeyType Type = 1; required bytes Data = 2; }
#     message PrivateKey { required KeyType Type = 1; required bytes Data = 2; }
#
# with KeyType Ed25519 = 1. For Ed25519, PublicKey.Data is the 32-byte public key and
# PrivateKey.Data the 64 bytes `seed || public key` (what Go's ed25519.PrivateKey holds and
# go-libp2p's Ed25519PrivateKey.Raw returns). kubo keeps base64(PrivateKey) in its config as
# `Identity.PrivKey`; the peer ID is the identity multihash of the encoded PublicKey (36
# bytes: the spec inlines keys of at most 42 bytes), in base58btc: "12D3KooW...".

LIBP2P_ED25519 = 1  # crypto.proto KeyType.Ed25519
_MULTIHASH_IDENTITY = 0x00  # multihash code of the "identity" hash (the bytes themselves)
_MAX_INLINE_KEY = 42  # longer encoded public keys are hashed with sha2-256 instead


def _varint(value: int) -> bytes:
    """Unsigned LEB128, minimal length: protobuf's varint, also multiformats' varint."""
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _libp2p_key(key_type: int, data: bytes) -> bytes:
    """A libp2p PublicKey or PrivateKey message. The spec asks for a deterministic encoding:
    both fields, in tag order, varints minimal. A field starts with its tag, the varint of
    (field number << 3 | wire type): 0x08 is field 1 as a varint (Type), 0x12 field 2 as
    length-delimited bytes (Data, preceded by its length)."""
    return b"\x08" + _varint(key_type) + b"\x12" + _varint(len(data)) + data


def libp2p_public_key(public: bytes) -> bytes:
    """The protobuf-encoded libp2p PublicKey of a raw 32-byte Ed25519 public key."""
    if len(public) != KEY_BYTES:
        raise ValueError(f"expected a {KEY_BYTES}-byte Ed25519 public key, got {len(public)}")
    return _libp2p_key(LIBP2P_ED25519, public)


def peer_id_of(encoded_public_key: bytes) -> str:
    """Peer ID (base58btc multihash) of a protobuf-encoded libp2p public key. Only inlined
    (identity-multihash) keys are supported: every Ed25519 key is one."""
    if len(encoded_public_key) > _MAX_INLINE_KEY:
        raise ValueError("keys over 42 bytes are hashed (sha2-256); not an Ed25519 key")
    multihash = _varint(_MULTIHASH_IDENTITY) + _varint(len(encoded_public_key)) + encoded_public_key
    return base58.b58encode(multihash).decode()


def _ed25519_pair(random_b64: str) -> tuple[bytes, bytes]:
    seed = _seed(random_b64)
    public = Ed25519PrivateKey.from_private_bytes(seed).public_key()
    return seed, public.public_bytes(Encoding.Raw, PublicFormat.Raw)


def ipfs_private_key(random_b64: str) -> str:
    """kubo's `Identity.PrivKey`: base64 of the libp2p PrivateKey message of the Ed25519 key
    whose seed is the 32 random bytes."""
    seed, public = _ed25519_pair(random_b64)
    return base64.b64encode(_libp2p_key(LIBP2P_ED25519, seed + public)).decode()


def ipfs_peer_id(random_b64: str) -> str:
    """kubo's `Identity.PeerID` of the same key: "12D3KooW..." (public by nature)."""
    _, public = _ed25519_pair(random_b64)
    return peer_id_of(libp2p_public_key(public))
