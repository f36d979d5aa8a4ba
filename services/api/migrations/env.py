"""Alembic environment of the gateway's API keys and share links (api_keys, shares).
The logic is shared: services/common/migrate.py (run it through upgrade(), not the alembic CLI)."""

from services.common.migrate import run_env

run_env("api")
