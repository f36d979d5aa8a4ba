"""The `lucid_assets` code location."""
import dagster as dg

from lucid_assets.defs.assets import recorded_chunks, session_manifest, stored_chunks
from lucid_assets.defs.jobs import seal_session, store_chunks
from lucid_assets.defs.maintenance import (iceberg_maintenance, iceberg_maintenance_schedule, rebuild_catalog,
                                            rotate_data_keys)
from lucid_assets.defs.operations import (archive_partitions, archive_schedule, reconcile, retention,
                                           retention_schedule)
from lucid_assets.defs.resources import PipelineResource, StorageServiceResource, VaultResource
from lucid_assets.defs.sensors import fail_on_failure, seal_on_success, work_queue_sensor
from lucid_assets.settings import get_settings


def build_defs(settings=None) -> dg.Definitions:
    s = settings or get_settings()
    return dg.Definitions(
        assets=[recorded_chunks, stored_chunks, session_manifest],
        jobs=[seal_session, store_chunks, rotate_data_keys, retention, iceberg_maintenance, rebuild_catalog,
              archive_partitions],
        schedules=[retention_schedule, iceberg_maintenance_schedule, archive_schedule],
        sensors=[work_queue_sensor, seal_on_success, fail_on_failure, reconcile],
        resources={"pipeline": PipelineResource(url=s.pipeline_url), "vault": VaultResource.from_settings(s),
                   "storage": StorageServiceResource(url=s.storage_url)},
        executor=dg.multiprocess_executor if s.executor == "multiprocess" else dg.in_process_executor,
    )


defs = build_defs()
