"""Key material derived from random bytes that Pulumi stores (pulumi-random RandomBytes).

Pulumi programs run on every `up`, so keys cannot be generated in Python at run time: they
would change every time. The random bytes live (secret) in the stack state and the public
halves are derived here with `cryptography`.
"""

from __future__ import annotations

import base64
import hashlib

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
