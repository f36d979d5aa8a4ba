"""The pure domain core: formats and rules, no FastAPI, no Dagster, no I/O beyond key files."""
