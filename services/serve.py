"""`python -m services.serve NAME`: run one FastAPI service under uvicorn, as the images do.
HOST and PORT come from the settings (PORT defaults to the service's port in the design)."""

from __future__ import annotations

import os
import sys

import uvicorn

from lucid_assets.settings import PORTS, SERVICES, get_settings


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in SERVICES:
        print(f"usage: python -m services.serve {{{','.join(SERVICES)}}}", file=sys.stderr)
        return 2
    name = argv[0]
    os.umask(0o077)  # the images' entrypoint: staging, databases, envelopes, keys 0600/0700
    s = get_settings()
    uvicorn.run(
        f"services.{name}.app:create_app",
        factory=True,
        host=s.host,
        port=s.port or PORTS[name],
        log_level=s.log_level.lower(),
        proxy_headers=False,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
