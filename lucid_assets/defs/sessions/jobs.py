import dagster as dg

from . import assets
from .batch import BATCH_MAX_RUNTIME_S, MAX_RUNTIME_TAG

# a hung per-session run is ended by the daemon's run monitoring like a batch (it holds its session's slot)
BOUNDED = {MAX_RUNTIME_TAG: str(BATCH_MAX_RUNTIME_S)}

seal_session = dg.define_asset_job(
    "seal_session",
    selection=dg.AssetSelection.assets(assets.stored_chunks, assets.session_manifest),
    tags=BOUNDED,
    description="Store every registered chunk of a session, then build and sign its manifest.",
)

store_chunks = dg.define_asset_job(
    "store_chunks",
    selection=dg.AssetSelection.assets(assets.stored_chunks),
    tags=BOUNDED,
    description="Live batch while a session records: store the chunks registered so far and publish a "
    "signed checkpoint.",
)
