"""The insight sensor and schedule, built from the settings when the code location loads."""

import dagster as dg

from lucid_assets.settings import get_settings

from .backfill import insight_backfill_schedule
from .follow import insight_follower


@dg.definitions
def defs() -> dg.Definitions:
    s = get_settings()
    return dg.Definitions(
        sensors=[insight_follower(s.insight_interval_seconds)],
        schedules=[insight_backfill_schedule(s.insight_backfill_cron)],
    )
