import dagster as dg

from .assets import session_manifest, stored_chunks

seal_session = dg.define_asset_job(
    "seal_session", selection=dg.AssetSelection.assets(stored_chunks, session_manifest),
    description="Store every registered chunk of a session, then build and sign its manifest.",
)
