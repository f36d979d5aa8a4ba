#!/usr/bin/env python3
"""Regenerate docs/vectors/v1.json from the implementation (only when the format version changes)."""

import json
from pathlib import Path

from lucid_assets.core.vectors import generate

out = Path(__file__).resolve().parent.parent / "docs" / "vectors" / "v1.json"
out.write_text(json.dumps(generate(), indent=1, sort_keys=True) + "\n")
print(f"wrote {out}")
