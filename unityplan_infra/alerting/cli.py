"""Command line of the relay's zip application: `python matrix-relay.pyz COMMAND`.

- `serve` (the default): the webhook relay, configured by the MATRIX_RELAY_* variables or
  the flags of the same meaning; secrets only in files.
- `bootstrap`: bot user, token file, room and invitations; the spec is JSON on stdin.
- `healthcheck`: exit 0 if the relay on this host answers GET /healthz with 200 (for a
  container healthcheck: the python image has no curl).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence

from . import bootstrap, matrix_relay
from .matrix_relay import (
    ENV_HOMESERVER,
    ENV_LISTEN,
    ENV_MSGTYPE,
    ENV_ROOM,
    ENV_TOKEN_FILE,
    ENV_WEBHOOK_TOKEN_FILE,
    HEALTH_PATH,
    RelayConfig,
    split_listen,
)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="matrix-relay", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    commands = parser.add_subparsers(dest="command")
    serve = commands.add_parser("serve", help="run the webhook relay")
    serve.add_argument("--homeserver", help=f"client API base URL (${ENV_HOMESERVER})")
    serve.add_argument("--room", help=f"room ID or alias (${ENV_ROOM})")
    serve.add_argument("--token-file", help=f"file with the bot's access token (${ENV_TOKEN_FILE})")
    serve.add_argument("--listen", help=f"host:port (${ENV_LISTEN}, default 0.0.0.0:8080)")
    serve.add_argument("--webhook-token-file",
                       help=f"require this bearer token on POST /alerts (${ENV_WEBHOOK_TOKEN_FILE})")  # fmt: skip
    serve.add_argument("--msgtype", choices=matrix_relay.MSGTYPES, help=f"(${ENV_MSGTYPE})")
    serve.add_argument("--verbose", action="store_true", help="log every HTTP request")
    commands.add_parser("bootstrap", help="one-time setup; JSON spec on stdin")
    health = commands.add_parser("healthcheck", help="GET /healthz of the local relay")
    health.add_argument("--url", help="default: http://127.0.0.1:<port of the listen address>")
    return parser


def _environment(arguments: argparse.Namespace, env: Mapping[str, str]) -> dict[str, str]:
    merged = dict(env)
    for flag, name in (("homeserver", ENV_HOMESERVER), ("room", ENV_ROOM),
                       ("token_file", ENV_TOKEN_FILE), ("listen", ENV_LISTEN),
                       ("webhook_token_file", ENV_WEBHOOK_TOKEN_FILE),
                       ("msgtype", ENV_MSGTYPE)):  # fmt: skip
        value = getattr(arguments, flag, None)
        if value:
            merged[name] = value
    return merged


def healthcheck(url: str, timeout: float = 5.0) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            ok = response.status == 200
    except (urllib.error.URLError, OSError) as error:
        print(f"unhealthy: {url}: {error}", file=sys.stderr)
        return 1
    return 0 if ok else 1


def main(argv: Sequence[str] | None = None, env: Mapping[str, str] | None = None) -> int:
    arguments = _parser().parse_args(argv)
    env = os.environ if env is None else env
    command = arguments.command or "serve"
    if command == "bootstrap":
        return bootstrap.run(sys.stdin.read(), lambda line: print(line, flush=True))
    if command == "healthcheck":
        url = arguments.url
        if url is None:
            _, port = split_listen(env.get(ENV_LISTEN) or matrix_relay.DEFAULT_LISTEN)
            url = f"http://127.0.0.1:{port}{HEALTH_PATH}"
        return healthcheck(url)
    verbose = bool(getattr(arguments, "verbose", False))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT,
                        stream=sys.stderr)  # fmt: skip
    try:
        config = RelayConfig.from_env(_environment(arguments, env))
    except ValueError as error:
        logging.getLogger("matrix-relay").error("configuration: %s", error)
        return 2
    return matrix_relay.serve(config)
