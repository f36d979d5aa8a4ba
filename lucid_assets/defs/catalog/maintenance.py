"""The Iceberg catalog's jobs: maintenance (compaction, snapshot expiry) weekly, and rebuild from the
chunk store on demand."""

from datetime import UTC, datetime, timedelta

import dagster as dg

from lucid_assets.core import catalog
from lucid_assets.rebuild import rebuild

from ..resources import VaultResource


class MaintenanceConfig(dg.Config):
    expire_older_than_days: int = 7
    min_files_per_partition: int = 4


@dg.op(
    description="Compact lucid.chunks and lucid.sessions (each bucket with many small files rewritten into one "
    "sorted file by an overwrite of exactly its sessions), then expire snapshots older than the "
    "configured age. Query results do not change."
)
def iceberg_maintenance_op(
    context: dg.OpExecutionContext, config: MaintenanceConfig, vault: VaultResource
) -> dg.Output:
    meta = {}
    cutoff = datetime.now(UTC) - timedelta(days=config.expire_older_than_days)
    for name in catalog.TABLES:
        result = vault.lake.compact(name, min_files=config.min_files_per_partition)
        result["snapshots_expired"] = vault.lake.expire_snapshots(name, cutoff)
        context.log.info(f"{name}: {result}")
        meta.update({f"{name}.{k}": v for k, v in result.items()})
    return dg.Output(None, metadata=meta)


@dg.job(description="Iceberg maintenance: compact small files, expire old snapshots.")
def iceberg_maintenance():
    iceberg_maintenance_op()


iceberg_maintenance_schedule = dg.ScheduleDefinition(
    job=iceberg_maintenance,
    cron_schedule="43 2 * * 0",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Weekly, Sunday 02:43.",
)


@dg.op(
    description="Rebuild both Iceberg tables from the chunk store alone (envelopes, data keys, signed "
    "manifests): each session's rows are replaced by what its files determine."
)
def rebuild_catalog_op(context: dg.OpExecutionContext, vault: VaultResource) -> dg.Output:
    counts = rebuild(vault.lake, vault.store, vault.keyring)
    context.log.info(f"rebuilt: {counts}")
    return dg.Output(None, metadata={k.replace(".", "_"): v for k, v in counts.items()})


@dg.job(description="Catalog rebuild from the files on disk (after losing or damaging the catalog database).")
def rebuild_catalog():
    rebuild_catalog_op()
