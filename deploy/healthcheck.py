"""The image's HEALTHCHECK: GET /healthz on this container's own port; exit 0 when it is 200.

Standard library only (the runtime image has no curl). The port is AUTOGLM_PORT (8080 by
default); with TLS on (AUTOGLM_SSL_CERTFILE set) it asks over HTTPS without checking the
certificate, since it only ever talks to its own loopback address.
"""

import os
import ssl
import sys
import urllib.request


def main() -> int:
    port = os.environ.get("AUTOGLM_PORT", "8080")
    host = os.environ.get("AUTOGLM_HOST", "0.0.0.0")
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1" if host != "::" else "::1"
    if ":" in host:
        host = f"[{host}]"
    context = None
    scheme = "http"
    if os.environ.get("AUTOGLM_SSL_CERTFILE"):
        scheme = "https"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    url = f"{scheme}://{host}:{port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=4, context=context) as response:
            return 0 if response.status == 200 else 1
    except OSError as exc:
        print(f"healthcheck: {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
