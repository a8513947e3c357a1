"""The node's side of security: who a connection is, and what each request may do.

``NodeAuth`` is the RPC server's authenticator on a secure node (one started with a
cluster certificate). A connection's identity is set once when it opens: a peer whose
TLS certificate was signed by the cluster CA as ``node:*`` is a *node*; anyone else is
*anonymous* until it presents a credential with ``auth.hello``, which every node
verifies on its own against the cluster key: no account server is asked.

Every request then passes two checks, both on the node that serves it:

1. ``authorize(op)``, by op name, before the handler runs. Ops that only nodes call
   (metadata replication, ring maintenance, replica copies) are refused to anyone
   else. An op missing from ``OPS`` counts as node-only: new ops fail closed.
2. Inside the handler, for what depends on the arguments: ``read(path)``,
   ``write(path)``, ``compute()``, ``admin()``. They read the caller from
   ``current_session``; on an open node (no authenticator) they allow everything.

The cluster *policy* (revoked users, private path prefixes) is a document signed by the
admin key. A node accepts a newer version from anyone (the signature is what counts),
stores it in its data directory, and passes it on; see ``Node._policy_loop``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Annotated, Any

import msgspec

from sector.errors import BadRequest, CredentialError, PermissionDenied, Unavailable
from sector.meta import records as rec
from sector.security import authz, pki, tokens
from sector.security._files import write_atomic
from sector.security.authz import ANONYMOUS, Identity
from sector.transport.rpc import Session, current_session
from sector.wire.messages import Request, decode

log = logging.getLogger("sector.security")

# How each op is checked before its handler runs: "any" (the handler checks paths or
# rights itself, or the op reveals nothing), "admin" (an admin credential or a node),
# anything else: nodes only.
OPS: dict[str, str] = {
    # namespace: the handlers check read/write on their paths
    "fs.stat": "any",
    "fs.ls": "any",
    "fs.mkdir": "any",
    "fs.begin_put": "any",
    "fs.commit_put": "any",
    "fs.put_small": "any",
    "fs.rm": "any",
    "fs.mv": "any",
    "fs.setrf": "any",
    "fs.status": "any",
    # data: blob.get checks read on the blob's path, the puts check write
    "blob.get": "any",
    "blob.get_small": "any",
    "blob.pieces": "any",  # checks read on the blob's path, as blob.get does
    "blob.put": "any",
    "blob.put_small": "any",
    "blob.verify": "any",
    "repair.report": "any",  # a reader telling the owner of a bad copy (it re-checks)
    "node.info": "any",
    "node.ping": "any",
    "sec.policy": "any",
    "sec.check": "any",  # "may I?": a job checks its rights before it starts
    "sec.policy_put": "any",  # signed by the admin key: the signature is the check
    # Sphere: the handlers check the compute right
    "sphere.info": "any",
    "sphere.run": "any",
    "sphere.poll": "any",
    "sphere.cancel": "any",
    "sphere.resend": "any",
    "sphere.commit": "any",
    "sphere.cleanup": "any",
    "sphere.stop": "any",  # the handler lets the job's user or an admin cancel it
    # swarm (issue 14): the handlers check read on their paths; the tracker's ops,
    # piece lists, pieces and cache drops are for nodes only
    "swarm.want": "any",
    "swarm.get": "any",
    "swarm.fetch": "any",
    "swarm.job": "any",
    # operators
    "node.drain": "admin",
    "scrub.now": "admin",
    "gc.now": "admin",
    "repair.audit": "admin",
}

POLICY_FILE = "policy.tok"
# What a node serves users before it has the cluster's policy: liveness, and the
# policy itself (an admin may push it).
BEFORE_POLICY = frozenset({"node.ping", "sec.policy", "sec.policy_put"})
VERIFIED_CACHE = 4096


class Hello(Request, frozen=True):
    """auth.hello: a user's signed credential, for the rest of the connection."""

    op = "auth.hello"
    token: str


class NodeAuth:
    """The authenticator of a secure node (see the module docstring)."""

    def __init__(self, ca: pki.ClusterCA, data: Path) -> None:
        self.ca = ca
        self.path = data / POLICY_FILE
        self.policy = tokens.Policy.initial(ca.cluster_id)
        self.policy_blob: str | None = None
        # False while a joining node has not yet pulled the cluster's policy from a
        # member: until then it serves users nothing that a policy could forbid.
        self.ready = True
        # Credentials whose signature was checked: a reconnecting client (or a flood of
        # hellos with one credential) costs a dict lookup, not an ECDSA verify.
        self._verified: dict[str, tokens.Grant] = {}
        with contextlib.suppress(OSError):
            blob = self.path.read_text().strip()
            try:
                self.policy = tokens.verify_policy(blob, ca)
                self.policy_blob = blob
            except CredentialError as exc:
                log.warning("ignoring the stored policy: %s", exc)

    # ------------------------------------------------------------------ Authenticator

    def on_connect(self, session: Session) -> None:
        session.auth = self
        session.identity = ANONYMOUS
        if session.peer_cert is not None:
            try:
                cn = self.ca.verify_leaf(session.peer_cert, time.time())
            except Exception:
                return  # the TLS layer checked the chain; anything odd stays anonymous
            if cn.startswith("node:") and cn[5:] not in self.policy.removed_nodes:
                session.identity = Identity.node(cn[5:])

    def identified(self, session: Session) -> bool:
        ident = session.identity
        return isinstance(ident, Identity) and ident.kind in ("node", "user")

    def hello(self, session: Session, args: dict[str, Any]) -> Any:
        token = decode(Hello, args).token
        grant = self._verified.get(token)
        if grant is None:
            grant = tokens.verify(token, self.ca, self.policy, time.time())
            if len(self._verified) >= VERIFIED_CACHE:
                self._verified.pop(next(iter(self._verified)))
            self._verified[token] = grant
        session.identity = Identity(kind="user", name=grant.user, grant=grant)
        _still_valid(session.identity, self)  # expiry and revocation: checked every time
        return {"user": grant.user, "cluster": self.ca.cluster_id}

    def authorize(self, op: str) -> None:
        authorize(op)

    # ------------------------------------------------------------------ policy

    def offer_policy(self, blob: str) -> bool:
        """Take a signed policy if it is newer than ours; True if it was."""
        if not isinstance(blob, str) or len(blob) > (1 << 20):
            raise BadRequest("a policy is a string of at most 1 MiB")
        pol = tokens.verify_policy(blob, self.ca)
        if pol.cluster != self.ca.cluster_id:
            raise CredentialError("credential refused: a policy of another cluster")
        if not tokens.supersedes(pol, self.policy):
            return False
        write_atomic(self.path, (blob + "\n").encode())
        self.policy, self.policy_blob = pol, blob
        log.info("policy version %d taken", pol.version)
        return True


