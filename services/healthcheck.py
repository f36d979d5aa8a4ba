"""`python -m services.healthcheck [URL]`: exit 0 when the service answers 200, for container
health checks on images without a shell. Default: this container's own /ready (PORT)."""
from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main(argv: list[str]) -> int:
    url = argv[0] if argv else f"http://127.0.0.1:{os.environ.get('PORT', '8080')}/ready"
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return 0 if r.status == 200 else 1
    except (urllib.error.URLError, OSError) as exc:
        print(f"healthcheck {url}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
