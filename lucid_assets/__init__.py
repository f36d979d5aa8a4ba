"""Lucid's session assets: the pure core (`lucid_assets.core`) and the Dagster definitions."""
