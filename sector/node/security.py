"""A node's security: its certificate, TLS contexts, and the cluster policy's spread.

A node started with ``--tls DIR`` (``node.crt``, ``node.key`` and ``ca.crt``, as written
by ``sector cluster add-node`` or ``sector up``) is *secure*: it serves TLS only,
dials other nodes with its certificate and accepts only peers whose certificate the
cluster CA signed, and checks every request (``sector.security.guard``). Without
``--tls`` a node is open, as a cluster on a private network may choose to be.

The policy (revocations, private prefixes) spreads two ways: a node that takes a newer
version pushes it to every live member at once, and every few seconds each node asks
one random member for its version, so a node that was away catches up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import time
from pathlib import Path
from typing import Any, Protocol

from sector.aio import Every
from sector.errors import CertificateError, SectorError, UsageError
from sector.node.members import Members
from sector.security import pki
from sector.security.guard import NodeAuth
from sector.transport.rpc import RpcPool
from sector.wire.messages import Request, typed


class PolicyPeers(Protocol):
    """What policy spreading needs from its node: the members, this node's address and
    the connection pool (to push, pull, and drop connections of removed nodes)."""

    addr: str
    members: Members
    pool: RpcPool


log = logging.getLogger("sector.security")

POLICY_PULL = 5.0  # seconds between anti-entropy pulls of the policy
FETCH_WITHIN = 10.0  # seconds a joining node tries to get the policy before it serves


class PolicyGet(Request, frozen=True):
    """sec.policy: the cluster's CA and policy; the signed policy itself only if it is
    newer than the asker's version ``have``."""

    op = "sec.policy"
    have: int = -1


class PolicyPut(Request, frozen=True):
    """sec.policy_put: a policy signed by the admin key, to take and spread."""

    op = "sec.policy_put"
    policy: str


class NodeSecurity:
    def __init__(self, tls_dir: Path, data: Path) -> None:
        try:
            self.identity = pki.NodeIdentity.load(tls_dir)
        except SectorError:
            raise
        except Exception as exc:  # unreadable or mismatched files: one clear line
            raise UsageError(f"cannot load the node certificate in {tls_dir}: {exc}") from None
        self.ca = pki.ClusterCA(cert=self.identity.ca, key=None)
        self.server_ctx: ssl.SSLContext = pki.server_context(tls_dir)
        self.client_ctx: ssl.SSLContext = pki.node_client_context(tls_dir)
        self.auth = NodeAuth(self.ca, data)
        self.node: PolicyPeers | None = None
        self._pushes: set[asyncio.Task[None]] = set()

    @property
    def cluster_id(self) -> str:
        return self.ca.cluster_id

    async def on_open(
        self, addr: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """Each connection this node dials: the peer must not be a removed node."""
        sslobj = writer.get_extra_info("ssl_object")
        leaf = sslobj.getpeercert(binary_form=True) if sslobj is not None else None
        if not leaf:
            raise CertificateError(f"{addr} presented no certificate")
        cn = self.ca.verify_leaf(leaf, time.time())
        if cn.startswith("node:") and cn[5:] in self.auth.policy.removed_nodes:
            raise CertificateError(f"{addr} is node {cn[5:]}, removed from the cluster")

    def handlers(self) -> dict[str, Any]:
        return {"sec.policy": self._h_policy, "sec.policy_put": self._h_policy_put}

    def describe(self) -> dict[str, Any]:
        return {
            "tls": True,
            "cluster": self.cluster_id,
            "node_cert": self.identity.name,
            "policy_version": self.auth.policy.version,
        }

    @typed(PolicyGet)
    async def _h_policy(self, req: PolicyGet) -> Any:
        pol = self.auth.policy
        newer = pol.version > req.have and self.auth.policy_blob is not None
        return {
            "cluster": self.cluster_id,
            "ca": self.ca.cert_pem.decode(),
            "version": pol.version,
            "policy": self.auth.policy_blob if newer else None,
            "revoked": sorted(pol.revoked),
            "private": list(pol.private),
            "removed_nodes": list(pol.removed_nodes),
        }

    @typed(PolicyPut)
    async def _h_policy_put(self, req: PolicyPut) -> Any:
        taken = self.offer(req.policy)
        if taken:
            self._spread(req.policy)
        return {"taken": taken, "version": self.auth.policy.version}

    def offer(self, blob: str) -> bool:
        """Take a newer policy; if it removes nodes, pooled connections are dropped so
        that each is opened (and its peer checked) again."""
        before = set(self.auth.policy.removed_nodes)
        taken = self.auth.offer_policy(blob)
        if taken and set(self.auth.policy.removed_nodes) - before and self.node is not None:
            self.node.pool.forget_all()
        return taken

    def _spread(self, blob: str) -> None:
        node = self.node
        if node is None:
            return
        for m in node.members.alive(time.monotonic()):
            if m.addr != node.addr:
                t = asyncio.create_task(self._push(m.addr, blob))
                self._pushes.add(t)
                t.add_done_callback(self._pushes.discard)

    async def _push(self, addr: str, blob: str) -> None:
        assert self.node is not None
        try:
            await self.node.pool.call(addr, "sec.policy_put", {"policy": blob}, timeout=5.0)
        except SectorError as exc:
            log.debug("policy push to %s failed: %s", addr, exc)

    def puller(self) -> Every:
        """The anti-entropy worker: every POLICY_PULL seconds (± half), ask a random
        live member for a newer policy."""
        return Every("policy", self.pull_once, POLICY_PULL, jitter=0.5)

    async def pull_once(self) -> None:
        assert self.node is not None
        peers = [m.addr for m in self.node.members.alive(time.monotonic())]
        peers = [p for p in peers if p != self.node.addr]
        if peers:
            await self._pull_from(random.choice(peers))

    async def _pull_from(self, addr: str) -> bool:
        """Take ``addr``'s policy if it is newer; True if it answered (this node is
        then as current as that member, and ready to serve users)."""
        assert self.node is not None
        try:
            rep = await self.node.pool.call(
                addr, "sec.policy", {"have": self.auth.policy.version}, timeout=5.0
            )
        except SectorError as exc:  # a member out of reach: the next pull asks another
            log.debug("policy pull from %s failed: %s", addr, exc)
            return False
        blob = rep.get("policy") if isinstance(rep, dict) else None
        if isinstance(blob, str):
            self.offer(blob)
        if not self.auth.ready:
            log.info("policy version %d loaded from %s", self.auth.policy.version, addr)
        self.auth.ready = True
        return True

    async def fetch_policy(self, first: str | None, *, restarted: bool) -> None:
        """During the join, before serving users: the policy from ``first`` (the node
        it joined through), else from any member it knows, for at most FETCH_WITHIN
        seconds. A node with no other member has nothing to learn. If none answers, a
        restarted node serves with the policy it kept, as the pull goes on; a new one
        (an empty data directory) stays unready for users until the puller gets it."""
        assert self.node is not None
        me = self.node.addr
        others = [m.addr for m in self.node.members.voters() if m.addr != me]
        if not others and not first:
            self.auth.ready = True
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FETCH_WITHIN):
                for addr in dict.fromkeys([a for a in (first, *others) if a and a != me]):
                    if await self._pull_from(addr):
                        return
        if restarted:
            log.warning(
                "no member answered for the policy: serving with the kept version %d",
                self.auth.policy.version,
            )
            self.auth.ready = True
        else:
            log.warning("no member gave this node the cluster's policy yet; users wait")
