"""crypto/: identities and their files, node ids, signature checks and sealed boxes."""

import base64
import hashlib
import json
import os
import random
import stat
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dhtmesh.crypto import (
    Identity,
    IdentityError,
    SealedBoxError,
    load_identity,
    node_id_from_public_key,
    open_sealed,
    save_identity,
    seal_to,
    verify_signature,
)
from dhtmesh.crypto.identity import is_password_protected

PASSWORD = "correct horse battery staple"


def file_mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def same_key(a: Identity, b: Identity) -> bool:
    return bytes(a.signing_key) == bytes(b.signing_key)


def write_document(path: Path, document: Any) -> Path:
    path.write_text(json.dumps(document))
    return path


def expect_identity_error(path: Path, password: str | None = None) -> IdentityError:
    with pytest.raises(IdentityError) as caught:
        load_identity(path, password)
    return caught.value


@pytest.fixture(scope="module")
def sealed_document(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One password-protected identity file, made once: Argon2id is deliberately slow."""
    path = tmp_path_factory.mktemp("sealed") / "identity.json"
    save_identity(Identity.generate(), path, PASSWORD)
    return json.loads(path.read_text())


# ---- identity files ------------------------------------------------------------------------------


def test_plain_round_trip(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = tmp_path / "identity.json"
    save_identity(identity, path)
    loaded = load_identity(path)
    assert same_key(loaded, identity)
    assert loaded.node_id == identity.node_id
    assert verify_signature(identity.public_key, b"hello", loaded.sign(b"hello"))
    assert not is_password_protected(path)


def test_save_creates_missing_directories(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = tmp_path / "a" / "b" / "identity.json"
    save_identity(identity, path)
    assert same_key(load_identity(path), identity)


def test_file_is_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    save_identity(Identity.generate(), path)
    assert file_mode(path) == 0o600
    assert not path.with_name(path.name + ".tmp").exists()


def test_overwriting_a_world_readable_file_makes_it_owner_only(tmp_path: Path) -> None:
    path = tmp_path / "identity.json"
    path.write_text("old")
    path.chmod(0o644)
    identity = Identity.generate()
    save_identity(identity, path)
    assert file_mode(path) == 0o600
    assert same_key(load_identity(path), identity)


def test_stale_world_readable_temporary_file_does_not_leak_its_mode(tmp_path: Path) -> None:
    """A leftover `identity.json.tmp` (say 0644, from a crash or another tool) must not end up as the key file's
    mode: os.open(O_CREAT, 0o600) keeps an existing file's permissions."""
    path = tmp_path / "identity.json"
    stale = path.with_name(path.name + ".tmp")
    stale.write_text("leftover")
    stale.chmod(0o644)
    save_identity(Identity.generate(), path)
    assert file_mode(path) == 0o600


def test_password_round_trip(tmp_path: Path) -> None:
    identity = Identity.generate()
    path = tmp_path / "identity.json"
    save_identity(identity, path, PASSWORD)
    assert file_mode(path) == 0o600
    assert is_password_protected(path)
    document = json.loads(path.read_text())
    assert document["kdf"] == "argon2id"
    assert "seed" not in document
    assert base64.b64encode(bytes(identity.signing_key)).decode() not in path.read_text()
    assert same_key(load_identity(path, PASSWORD), identity)


def test_wrong_password_is_an_identity_error(tmp_path: Path, sealed_document: dict[str, Any]) -> None:
    path = write_document(tmp_path / "identity.json", sealed_document)
    error = expect_identity_error(path, PASSWORD + "!")
    assert "wrong password" in str(error)


@pytest.mark.parametrize("password", [None, ""])
def test_missing_password_is_an_identity_error(
    tmp_path: Path, sealed_document: dict[str, Any], password: str | None
) -> None:
    path = write_document(tmp_path / "identity.json", sealed_document)
    error = expect_identity_error(path, password)
    assert "password" in str(error)


def test_missing_file_is_an_identity_error(tmp_path: Path) -> None:
    error = expect_identity_error(tmp_path / "absent.json")
    assert "does not exist" in str(error)


def test_directory_is_an_identity_error(tmp_path: Path) -> None:
    expect_identity_error(tmp_path)


@pytest.mark.parametrize(
    "raw",
    [b"", b"\xff\xfe\x00garbage", b"not json at all", b"{\"kind\": \"ed25519\"", os.urandom(64)],
    ids=["empty", "not-utf8", "not-json", "truncated-json", "random-bytes"],
)
def test_unreadable_bytes_are_an_identity_error(tmp_path: Path, raw: bytes) -> None:
    path = tmp_path / "identity.json"
    path.write_bytes(raw)
    expect_identity_error(path)
    assert not is_password_protected(path)


SEED_B64 = base64.b64encode(bytes(32)).decode()


@pytest.mark.parametrize(
    "document",
    [
        [],
        "ed25519",
        42,
        None,
        {},
        {"kind": "rsa", "seed": SEED_B64},
        {"version": 1, "seed": SEED_B64},
        {"kind": "ed25519"},
        {"kind": "ed25519", "seed": "!!!not base64!!!"},
        {"kind": "ed25519", "seed": base64.b64encode(bytes(31)).decode()},
        {"kind": "ed25519", "seed": 12345},
        {"kind": "ed25519", "seed": None},
        {"kind": "ed25519", "seed": [1, 2]},
        {"kind": "ed25519", "kdf": "scrypt", "sealed_seed": "AAAA"},
    ],
)
def test_corrupt_plain_documents_are_an_identity_error(tmp_path: Path, document: Any) -> None:
    expect_identity_error(write_document(tmp_path / "identity.json", document), PASSWORD)


@pytest.mark.parametrize(
    "changes",
    [
        {"salt": "AAAA"},
        {"salt": "*not base64*"},
        {"salt": None},
        {"sealed_seed": "AAAA"},
        {"sealed_seed": 5},
        {"opslimit": "lots"},
        {"opslimit": [1]},
        {"opslimit": 0},
        {"opslimit": -1},
        {"opslimit": 10**30},
        {"memlimit": 0},
        {"memlimit": None},
        {"memlimit": 10**30},
    ],
)
def test_corrupt_sealed_documents_are_an_identity_error(
    tmp_path: Path, sealed_document: dict[str, Any], changes: dict[str, Any]
) -> None:
    path = write_document(tmp_path / "identity.json", sealed_document | changes)
    expect_identity_error(path, PASSWORD)


def test_sealed_document_missing_a_field_is_an_identity_error(
    tmp_path: Path, sealed_document: dict[str, Any]
) -> None:
    for field in ("salt", "opslimit", "memlimit", "sealed_seed"):
        document = {name: value for name, value in sealed_document.items() if name != field}
        expect_identity_error(write_document(tmp_path / f"no-{field}.json", document), PASSWORD)


@pytest.mark.parametrize("number", ["Infinity", "-Infinity", "NaN", "1e400"])
def test_non_finite_kdf_limits_are_an_identity_error(
    tmp_path: Path, sealed_document: dict[str, Any], number: str
) -> None:
    """Python's json reads `1e400` and `Infinity` as float infinity; int(inf) raises OverflowError."""
    text = json.dumps(sealed_document | {"opslimit": "__NUMBER__"}).replace('"__NUMBER__"', number)
    path = tmp_path / "identity.json"
    path.write_text(text)
    expect_identity_error(path, PASSWORD)


json_scalars = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=40)
json_values = st.recursive(
    json_scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
)
base64_text = st.binary(max_size=80).map(lambda raw: base64.b64encode(raw).decode())
plain_fields = st.fixed_dictionaries(
    {"kind": st.just("ed25519")},
    optional={"version": json_values, "seed": base64_text | json_values, "kdf": json_values},
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=plain_fields | json_values)
def test_arbitrary_documents_load_or_raise_identity_error(tmp_path: Path, document: Any) -> None:
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps(document))
    try:
        identity = load_identity(path, PASSWORD)
    except IdentityError:
        return
    assert len(identity.public_key) == 32


