"""Identities, signatures and encryption: everything dhtmesh does with keys lives here."""

from dhtmesh.crypto.identity import Identity, IdentityError, load_identity, save_identity
from dhtmesh.crypto.keys import node_id_from_public_key, verify_signature
from dhtmesh.crypto.sealed import SealedBoxError, open_sealed, seal_to

__all__ = [
    "Identity",
    "IdentityError",
    "SealedBoxError",
    "load_identity",
    "node_id_from_public_key",
    "open_sealed",
    "save_identity",
    "seal_to",
    "verify_signature",
]
