"""Permission decisions: prefix matching, the rights matrix, the exact messages."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sector.errors import ClusterError, InvalidPath, PermissionDenied
from sector.security.authz import (
    ANONYMOUS,
    Identity,
    can_compute,
    can_read,
    can_write,
    covers,
    is_admin,
    require_admin,
    require_compute,
    require_node,
    require_read,
    require_write,
)
from sector.security.tokens import Grant, Policy, restrict


def grant(
    user: str,
    *,
    write: tuple[str, ...] = (),
    read: tuple[str, ...] = (),
    compute: bool = False,
    admin: bool = False,
) -> Identity:
    return Identity.user(
        Grant(
            user=user,
            write=write,
            read=read,
            compute=compute,
            admin=admin,
            iat=0.0,
            exp=0.0,
            serial="0" * 16,
            cluster="c" * 16,
        )
    )


ALICE = grant("alice", write=("/data/alice",), compute=True)
BOB = grant("bob", read=("/private/b",))
ROOT = grant("root", admin=True)
NODE = Identity.node("n1")
POLICY = restrict(restrict(Policy.initial("c" * 16), "/private"), "/data/alice/secret")


@pytest.mark.parametrize(
    ("prefix", "path", "expected"),
    [
        ("/", "/", True),
        ("/", "/anything/at/all", True),
        ("/a", "/a", True),
        ("/a", "/a/x", True),
        ("/a", "/a/x/y", True),
        ("/a", "/ab", False),
        ("/a", "/", False),
        ("/a/b", "/a", False),
        ("/a/b", "/a/bc/d", False),
    ],
)
def test_covers(prefix: str, path: str, expected: bool) -> None:
    assert covers(prefix, path) is expected


segment = st.text(st.characters(whitelist_categories=("Ll", "Nd")), min_size=1, max_size=4)
paths = st.lists(segment, max_size=5).map(lambda s: "/" + "/".join(s))


@given(paths, paths)
def test_covers_is_ancestry_of_components(prefix: str, path: str) -> None:
    pre = [s for s in prefix.split("/") if s]
    parts = [s for s in path.split("/") if s]
    assert covers(prefix, path) is (parts[: len(pre)] == pre)
    assert covers(prefix, prefix) and covers("/", path)


def test_describe() -> None:
    assert ANONYMOUS.describe() == "anonymous"
    assert ALICE.describe() == "alice"
    assert NODE.describe() == "node n1"


def test_read_matrix() -> None:
    for who in (ANONYMOUS, ALICE, BOB, ROOT, NODE):
        assert can_read(who, "/public/x", POLICY)
        assert can_read(who, "/private/b/x", None)  # no policy: everything public
    assert not can_read(ANONYMOUS, "/private/a", POLICY)
    assert not can_read(ALICE, "/private/a", POLICY)
    assert can_read(BOB, "/private/b/f", POLICY) and not can_read(BOB, "/private/a", POLICY)
    assert can_read(ROOT, "/private/a", POLICY) and can_read(NODE, "/private/a", POLICY)
    # A write grant covering a private path lets its holder read it too.
    assert can_read(ALICE, "/data/alice/secret/f", POLICY)
    assert not can_read(BOB, "/data/alice/secret/f", POLICY)
    # Paths are normalised before matching.
    assert not can_read(ANONYMOUS, "//private//a/", POLICY)
    with pytest.raises(InvalidPath):
        can_read(ANONYMOUS, "/public/../private/a", POLICY)


def test_write_matrix() -> None:
    assert not can_write(ANONYMOUS, "/data/alice/x")
    assert can_write(ALICE, "/data/alice") and can_write(ALICE, "/data/alice/x/y")
    assert not can_write(ALICE, "/data/alicex") and not can_write(ALICE, "/data")
    assert not can_write(BOB, "/private/b/x")  # a read grant is not a write grant
    assert can_write(ROOT, "/anything") and can_write(NODE, "/anything")
    assert not can_write(Identity("user", "ghost"), "/x")  # a user without a grant


def test_compute_and_admin() -> None:
    assert can_compute(ALICE) and can_compute(ROOT) and can_compute(NODE)
    assert not can_compute(BOB) and not can_compute(ANONYMOUS)
    assert is_admin(ROOT)
    assert not is_admin(ALICE) and not is_admin(NODE) and not is_admin(ANONYMOUS)


def test_messages() -> None:
    cases = [
        (lambda: require_write(ALICE, "/data/x"), "permission denied: alice cannot write /data/x"),
        (
            lambda: require_write(ANONYMOUS, "/data/x"),
            "permission denied: anonymous cannot write /data/x",
        ),
        (
            lambda: require_read(ANONYMOUS, "/private/a", POLICY),
            "permission denied: anonymous cannot read /private/a",
        ),
        (lambda: require_compute(BOB), "permission denied: bob has no compute right"),
        (lambda: require_admin(ALICE), "permission denied: alice is not an admin"),
        (
            lambda: require_node(ROOT, "meta.replicate"),
            "permission denied: only cluster nodes may call meta.replicate",
        ),
    ]
    for call, message in cases:
        with pytest.raises(PermissionDenied) as ei:
            call()
        assert str(ei.value) == message
    assert issubclass(PermissionDenied, ClusterError)


def test_allowed_calls_return_quietly() -> None:
    require_write(ALICE, "/data/alice/x")
    require_read(BOB, "/private/b", POLICY)
    require_compute(ALICE)
    require_admin(ROOT)
    require_node(NODE, "meta.replicate")
