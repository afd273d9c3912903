"""Signed requests: bound to method, path, body, receiving node and time; accepted once."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dhtmesh.crypto import Identity
from dhtmesh.crypto.request_auth import (
    AUTH_WINDOW,
    ReplayGuard,
    RequestAuthError,
    sign_request,
    verify_request,
)

NOW = 1_800_000_000.0
NODE = bytes(range(20))
OTHER_NODE = bytes(20)


def signed(farmer: Identity, **changes: object) -> dict[str, str]:
    request = {"method": "GET", "path": "/api/ping/ab", "body": b"", "recipient_id": NODE, "now": NOW} | changes
    return sign_request(farmer, **request)  # type: ignore[arg-type]


def test_a_signed_request_names_its_signer_once() -> None:
    farmer, guard = Identity.generate(), ReplayGuard()
    headers = signed(farmer)
    assert verify_request(headers, "GET", "/api/ping/ab", b"", NODE, guard, NOW + 1) == farmer.public_key
    with pytest.raises(RequestAuthError, match="replayed"):
        verify_request(headers, "GET", "/api/ping/ab", b"", NODE, guard, NOW + 2)


@pytest.mark.parametrize(
    "what, method, path, body, node",
    [
        ("another method", "POST", "/api/ping/ab", b"", NODE),
        ("another route", "GET", "/api/height/ab/7", b"", NODE),
        ("another body", "GET", "/api/ping/ab", b"x", NODE),
        ("another node", "GET", "/api/ping/ab", b"", OTHER_NODE),
    ],
)
def test_a_signature_does_not_carry_over_to(what: str, method: str, path: str, body: bytes, node: bytes) -> None:
    headers = signed(Identity.generate())
    with pytest.raises(RequestAuthError, match="bad signature"):
        verify_request(headers, method, path, body, node, ReplayGuard(), NOW)


def test_a_request_outside_the_time_window_is_refused() -> None:
    farmer = Identity.generate()
    for skew in (AUTH_WINDOW + 1, -AUTH_WINDOW - 1):
        with pytest.raises(RequestAuthError, match="clock"):
            verify_request(signed(farmer), "GET", "/api/ping/ab", b"", NODE, ReplayGuard(), NOW + skew)
    assert verify_request(signed(farmer), "GET", "/api/ping/ab", b"", NODE, ReplayGuard(), NOW + AUTH_WINDOW)


def test_two_identical_requests_in_one_second_are_both_accepted() -> None:
    """Ed25519 is deterministic and a Date has whole seconds: the nonce keeps a retry from looking like a replay."""
    farmer, guard = Identity.generate(), ReplayGuard()
    first, second = signed(farmer), signed(farmer)
    assert first["Date"] == second["Date"] and first["Authorization"] != second["Authorization"]
    for headers in (first, second):
        assert verify_request(headers, "GET", "/api/ping/ab", b"", NODE, guard, NOW) == farmer.public_key


def test_a_changed_nonce_breaks_the_signature() -> None:
    headers = signed(Identity.generate())
    scheme, key, _nonce, signature = headers["Authorization"].split()
    changed = f"{scheme} {key} {'00' * 16} {signature}"
    with pytest.raises(RequestAuthError, match="bad signature"):
        verify_request(headers | {"Authorization": changed}, "GET", "/api/ping/ab", b"", NODE, ReplayGuard(), NOW)


def test_a_changed_date_breaks_the_signature() -> None:
    headers = signed(Identity.generate())
    later = signed(Identity.generate(), now=NOW + 5)["Date"]
    with pytest.raises(RequestAuthError, match="bad signature"):
        verify_request(headers | {"Date": later}, "GET", "/api/ping/ab", b"", NODE, ReplayGuard(), NOW)


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Date": "Sun, 22 Nov 2026 18:30:00 +0000"},
        {"Authorization": "Ed25519 00 AA=="},
        {"Date": "yesterday", "Authorization": "Ed25519 " + "00" * 32 + " " + "00" * 16 + " " + "A" * 88},
        {"Date": "Sun, 22 Nov 2026 18:30:00 +0000", "Authorization": "Ed25519 " + "00" * 32 + " " + "A" * 88},
        {"Date": "Sun, 22 Nov 2026 18:30:00 +0000", "Authorization": "Ed25519 " + "00" * 32 + " 00 " + "A" * 88},
        {"Date": "Sun, 22 Nov 2026 18:30:00 +0000", "Authorization": "H8Hv0Y2g3bX5"},  # dataserv's bare base64
        {"Date": "Sun, 22 Nov 2026 18:30:00 +0000", "Authorization": "Ed25519 zz AA=="},
        {"Date": "Sun, 22 Nov 2026 18:30:00 +0000", "Authorization": "Ed25519 " + "00" * 32 + " !!"},
    ],
)
def test_missing_or_malformed_headers_are_refused(headers: dict[str, str]) -> None:
    with pytest.raises(RequestAuthError):
        verify_request(headers, "GET", "/api/ping/ab", b"", NODE, ReplayGuard(), NOW)


@given(st.text(max_size=200), st.text(max_size=200))
def test_arbitrary_headers_only_ever_raise_request_auth_error(date: str, authorization: str) -> None:
    with pytest.raises(RequestAuthError):
        verify_request({"Date": date, "Authorization": authorization}, "GET", "/", b"", NODE, ReplayGuard(), NOW)


def test_the_replay_guard_forgets_old_signatures_and_stays_bounded() -> None:
    guard = ReplayGuard(window=20.0, capacity=100)
    assert guard.first_use(b"a", NOW, NOW) and not guard.first_use(b"a", NOW, NOW + 1)
    for index in range(1000):
        assert guard.first_use(index.to_bytes(4, "big"), NOW + 10 + index / 100, NOW + 20)
    assert len(guard._seen) <= 100


def test_a_full_replay_guard_refuses_the_dates_it_forgot_and_keeps_accepting_newer_ones() -> None:
    """A flood of signed requests cannot lock honest farmers out (the guard does not fail closed), and
    a request whose signature was forgotten to make room cannot be replayed."""
    guard = ReplayGuard(window=20.0, capacity=3)
    for second, signature in enumerate((b"s0", b"s1", b"s2")):
        assert guard.first_use(signature, NOW + second, NOW + 3)
    assert guard.first_use(b"s3", NOW + 3, NOW + 3)  # full: s0 (dated NOW) is forgotten
    assert not guard.first_use(b"s0", NOW, NOW + 3)  # its replay is refused by the horizon
    assert not guard.first_use(b"late", NOW, NOW + 3)  # so is anything dated no later
    assert guard.first_use(b"s4", NOW + 4, NOW + 4)  # and newer requests still pass


def test_the_signer_must_be_the_expected_farmer_and_bound_data_is_covered() -> None:
    farmer, mallory = Identity.generate(), Identity.generate()
    headers = signed(farmer, bound="record-1")
    args = ("GET", "/api/ping/ab", b"", NODE, ReplayGuard(), NOW)
    assert verify_request(headers, *args, signer_id=farmer.node_id, bound="record-1") == farmer.public_key
    with pytest.raises(RequestAuthError, match="bad signature"):
        verify_request(signed(farmer, bound="record-1"), *args, bound="record-2")
    with pytest.raises(RequestAuthError, match="not signed by this farmer"):
        verify_request(signed(mallory), *args, signer_id=farmer.node_id)


def test_a_refused_request_takes_no_room_in_the_guard() -> None:
    farmer, guard = Identity.generate(), ReplayGuard()
    with pytest.raises(RequestAuthError):
        verify_request(signed(farmer), "GET", "/api/ping/ab", b"", NODE, guard, NOW, signer_id=bytes(20))
    assert not guard._seen


@given(st.text(max_size=60))
def test_arbitrary_dates_with_a_well_formed_authorization_only_raise_request_auth_error(date: str) -> None:
    headers = signed(Identity.generate()) | {"Date": date}
    with pytest.raises(RequestAuthError):
        verify_request(headers, "GET", "/api/ping/ab", b"", NODE, ReplayGuard(), NOW)
