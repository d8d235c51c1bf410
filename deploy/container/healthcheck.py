#!/usr/bin/env python3
"""The image's HEALTHCHECK: exit 0 when GET /readyz answers 200 within the timeout.

Standard library only (the slim image has no curl). The URL is
http://127.0.0.1:$GATEWAY_PORT/readyz unless GATEWAY_HEALTHCHECK_URL names another
(a gateway serving TLS only: https://127.0.0.1:8443/readyz, verified against
GATEWAY_HEALTHCHECK_CA when set).
"""

from __future__ import annotations

import os
import ssl
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("GATEWAY_PORT", "8080")
    url = os.environ.get("GATEWAY_HEALTHCHECK_URL") or f"http://127.0.0.1:{port}/readyz"
    if not url.startswith(("http://", "https://")):
        print(f"unhealthy: GATEWAY_HEALTHCHECK_URL is not http(s): {url}", file=sys.stderr)
        return 1
    timeout_s = float(os.environ.get("GATEWAY_HEALTHCHECK_TIMEOUT_S", "4"))
    context = None
    if url.startswith("https://"):
        context = ssl.create_default_context(cafile=os.environ.get("GATEWAY_HEALTHCHECK_CA"))
    try:
        # The scheme is checked above: only http(s) is ever opened.
        with urllib.request.urlopen(url, timeout=timeout_s, context=context) as response:  # noqa: S310
            status = response.status
    except urllib.error.HTTPError as exc:
        print(f"unhealthy: {url} answered {exc.code}", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
