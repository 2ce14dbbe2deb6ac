"""Small HTTP client for the checks: JSON in, JSON out, always with a timeout."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from typing import Any


class HttpError(Exception):
    """A request failed: refused, timed out, or answered with an error status."""


def _insecure() -> ssl.SSLContext:
    # Federation certificates are self-signed by design (see render/synapse.py); the check
    # is about reachability, and Synapse verifies the keys it fetches by their signatures.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def fetch(
    url: str, *, timeout: float, method: str = "GET", tls_verify: bool = True, body: Any = None
) -> bytes:
    """The response body; `body` (if any) is sent as JSON."""
    data = None if body is None else json.dumps(body).encode()
    headers = {} if body is None else {"Content-Type": "application/json"}
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    context = None if tls_verify else _insecure()
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            answer: bytes = response.read()
            return answer
    except urllib.error.HTTPError as error:
        raise HttpError(f"HTTP {error.code} from {url}") from None
    except urllib.error.URLError as error:
        raise HttpError(f"{url}: {error.reason}") from None
    except (TimeoutError, OSError) as error:
        raise HttpError(f"{url}: {error}") from None


def fetch_json(
    url: str, *, timeout: float, method: str = "GET", tls_verify: bool = True, body: Any = None
) -> Any:
    answer = fetch(url, timeout=timeout, method=method, tls_verify=tls_verify, body=body)
    try:
        return json.loads(answer)
    except json.JSONDecodeError:
        raise HttpError(f"{url} did not answer JSON: {answer[:120]!r}") from None
