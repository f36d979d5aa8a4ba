"""The `lucid_assets` code location: everything under `defs/`, found by Dagster's `dg` loader
(`[tool.dg]` in pyproject.toml). The rest of the package is the library and imports no Dagster."""

import os
from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    # every process that loads the code location (its server, each run worker, in any deployment)
    # writes envelopes, keys, manifests and catalog files readable by its own user only
    os.umask(0o077)
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
