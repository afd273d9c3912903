"""A mesh-wide user account (ptg-api-server's users): a name bound to an Ed25519 public key, signed by
that key.

The key's seed is Argon2id(password, salt) with the limits the record states (`derive_identity`), so
the record holds only what is public: the salt, the limits and the public key. Guessing a password
offline costs one Argon2id per guess, as a stored Argon2id hash would; the password itself is never
stored nor sent. The record lives under a key reserved for accounts, derived from the name
(`account_key`), with a value id derived from it too: one account per name. Replicas keep the first
owner of a value id under a key, and a successor must be the same record (`follows`), so nobody can
take a name over where a replica holds it; a password change would need a new key and is not
supported (a new name is). The record proves itself, so anyone may keep it alive.

Limits are bounded both ways (`OPSLIMIT_RANGE`, `MEMLIMIT_RANGE`): a node runs Argon2id with them at
each login, so a record may not make a node spend more than `MEMLIMIT_MAX` of memory on one login.
"""

import re
import time
from dataclasses import astuple, dataclass

import nacl.pwhash

from dhtmesh.crypto.identity import Identity
from dhtmesh.crypto.keys import node_id_from_public_key
from dhtmesh.node.records.keys import reserved_key
from dhtmesh.node.records.kind import CLOCK_SKEW, InvalidRecord, RecordKind, pack, unpack, well_sized
from dhtmesh.node.values.types import DAY
from dhtmesh.node.values.value import Value

ACCOUNT_TYPE = 0x4163
ACCOUNT_EXPIRY = 30 * DAY  # its publishing node re-announces it (a permanent put); anyone may refresh it
NAME_PATTERN = re.compile(r"[A-Za-z0-9._@-]{1,64}")
PUBLIC_KEY_SIZE = 32
SALT_SIZE = 16
SEED_SIZE = 32
_ARGON2ID = nacl.pwhash.argon2id
OPSLIMIT = _ARGON2ID.OPSLIMIT_INTERACTIVE  # 2 passes
MEMLIMIT = _ARGON2ID.MEMLIMIT_INTERACTIVE  # 64 MiB
OPSLIMIT_RANGE = (_ARGON2ID.OPSLIMIT_INTERACTIVE, _ARGON2ID.OPSLIMIT_SENSITIVE)  # 2 to 4 passes
MEMLIMIT_RANGE = (_ARGON2ID.MEMLIMIT_INTERACTIVE, _ARGON2ID.MEMLIMIT_MODERATE)  # 64 to 256 MiB
MEMLIMIT_MAX = MEMLIMIT_RANGE[1]
_DOMAIN = b"dhtmesh/accounts/"


@dataclass(frozen=True, slots=True)
class AccountRecord:
    name: str
    public_key: bytes
    salt: bytes
    opslimit: int
    memlimit: int
    created: int  # Unix seconds

    def encode(self) -> bytes:
        return pack(*astuple(self))


def valid_name(name: object) -> bool:
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def account_key(name: str) -> bytes:
    """The key reserved for the account of `name` (names are case-sensitive)."""
    return reserved_key(ACCOUNT_TYPE, _DOMAIN, name.encode())


def decode_account(data: bytes) -> AccountRecord:
    """The record in an account value's data; raises `InvalidRecord` for anything malformed."""
    record = AccountRecord(*unpack(data, "account", 6))
    if not valid_name(record.name):
        raise InvalidRecord("an account name is 1 to 64 of A-Z a-z 0-9 . _ @ -")
    if not well_sized([(record.public_key, PUBLIC_KEY_SIZE), (record.salt, SALT_SIZE)]):
        raise InvalidRecord(f"an account's public key is {PUBLIC_KEY_SIZE} bytes, its salt {SALT_SIZE}")
    if not _within(record.opslimit, OPSLIMIT_RANGE) or not _within(record.memlimit, MEMLIMIT_RANGE):
        raise InvalidRecord(f"Argon2id limits must be within opslimit {OPSLIMIT_RANGE}, memlimit {MEMLIMIT_RANGE}")
    if type(record.created) is not int or not 0 <= record.created <= time.time() + CLOCK_SKEW:
        raise InvalidRecord("an account's creation time is a Unix time, not in the future")
    return record


def _within(number: object, bounds: tuple[int, int]) -> bool:
    return type(number) is int and bounds[0] <= number <= bounds[1]


def derive_identity(password: str, salt: bytes, opslimit: int = OPSLIMIT, memlimit: int = MEMLIMIT) -> Identity:
    """The account key a password gives with this salt and these limits (CPU- and memory-costly)."""
    seed = _ARGON2ID.kdf(SEED_SIZE, password.encode(), salt, opslimit=opslimit, memlimit=memlimit)
    return Identity.from_seed(seed)


def identity_for(record: AccountRecord, password: str) -> Identity:
    """The key `password` gives under `record`'s salt and limits: the account's own iff it matches."""
    return derive_identity(password, record.salt, record.opslimit, record.memlimit)


KIND = RecordKind(
    ACCOUNT_TYPE,
    ACCOUNT_EXPIRY,
    "an account",
    decode_account,
    lambda record: account_key(record.name),
    key_of=lambda record: account_key(record.name),
    signer="the account's own key",
    signer_of=lambda record: node_id_from_public_key(record.public_key),
    follows=lambda current, incoming: current == incoming,  # no takeover, no rewrite: the same record only
    open_refresh=True,
)


def signed_account(identity: Identity, record: AccountRecord) -> Value:
    """The value that states `record`, signed by the account's own key (`identity`)."""
    return KIND.sign(identity, record, 1)


def new_account(name: str, password: str, salt: bytes, created: int) -> tuple[AccountRecord, Value]:
    """A new account's record and signed value, its key derived here from the password."""
    identity = derive_identity(password, salt)
    record = AccountRecord(name, identity.public_key, salt, OPSLIMIT, MEMLIMIT, created)
    return record, signed_account(identity, record)


def find_account(values: list[Value], name: str) -> list[tuple[Value, AccountRecord]]:
    """The records of `name` among (checked) values: one, unless replicas hold different keys' claims."""
    records = [(value, decode_account(value.data)) for value in values if value.type == ACCOUNT_TYPE]
    return [(value, record) for value, record in records if record.name == name]
