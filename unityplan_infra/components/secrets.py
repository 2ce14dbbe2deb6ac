"""Generated secrets. Every password and key comes from pulumi-random, lives encrypted in the
stack state and is marked secret explicitly, so it stays secret in outputs and in anything
derived from it (also under test mocks, where the engine does not mark provider outputs)."""

from __future__ import annotations

import pulumi
import pulumi_random as random


def password(name: str, parent: pulumi.Resource, length: int = 32) -> pulumi.Output[str]:
    """An alphanumeric password: safe in URLs, DSNs and shell words without quoting."""
    generated = random.RandomPassword(
        name, length=length, special=False, opts=pulumi.ResourceOptions(parent=parent)
    )
    return pulumi.Output.secret(generated.result)


def random_bytes(name: str, parent: pulumi.Resource, length: int = 32) -> random.RandomBytes:
    """Raw key material (base64 and hex outputs), for keys derived with `cryptography`."""
    return random.RandomBytes(name, length=length, opts=pulumi.ResourceOptions(parent=parent))


def secret_base64(material: random.RandomBytes) -> pulumi.Output[str]:
    return pulumi.Output.secret(material.base64)


def secret_hex(material: random.RandomBytes) -> pulumi.Output[str]:
    return pulumi.Output.secret(material.hex)
