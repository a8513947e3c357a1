"""Who may do what: pure decisions over an identity, a path and the policy.

The rules follow the Sector paper (§3, security): anyone may read, writing needs an
entry in the write ACL, running Sphere jobs needs the compute right. On top of that
the admin may mark path prefixes private, and then reading under them needs a read
(or write) grant covering the path.

* **nodes** (a peer whose TLS certificate the cluster CA signed, CN ``node:*``) may
  read and write anything and run job stages: they act for users whose rights the
  first node already checked. They are *not* admins: cluster administration is a
  user with an ``admin`` grant, checked separately with ``require_node`` for the
  internal operations only nodes may call.
* **users** carry a verified ``Grant``; ``admin`` implies every other right.
* **anonymous** callers read public paths and nothing else.

Paths are normalised here before matching, so ``/a//b`` meets the ``/a/b`` rules and
``/a/../b`` is refused outright (InvalidPath, a UsageError) rather than matched as text.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from sector.errors import PermissionDenied
from sector.meta.records import normalize
from sector.security.tokens import Grant, Policy

Kind = Literal["anonymous", "user", "node"]


@dataclass(frozen=True, slots=True)
class Identity:
    """The proven caller of a request."""

    kind: Kind
    name: str = ""
    grant: Grant | None = None

    @classmethod
    def node(cls, name: str) -> Identity:
        return cls("node", name)

    @classmethod
    def user(cls, grant: Grant) -> Identity:
        return cls("user", grant.user, grant)

    def describe(self) -> str:
        """For messages: "anonymous", "alice", "node n1"."""
        if self.kind == "node":
            return f"node {self.name}"
        if self.kind == "user":
            return self.name
        return "anonymous"


ANONYMOUS = Identity("anonymous")


def covers(prefix: str, path: str) -> bool:
    """Whether ``prefix`` is ``path`` or one of its ancestors (both normalised).

    Component-aware: "/a" covers "/a" and "/a/x" but not "/ab"; "/" covers all.
    """
    if prefix == "/":
        return True
    return path == prefix or path.startswith(prefix + "/")


def _any_covers(prefixes: Iterable[str], path: str) -> bool:
    return any(covers(p, path) for p in prefixes)


def is_private(path: str, policy: Policy | None) -> bool:
    return policy is not None and _any_covers(policy.private, normalize(path))


def can_read(ident: Identity, path: str, policy: Policy | None) -> bool:
    if ident.kind == "node":
        return True
    p = normalize(path)
    if policy is None or not _any_covers(policy.private, p):
        return True
    g = ident.grant
    if ident.kind != "user" or g is None:
        return False
    return g.admin or _any_covers(g.read, p) or _any_covers(g.write, p)


def can_write(ident: Identity, path: str) -> bool:
    if ident.kind == "node":
        return True
    g = ident.grant
    if ident.kind != "user" or g is None:
        return False
    return g.admin or _any_covers(g.write, normalize(path))


def can_compute(ident: Identity) -> bool:
    if ident.kind == "node":
        return True
    g = ident.grant
    return ident.kind == "user" and g is not None and (g.compute or g.admin)


def is_admin(ident: Identity) -> bool:
    """Only a user with an admin grant: being a node is not being an admin."""
    g = ident.grant
    return ident.kind == "user" and g is not None and g.admin


def is_node(ident: Identity) -> bool:
    return ident.kind == "node"


def require_read(ident: Identity, path: str, policy: Policy | None) -> None:
    if not can_read(ident, path, policy):
        raise PermissionDenied(
            f"permission denied: {ident.describe()} cannot read {path}",
            who=ident.describe(),
            path=path,
        )


def require_write(ident: Identity, path: str) -> None:
    if not can_write(ident, path):
        raise PermissionDenied(
            f"permission denied: {ident.describe()} cannot write {path}",
            who=ident.describe(),
            path=path,
        )


def require_compute(ident: Identity) -> None:
    if not can_compute(ident):
        raise PermissionDenied(
            f"permission denied: {ident.describe()} has no compute right", who=ident.describe()
        )


def require_admin(ident: Identity) -> None:
    if not is_admin(ident):
        raise PermissionDenied(
            f"permission denied: {ident.describe()} is not an admin", who=ident.describe()
        )


def require_node(ident: Identity, op: str) -> None:
    if not is_node(ident):
        raise PermissionDenied(
            f"permission denied: only cluster nodes may call {op}", who=ident.describe(), op=op
        )
