"""`python -m services.serve NAME`: run one FastAPI service under uvicorn, as the images do.
HOST and PORT come from the settings (PORT defaults to the service's port in the design)."""

from __future__ import annotations

import os
import sys

import uvicorn

from lucid_assets.settings import PORTS, SERVICES, get_settings

# The event loop each service runs on (uvicorn's --loop; "auto" is uvloop). Storage produces its
# downloads in a worker thread while the event loop sends: uvloop writes to the socket holding the
# GIL, asyncio's loop releases it in socket.send, so the next chunk is decrypted and built while
# the kernel copies this one. Alternating runs, storage alone: TS 1700-1780 -> 1965 MB/s, MP4
# 1030-1060 -> 1140-1190, evidence 1180 -> 1400-1440. The gateway's relay, single-threaded,
# costs less per MB on uvloop (0.41-0.54 vs 0.47-0.64 ms) and stays there (docs/DECISIONS.md).
LOOPS = {"storage": "asyncio"}


def loop(name: str) -> str:
    return LOOPS.get(name, "auto")


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
        loop=loop(name),
        proxy_headers=False,
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
