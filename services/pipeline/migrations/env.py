"""Alembic environment of the pipeline registry (sessions, chunks, audit_log, work_queue).
The logic is shared: services/common/migrate.py (run it through upgrade(), not the alembic CLI)."""

from services.common.migrate import run_env

run_env("pipeline")
