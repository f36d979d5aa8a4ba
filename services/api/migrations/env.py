"""Alembic environment of the gateway's API keys (api_keys).
The logic is shared: services/common/migrate.py (run it through upgrade(), not the alembic CLI)."""

from services.common.migrate import run_env

run_env("api")