# ---- node ids and signatures ---------------------------------------------------------------------


def test_node_id_is_sha1_of_public_key() -> None:
    identity = Identity.generate()
    assert len(identity.public_key) == 32
    assert identity.node_id == hashlib.sha1(identity.public_key).digest()
    assert node_id_from_public_key(identity.public_key) == identity.node_id
    assert len(identity.node_id) == 20


def test_node_ids_differ_between_identities() -> None:
    assert len({Identity.generate().node_id for _ in range(20)}) == 20


def test_from_seed_is_deterministic() -> None:
    seed = bytes(range(32))
    assert Identity.from_seed(seed).node_id == Identity.from_seed(seed).node_id
    assert Identity.from_seed(seed).public_key != Identity.from_seed(bytes(32)).public_key


def test_verify_signature_accepts_a_true_signature() -> None:
    identity = Identity.generate()
    signature = identity.sign(b"message")
    assert len(signature) == 64
    assert verify_signature(identity.public_key, b"message", signature)


def test_verify_signature_rejects_other_message_key_or_signature() -> None:
    identity, other = Identity.generate(), Identity.generate()
    signature = identity.sign(b"message")
    assert not verify_signature(identity.public_key, b"messagf", signature)
    assert not verify_signature(other.public_key, b"message", signature)
    assert not verify_signature(identity.public_key, b"message", other.sign(b"message"))
    flipped = bytes([signature[0] ^ 1]) + signature[1:]
    assert not verify_signature(identity.public_key, b"message", flipped)


