import dagster as dg

from . import assets

seal_session = dg.define_asset_job(
    "seal_session",
    selection=dg.AssetSelection.assets(assets.stored_chunks, assets.session_manifest),
    description="Store every registered chunk of a session, then build and sign its manifest.",
)

store_chunks = dg.define_asset_job(
    "store_chunks",
    selection=dg.AssetSelection.assets(assets.stored_chunks),
    description="Live batch while a session records: store the chunks registered so far and publish a "
    "signed checkpoint.",
)
