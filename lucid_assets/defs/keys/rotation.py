"""Key rotation: rewrap every session's data key (and every stored credential's key) under the
active key-encryption key."""

import dagster as dg

from ...credentials import CredentialStore
from ..resources import VaultResource


@dg.op(
    description="Rewrap every session's data key under the active key-encryption key. Run it after "
    "installing a new active KEK (`lucid keys rotate` does both); afterwards retired KEKs "
    "that no data key names can be deleted (`lucid keys prune`)."
)
def rewrap_data_keys(context: dg.OpExecutionContext, vault: VaultResource) -> dg.Output:
    store, keyring = vault.store, vault.keyring
    sessions = store.sessions()
    rewrapped = [sid for sid in sessions if store.rewrap(sid, keyring)]
    still_old = [sid for sid in sessions if (k := store.dek_kek_id(sid)) and k != keyring.active.key_id]
    # the remote-desktop credentials' keys too (only names reach the log and metadata)
    credentials = CredentialStore(store.objects)
    creds_rewrapped, creds_left = credentials.rewrap(keyring)
    if still_old:
        raise dg.Failure(f"{len(still_old)} data keys are still wrapped by a retired KEK: {still_old[:5]}")
    if creds_left:
        raise dg.Failure(f"{len(creds_left)} credentials do not open for rewrapping: {creds_left[:5]}")
    context.log.info(f"rewrapped {len(rewrapped)} of {len(sessions)} data keys under {keyring.active.key_id}")
    return dg.Output(
        None,
        metadata={
            "sessions": len(sessions),
            "rewrapped": len(rewrapped),
            "credentials_rewrapped": creds_rewrapped,
            "active_kek": keyring.active.key_id,
        },
    )


@dg.job(description="KEK rotation: rewrap every data key under the active key-encryption key.")
def rotate_data_keys():
    rewrap_data_keys()