# ---------------------------------------------------------------------- checks


def _caller() -> tuple[Identity, NodeAuth] | None:
    sess = current_session.get()
    if sess is None or not isinstance(sess.auth, NodeAuth):
        return None  # an open node, or a call from the node itself
    ident = sess.identity if isinstance(sess.identity, Identity) else ANONYMOUS
    if ident.kind == "user" and ident.grant is not None:
        _still_valid(ident, sess.auth)
    elif ident.kind == "node" and ident.name in sess.auth.policy.removed_nodes:
        raise PermissionDenied(f"permission denied: node {ident.name} was removed")
    return ident, sess.auth


def _still_valid(ident: Identity, auth: NodeAuth) -> None:
    """A credential revoked or expired after its connection said hello stops working."""
    g = ident.grant
    assert g is not None
    if g.exp and time.time() > g.exp:
        raise CredentialError(f"credential refused: {g.user}'s credential has expired")
    at = auth.policy.revoked.get(g.user)
    if at is not None and g.iat <= at:
        raise CredentialError(f"credential refused: {g.user} was revoked")


def caller() -> Identity | None:
    """Who sent the request being served; None on an open node."""
    got = _caller()
    return None if got is None else got[0]


def authorize(op: str) -> None:
    got = _caller()
    if got is None:
        return
    ident, auth = got
    if not auth.ready and ident.kind != "node" and op not in BEFORE_POLICY:
        raise Unavailable(
            "this node is joining and has not loaded the cluster's access policy yet; "
            "try again, or another node"
        )
    rule = OPS.get(op, "node")
    if rule == "any" or ident.kind == "node":
        return
    if rule == "admin":
        authz.require_admin(ident)
        return
    authz.require_node(ident, op)


def read(path: str) -> None:
    got = _caller()
    if got is None:
        return
    ident = got[0]
    if authz.covers(STAGING, path) and path != STAGING and ident.kind != "node":
        # Jobs' staging areas are private to their users (job ids, unfinished output).
        own = ident.kind == "user" and authz.covers(f"{STAGING}/{ident.name}", path)
        if not (own or authz.is_admin(ident)):
            raise PermissionDenied(f"permission denied: {ident.describe()} cannot read {path}")
        return
    authz.require_read(ident, path, got[1].policy)


STAGING = "/.sphere"  # where Sphere jobs stage output (see sector.sphere.driver)


def write(path: str) -> None:
    got = _caller()
    if got is None:
        return
    ident = got[0]
    own_staging = ident.kind == "user" and authz.covers(f"{STAGING}/{ident.name}", path)
    if own_staging and authz.can_compute(ident):
        return  # one's own jobs' staging: covered by the compute right; the mv out is checked
    authz.require_write(ident, path)


def user() -> str | None:
    """The user name of the caller; None for a node, anonymous or on an open node."""
    got = _caller()
    if got is None or got[0].kind != "user":
        return None
    return got[0].name


Paths = Annotated[list[str], msgspec.Meta(max_length=64)]


class Check(Request, frozen=True):
    """sec.check: whether the caller may compute, write and read these paths."""

    op = "sec.check"
    compute: bool = False
    write: Paths = []
    read: Paths = []


async def h_check(a: dict[str, Any]) -> Any:
    """``sec.check {compute, write: [paths], read: [paths]}``: raise if any is denied."""
    req = decode(Check, a)
    if req.compute:
        compute()
    for p in req.write:
        write(rec.normalize(p))
    for p in req.read:
        read(rec.normalize(p))
    return {"ok": True}


def compute() -> None:
    got = _caller()
    if got is not None:
        authz.require_compute(got[0])


def private_reads() -> bool:
    """Whether reads by this caller need their paths checked (some paths are private)."""
    got = _caller()
    return got is not None and got[0].kind != "node" and bool(got[1].policy.private)


def is_admin() -> bool:
    """Whether the caller holds an admin credential (True on an open node)."""
    got = _caller()
    return got is None or authz.is_admin(got[0])


def is_node() -> bool:
    got = _caller()
    return got is None or got[0].kind == "node"


__all__ = [
    "OPS",
    "NodeAuth",
    "PermissionDenied",
    "authorize",
    "caller",
    "compute",
    "is_admin",
    "is_node",
    "private_reads",
    "read",
    "write",
]
