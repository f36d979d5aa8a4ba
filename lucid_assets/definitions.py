"""The `lucid_assets` code location: everything under `defs/`, found by Dagster's `dg` loader
(`[tool.dg]` in pyproject.toml). The rest of the package is the library and imports no Dagster."""

from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
