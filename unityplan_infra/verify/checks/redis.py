"""Redis: an authenticated PING."""

from __future__ import annotations

import redis as redis_client

from unityplan_infra.verify.model import Check, Context, Finding, failed, passed, per_pod


def checks(context: Context) -> list[Check]:
    return per_pod(context, "redis", "redis.ping", _ping)


def _ping(context: Context, code: str) -> list[Finding]:
    return [_ping_one(context, code)]


def _ping_one(context: Context, code: str) -> Finding:
    pod = context.outputs.pods[code]
    host, port = context.address(pod.host, pod.endpoints.redis)
    client = redis_client.Redis(
        host=host, port=port, password=pod.redis_password, socket_timeout=context.timeout,
        socket_connect_timeout=context.timeout, retry_on_timeout=False,
    )  # fmt: skip
    try:
        answer = client.ping()
    except redis_client.AuthenticationError as error:
        return failed(
            "redis.ping", code, f"authentication refused: {error}",
            "the server's requirepass differs from the stack's redisPassword (the container"
            " was started by hand or by another stack)",
            "`./scripts/up.sh STACK` recreates the container with the stack's password",
        )
    except redis_client.ResponseError as error:
        return failed("redis.ping", code, str(error), "Redis refused the command",
                      f"docker logs service-redis-{code}")  # fmt: skip
    finally:
        client.close()
    return passed("redis.ping", code, f"PING -> {'PONG' if answer else answer}")
