"""Signed credentials and the signed policy: forgery, expiry, revocation, garbage."""

from __future__ import annotations

import base64

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sector.errors import ClusterError, CredentialError, InvalidPath, UsageError
from sector.security.pki import ClusterCA
from sector.security.tokens import (
    MAX_TOKEN,
    Grant,
    Policy,
    issue,
    restrict,
    revoke,
    sign_policy,
    supersedes,
    unrestrict,
    verify,
    verify_policy,
)

NOW = 1_800_000_000.0
DAY = 86400.0

CA = ClusterCA.create()
OTHER = ClusterCA.create()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def test_roundtrip() -> None:
    tok = issue(CA, "alice", write=["/data/", "/data", "/x//y"], read=["/p"], compute=True, now=NOW)
    g = verify(tok, CA, None, NOW + 1)
    assert isinstance(g, Grant)
    assert g.user == "alice" and g.cluster == CA.cluster_id
    assert g.write == ("/data", "/x/y")  # normalised and deduplicated
    assert g.read == ("/p",) and g.compute and not g.admin
    assert g.iat == NOW and g.exp == NOW + 365 * DAY
    assert len(g.serial) == 16 and int(g.serial, 16) >= 0
    # The public half of the CA is enough to verify.
    assert verify(tok, CA.public(), Policy.initial(CA.cluster_id), NOW) == g
    assert issubclass(CredentialError, ClusterError)


def test_two_credentials_differ_by_serial() -> None:
    a = verify(issue(CA, "alice", now=NOW), CA, None, NOW)
    b = verify(issue(CA, "alice", now=NOW), CA, None, NOW)
    assert a.serial != b.serial


def test_never_expiring() -> None:
    g = verify(issue(CA, "bob", ttl=None, now=NOW), CA, None, NOW + 100 * 365 * DAY)
    assert g.exp == 0


def test_issue_validates_input() -> None:
    for bad in ("", "Alice", "9lives", "a b", "x" * 65, "al/ice"):
        with pytest.raises(UsageError, match="invalid user name"):
            issue(CA, bad, now=NOW)
    with pytest.raises(InvalidPath):
        issue(CA, "alice", write=["relative"], now=NOW)
    with pytest.raises(InvalidPath):
        issue(CA, "alice", read=["/a/../b"], now=NOW)
    with pytest.raises(UsageError, match="lifetime"):
        issue(CA, "alice", ttl=0, now=NOW)
    with pytest.raises(UsageError, match="no private key"):
        issue(CA.public(), "alice", now=NOW)
    # A lone string is one prefix, not a sequence of characters.
    assert verify(issue(CA, "a_1.b-c", write="/data", now=NOW), CA, None, NOW).write == ("/data",)


def test_signed_by_another_ca_refused() -> None:
    tok = issue(OTHER, "alice", admin=True, now=NOW)
    with pytest.raises(CredentialError, match="credential refused: bad signature"):
        verify(tok, CA, None, NOW)


def test_every_flipped_byte_refused() -> None:
    tok = issue(CA, "alice", write=["/"], now=NOW)
    payload, sig = tok.split(".")
    raw_p, raw_s = unb64(payload), unb64(sig)
    for i in range(len(raw_p)):
        forged = bytearray(raw_p)
        forged[i] ^= 0x01
        with pytest.raises(CredentialError):
            verify(b64(bytes(forged)) + "." + sig, CA, None, NOW)
    for i in range(len(raw_s)):
        forged = bytearray(raw_s)
        forged[i] ^= 0x80
        with pytest.raises(CredentialError):
            verify(payload + "." + b64(bytes(forged)), CA, None, NOW)


def test_payload_swap_refused() -> None:
    # A signature is bound to its payload: alice's signature on an admin payload fails.
    alice = issue(CA, "alice", now=NOW)
    admin = issue(CA, "root", admin=True, now=NOW)
    with pytest.raises(CredentialError, match="bad signature"):
        verify(admin.split(".")[0] + "." + alice.split(".")[1], CA, None, NOW)


def test_a_signed_policy_is_not_a_credential() -> None:
    blob = sign_policy(CA, Policy.initial(CA.cluster_id))
    with pytest.raises(CredentialError, match="bad signature"):
        verify(blob, CA, None, NOW)
    with pytest.raises(CredentialError, match="bad signature"):
        verify_policy(issue(CA, "alice", now=NOW), CA)


def test_expired_refused_naming_the_user() -> None:
    tok = issue(CA, "alice", ttl=DAY, now=NOW)
    verify(tok, CA, None, NOW + DAY - 1)
    with pytest.raises(
        CredentialError,
        match=r"credential refused: alice's credential expired at 2027-01-16 [0-9:]+ UTC",
    ) as ei:
        verify(tok, CA, None, NOW + DAY)
    assert ei.value.data["user"] == "alice"


