"""Signed user credentials and the signed cluster policy: rights no server hands out.

The admin key is the cluster CA key. It signs two kinds of objects, and every node
checks them locally with the CA public key it already trusts for TLS:

* a **credential** (``Grant``): who the user is and what they may do - write under
  some path prefixes, read some private prefixes, run Sphere jobs, administer;
* the **policy** (``Policy``): what changed since credentials were issued -
  revoked users and the private prefixes. It is versioned; nodes keep the newest
  one they have seen (``supersedes``) and pass it on.

Format: ``base64url(msgpack payload) "." base64url(signature)``, no padding, where the
signature is ECDSA P-256 / SHA-256 in raw ``r || s`` form (64 bytes) over a
domain tag plus the payload bytes. The tag (``sector-grant-v1`` or
``sector-policy-v1``) means a signed policy can never be replayed as a credential
or the reverse, whatever their payloads happen to decode as. JWT was rejected: its
header lets the token pick its own algorithm, a classic source of forgeries, and we
need exactly one algorithm.

Revocation is by user and time: ``revoked[user] = t`` refuses every credential of
that user issued at or before ``t``; a credential issued later is accepted, so
re-adding a user is simply issuing a new credential. This relies on the admin's
clock moving forward between issuing and revoking.

Decoding is strict (``forbid_unknown_fields``): a node must never accept a credential
carrying a restriction it does not understand by silently ignoring the field.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import re
import secrets
from collections.abc import Iterable
from typing import TypeVar

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from sector.errors import CredentialError, UsageError
from sector.meta.records import normalize
from sector.security.pki import ClusterCA

MAX_TOKEN = 8 << 10  # a credential travels with every request: keep it small
MAX_POLICY = 1 << 20  # thousands of revocations and prefixes still fit
DEFAULT_TTL = 365 * 86400.0

_GRANT_TAG = b"sector-grant-v1\x00"
_POLICY_TAG = b"sector-policy-v1\x00"
_USER = re.compile(r"[a-z_][a-z0-9_.-]{0,63}")
_B64 = re.compile(r"[A-Za-z0-9_-]+")
_SIG_LEN = 64  # P-256: r and s, 32 bytes each


class Grant(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """What a credential says: its holder and their rights in one cluster."""

    user: str
    write: tuple[str, ...]  # path prefixes the user may write under
    read: tuple[str, ...]  # private path prefixes the user may read
    compute: bool
    admin: bool
    iat: float  # issued at (unix seconds, the admin's clock)
    exp: float  # expires at; 0 = never
    serial: str  # random, 16 hex chars: tells two credentials of one user apart
    cluster: str  # the cluster id of the CA that signed it


class Policy(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The cluster-wide rules that change after credentials are issued."""

    cluster: str
    version: int
    revoked: dict[str, float]  # user -> credentials issued at or before this are refused
    private: tuple[str, ...]  # prefixes whose reading needs a read (or write) grant
    issued_at: float
    # Node certificates no longer admitted, by node name (``sector cluster remove-node``).
    removed_nodes: tuple[str, ...] = ()

    @classmethod
    def initial(cls, cluster_id: str) -> Policy:
        """Version 0: nobody revoked, everything public."""
        return cls(cluster=cluster_id, version=0, revoked={}, private=(), issued_at=0.0)


# --- signing ------------------------------------------------------------------------


