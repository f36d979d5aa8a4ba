"""The Dagster code location, by concern: session processing, housekeeping, keys, catalog."""
