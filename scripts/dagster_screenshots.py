#!/usr/bin/env python3
"""Screenshots of the Dagster UI after a demo: the session asset lineage and one partition's
materialization history. Needs a running platform (`scripts/lucid up`), Debian's chromium, and a
session id (default: the newest sealed session).

    .venv/bin/python scripts/dagster_screenshots.py [--dagster http://127.0.0.1:3000] [--session ID] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx

from lucid_assets.settings import get_settings
from tests.browser import Browser
from tests.conftest import free_port

SKIP_DIALOG = """(() => { const b = [...document.querySelectorAll('button')].find(b => b.innerText.trim() === 'Skip');
  if (b) { b.click(); return true; } return false; })()"""


def settle(browser: Browser, text: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        browser.js(SKIP_DIALOG)
        if browser.js(f"document.body.innerText.includes({text!r})"):
            time.sleep(2)  # let the graph finish its layout
            browser.js(SKIP_DIALOG)
            return
        time.sleep(0.5)
    raise SystemExit(f"the page never showed {text!r}")


def newest_sealed(api: str, key: str) -> str:
    items = httpx.get(
        f"{api}/v1/sessions", params={"state": "sealed", "limit": 1}, headers={"Authorization": f"Bearer {key}"}
    ).json()["items"]
    if not items:
        raise SystemExit("no sealed session: run `scripts/lucid demo` first")
    return items[0]["id"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dagster", default="http://127.0.0.1:3000")
    ap.add_argument("--api", default="http://127.0.0.1:8087")
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--session")
    ap.add_argument("--out", default="docs/screenshots")
    args = ap.parse_args()
    key = get_settings().preset_admin_key or (Path(args.data_dir) / "secrets" / "admin-api-key").read_text().strip()
    sid = args.session or newest_sealed(args.api, key)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    browser = Browser(free_port())
    try:
        browser.goto(f"{args.dagster}/asset-groups")
        browser.goto(f"{args.dagster}/locations/lucid_assets/asset-groups/sessions")
        settle(browser, "session_manifest")
        browser.screenshot(out / "dagster-lineage.png")
        browser.goto(f"{args.dagster}/assets/session_manifest?view=partitions&partition={sid}")
        settle(browser, sid[:8])
        browser.screenshot(out / "dagster-partition.png")
        browser.goto(f"{args.dagster}/assets/stored_chunks?view=events&partition={sid}")
        settle(browser, "Materializ")
        browser.screenshot(out / "dagster-history.png")
    finally:
        browser.close()
    print(f"screenshots of session {sid} in {out}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