def _b64e(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64d(text: str) -> bytes:
    if not _B64.fullmatch(text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(ca: ClusterCA, tag: bytes, payload: bytes) -> str:
    if ca.key is None:
        raise UsageError("this CA has no private key (only the cluster admin can sign)")
    der = ca.key.sign(tag + payload, ec.ECDSA(hashes.SHA256()))
    r, s = decode_dss_signature(der)
    return _b64e(payload) + "." + _b64e(r.to_bytes(32, "big") + s.to_bytes(32, "big"))


def _open(blob: object, ca: ClusterCA, tag: bytes, limit: int, what: str) -> bytes:
    """The payload of a signed blob, once its signature is checked against ``ca``."""
    if not isinstance(blob, str):
        raise CredentialError(f"{what} refused: malformed {what}")
    if len(blob) > limit:
        raise CredentialError(f"{what} refused: larger than {limit} bytes")
    parts = blob.strip().split(".")
    if len(parts) != 2:
        raise CredentialError(f"{what} refused: malformed {what}")
    try:
        payload, sig = _b64d(parts[0]), _b64d(parts[1])
    except (ValueError, binascii.Error):
        raise CredentialError(f"{what} refused: malformed {what}") from None
    if len(sig) != _SIG_LEN:
        raise CredentialError(f"{what} refused: bad signature")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    pub = ca.cert.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)  # ClusterCA checks this
    try:
        pub.verify(der, tag + payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise CredentialError(f"{what} refused: bad signature") from None
    return payload


_S = TypeVar("_S", Grant, Policy)


def _decode(payload: bytes, typ: type[_S], what: str) -> _S:
    try:
        return msgspec.msgpack.decode(payload, type=typ)
    except (msgspec.DecodeError, msgspec.ValidationError):
        # Validly signed but undecodable: a newer format than this node understands.
        raise CredentialError(f"{what} refused: malformed {what}") from None


def peek(token: str) -> Grant | None:
    """What a credential says, unchecked: a client uses it to see which cluster a
    credential is for (the signature is for the nodes to check)."""
    try:
        return _decode(_b64d(token.strip().split(".")[0]), Grant, "credential")
    except (CredentialError, ValueError, binascii.Error):
        return None


def _when(t: float) -> str:
    return f"{dt.datetime.fromtimestamp(t, dt.UTC):%Y-%m-%d %H:%M:%S} UTC"


# --- credentials --------------------------------------------------------------------


def check_user(user: str) -> str:
    """``user`` if it is a valid user name, else UsageError."""
    if not isinstance(user, str) or not _USER.fullmatch(user):
        raise UsageError(
            f"invalid user name {user!r:.80}: use 1-64 of a-z 0-9 _ . - starting with a letter or _"
        )
    return user


def _prefixes(prefixes: Iterable[str]) -> tuple[str, ...]:
    if isinstance(prefixes, str):  # a lone "/data" would become "/", "d", "a", ...
        prefixes = (prefixes,)
    return tuple(dict.fromkeys(normalize(p) for p in prefixes))


def issue(
    ca: ClusterCA,
    user: str,
    *,
    write: Iterable[str] = (),
    read: Iterable[str] = (),
    compute: bool = False,
    admin: bool = False,
    ttl: float | None = DEFAULT_TTL,
    now: float,
) -> str:
    """A credential for ``user`` signed with the CA key; ``ttl=None`` never expires."""
    check_user(user)
    if ttl is not None and not ttl > 0:
        raise UsageError(f"invalid credential lifetime: {ttl} seconds")
    grant = Grant(
        user=user,
        write=_prefixes(write),
        read=_prefixes(read),
        compute=bool(compute),
        admin=bool(admin),
        iat=float(now),
        exp=0.0 if ttl is None else float(now) + float(ttl),
        serial=secrets.token_hex(8),
        cluster=ca.cluster_id,
    )
    token = _sign(ca, _GRANT_TAG, msgspec.msgpack.encode(grant))
    if len(token) > MAX_TOKEN:
        raise UsageError(f"credential too large: {len(token)} bytes (limit {MAX_TOKEN})")
    return token


def verify(token: str, ca: ClusterCA, policy: Policy | None, now: float) -> Grant:
    """The grant of a credential, checked against the CA, the clock and the policy."""
    grant = _decode(_open(token, ca, _GRANT_TAG, MAX_TOKEN, "credential"), Grant, "credential")
    if grant.cluster != ca.cluster_id:
        raise CredentialError(
            f"credential refused: {grant.user}'s credential is for cluster {grant.cluster}, "
            f"not {ca.cluster_id}",
            user=grant.user,
        )
    if grant.exp and now >= grant.exp:
        raise CredentialError(
            f"credential refused: {grant.user}'s credential expired at {_when(grant.exp)}",
            user=grant.user,
        )
    if policy is not None:
        if policy.cluster != ca.cluster_id:
            raise CredentialError(
                f"policy of cluster {policy.cluster} used for cluster {ca.cluster_id}"
            )
        revoked_at = policy.revoked.get(grant.user)
        if revoked_at is not None and grant.iat <= revoked_at:
            raise CredentialError(f"credential refused: {grant.user} was revoked", user=grant.user)
    return grant


# --- the policy ---------------------------------------------------------------------


def sign_policy(ca: ClusterCA, policy: Policy) -> str:
    if policy.cluster != ca.cluster_id:
        raise UsageError(f"policy of cluster {policy.cluster} signed by cluster {ca.cluster_id}")
    return _sign(ca, _POLICY_TAG, msgspec.msgpack.encode(policy))


def verify_policy(blob: str, ca: ClusterCA) -> Policy:
    policy = _decode(_open(blob, ca, _POLICY_TAG, MAX_POLICY, "policy"), Policy, "policy")
    if policy.cluster != ca.cluster_id:
        raise CredentialError(
            f"policy refused: it is for cluster {policy.cluster}, not {ca.cluster_id}"
        )
    return policy


def supersedes(candidate: Policy, current: Policy) -> bool:
    """Whether a node holding ``current`` should switch to ``candidate``.

    The higher version wins. Two different policies with one version (an admin
    signing from two machines at once) are ordered by ``issued_at`` and then by
    their encoding, so every node settles on the same one.
    """
    if candidate.version != current.version:
        return candidate.version > current.version
    return (candidate.issued_at, msgspec.msgpack.encode(candidate)) > (
        current.issued_at,
        msgspec.msgpack.encode(current),
    )


def _next(policy: Policy, now: float | None, **changes: object) -> Policy:
    issued = policy.issued_at if now is None else float(now)
    return msgspec.structs.replace(policy, version=policy.version + 1, issued_at=issued, **changes)


def revoke(policy: Policy, user: str, now: float) -> Policy:
    """Refuse every credential of ``user`` issued up to ``now``."""
    check_user(user)
    revoked = dict(policy.revoked)
    revoked[user] = max(float(now), revoked.get(user, float(now)))
    return _next(policy, now, revoked=revoked)


def restrict(policy: Policy, prefix: str, now: float | None = None) -> Policy:
    """Make reading under ``prefix`` need a read grant."""
    p = normalize(prefix)
    if p in policy.private:
        raise UsageError(f"{p} is already private")
    return _next(policy, now, private=(*policy.private, p))


def unrestrict(policy: Policy, prefix: str, now: float | None = None) -> Policy:
    """Make ``prefix`` public again (it must be one of the private prefixes)."""
    p = normalize(prefix)
    if p not in policy.private:
        listed = ", ".join(policy.private) or "none"
        raise UsageError(f"{p} is not a private prefix (private prefixes: {listed})")
    return _next(policy, now, private=tuple(x for x in policy.private if x != p))


def remove_node(policy: Policy, name: str, now: float) -> Policy:
    """Refuse the certificate of node ``name`` from now on (a retired or stolen node)."""
    if not name or len(name) > 64:
        raise UsageError(f"invalid node name {name!r:.80}")
    if name in policy.removed_nodes:
        raise UsageError(f"node {name} is already removed")
    return _next(policy, now, removed_nodes=(*policy.removed_nodes, name))