def test_revocation_by_time() -> None:
    p0 = Policy.initial(CA.cluster_id)
    old = issue(CA, "alice", write=["/data"], now=NOW)
    bob = issue(CA, "bob", now=NOW)
    p1 = revoke(p0, "alice", NOW + 10)
    assert p1.version == 1 and p1.revoked == {"alice": NOW + 10} and p0.revoked == {}
    with pytest.raises(CredentialError, match="credential refused: alice was revoked"):
        verify(old, CA, p1, NOW + 20)
    verify(bob, CA, p1, NOW + 20)  # others unaffected
    # Issued at the revocation instant: still refused (iat <= revoked_at).
    with pytest.raises(CredentialError, match="alice was revoked"):
        verify(issue(CA, "alice", now=NOW + 10), CA, p1, NOW + 20)
    # Re-added later: a fresh credential works.
    fresh = issue(CA, "alice", write=["/data"], now=NOW + 30)
    assert verify(fresh, CA, p1, NOW + 40).user == "alice"
    # Revoking again never moves the cut-off backwards.
    assert revoke(p1, "alice", NOW).revoked["alice"] == NOW + 10


def test_policy_of_another_cluster_refused() -> None:
    tok = issue(CA, "alice", now=NOW)
    with pytest.raises(CredentialError, match="policy of cluster"):
        verify(tok, CA, Policy.initial(OTHER.cluster_id), NOW)


def test_policy_sign_verify_and_versions() -> None:
    p0 = Policy.initial(CA.cluster_id)
    assert p0.version == 0 and p0.revoked == {} and p0.private == ()
    p1 = restrict(p0, "/secret/", now=NOW)
    p2 = restrict(p1, "/hr")
    p3 = unrestrict(p2, "/secret", now=NOW + 5)
    p4 = revoke(p3, "bob", NOW + 6)
    assert [p.version for p in (p0, p1, p2, p3, p4)] == [0, 1, 2, 3, 4]
    assert p2.private == ("/secret", "/hr") and p3.private == ("/hr",)
    assert p2.issued_at == NOW and p4.issued_at == NOW + 6
    blob = sign_policy(CA, p4)
    assert verify_policy(blob, CA.public()) == p4
    with pytest.raises(CredentialError, match="bad signature"):
        verify_policy(blob, OTHER)
    with pytest.raises(UsageError, match="signed by cluster"):
        sign_policy(OTHER, p4)
    with pytest.raises(UsageError, match="already private"):
        restrict(p2, "/hr")
    with pytest.raises(UsageError, match="not a private prefix"):
        unrestrict(p0, "/hr")


def test_tampered_policy_refused() -> None:
    p = revoke(Policy.initial(CA.cluster_id), "mallory", NOW)
    _, sig = sign_policy(CA, p).split(".")
    lenient = msgspec.structs.replace(p, revoked={})
    forged = b64(msgspec.msgpack.encode(lenient)) + "." + sig
    with pytest.raises(CredentialError, match="policy refused: bad signature"):
        verify_policy(forged, CA)


def test_supersedes() -> None:
    p0 = Policy.initial(CA.cluster_id)
    p1 = restrict(p0, "/a", now=NOW)
    assert supersedes(p1, p0) and not supersedes(p0, p1) and not supersedes(p1, p1)
    # Two admins' concurrent version 2: every node picks the same one.
    a, b = restrict(p1, "/b", now=NOW + 1), restrict(p1, "/c", now=NOW + 1)
    assert supersedes(a, b) != supersedes(b, a)


def test_oversize_and_garbage_refused() -> None:
    with pytest.raises(CredentialError, match=f"larger than {MAX_TOKEN}"):
        verify("a" * (MAX_TOKEN + 1) + ".b", CA, None, NOW)
    for junk in ("", ".", "a.b.c", "abc", "!!!.???", "a=.b", "====.====", "aGk.aGk"):
        with pytest.raises(CredentialError, match="credential refused"):
            verify(junk, CA, None, NOW)
    with pytest.raises(CredentialError, match="malformed credential"):
        verify(None, CA, None, NOW)  # type: ignore[arg-type]


def test_validly_signed_but_undecodable_payload_refused() -> None:
    # What a newer admin tool might sign: an unknown field must not be ignored.
    from sector.security import tokens

    payload = msgspec.msgpack.encode({"user": "alice", "surprise": 1})
    blob = tokens._sign(CA, tokens._GRANT_TAG, payload)
    with pytest.raises(CredentialError, match="malformed credential"):
        verify(blob, CA, None, NOW)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=300) | st.binary(max_size=300).map(lambda b: b64(b) + "." + b64(b)))
def test_arbitrary_text_only_ever_raises_credential_error(text: str) -> None:
    with pytest.raises(CredentialError):
        verify(text, CA, None, NOW)
    with pytest.raises(CredentialError):
        verify_policy(text, CA)