@pytest.mark.parametrize("key_size", [0, 1, 31, 33, 64])
@pytest.mark.parametrize("signature_size", [0, 63, 64, 65, 128])
def test_verify_signature_returns_false_for_garbage_lengths(key_size: int, signature_size: int) -> None:
    identity = Identity.generate()
    signature = identity.sign(b"m")
    key = (identity.public_key * 3)[:key_size]
    sig = (signature * 2)[:signature_size]
    assert verify_signature(key, b"m", sig) is False


@pytest.mark.parametrize("key", [b"\xff" * 32, bytes(32), b"\x01" + bytes(31)])
def test_verify_signature_returns_false_for_invalid_points(key: bytes) -> None:
    assert verify_signature(key, b"m", bytes(64)) is False
    assert verify_signature(key, b"m", os.urandom(64)) is False


@settings(max_examples=100, deadline=None)
@given(key=st.binary(max_size=40), message=st.binary(max_size=40), signature=st.binary(max_size=70))
def test_verify_signature_never_raises(key: bytes, message: bytes, signature: bytes) -> None:
    assert verify_signature(key, message, signature) is False


# ---- sealed boxes --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "plaintext", [b"", b"x", random.Random(7).randbytes(1000)], ids=["empty", "one byte", "1000 bytes"]
)
def test_sealed_box_round_trip(plaintext: bytes) -> None:
    recipient = Identity.generate()
    ciphertext = seal_to(recipient.public_key, plaintext)
    assert len(ciphertext) == len(plaintext) + 48
    assert open_sealed(recipient, ciphertext) == plaintext


def test_sealing_twice_gives_different_ciphertexts() -> None:
    recipient = Identity.generate()
    assert seal_to(recipient.public_key, b"same") != seal_to(recipient.public_key, b"same")


def test_sealed_box_for_someone_else_raises() -> None:
    ciphertext = seal_to(Identity.generate().public_key, b"secret")
    with pytest.raises(SealedBoxError):
        open_sealed(Identity.generate(), ciphertext)


@pytest.mark.parametrize("position", [0, 31, 32, 40, -1])
def test_tampered_sealed_box_raises(position: int) -> None:
    recipient = Identity.generate()
    ciphertext = bytearray(seal_to(recipient.public_key, b"secret message"))
    ciphertext[position] ^= 0x01
    with pytest.raises(SealedBoxError):
        open_sealed(recipient, bytes(ciphertext))


@pytest.mark.parametrize(
    "ciphertext", [b"", b"short", bytes(48), random.Random(8).randbytes(100)], ids=["empty", "short", "zeros", "random"]
)
def test_garbage_ciphertext_raises(ciphertext: bytes) -> None:
    with pytest.raises(SealedBoxError):
        open_sealed(Identity.generate(), ciphertext)


def test_truncated_sealed_box_raises() -> None:
    recipient = Identity.generate()
    ciphertext = seal_to(recipient.public_key, b"secret message")
    with pytest.raises(SealedBoxError):
        open_sealed(recipient, ciphertext[:-1])


@pytest.mark.parametrize(
    "key", [b"", b"x" * 31, b"x" * 33, b"\xff" * 32, bytes(32), "s" * 32, None], ids=repr
)
def test_bad_recipient_key_raises(key: Any) -> None:
    with pytest.raises(SealedBoxError):
        seal_to(key, b"secret")
