"""The node: composes routing, membership, metadata, storage and the RPC server.

Start-up order matters and is the only place it is written down:
1. data directory, persistent node UUID (so a restarted node is the same node),
   stores (SQLite metadata, blob files);
2. the RPC server on the listen address (port 0 = ephemeral), handlers registered;
3. the ring: create a new one, or join through any node (retried until a deadline:
   nodes of a cluster may start in any order);
   (a restarted node first asks its peers whether it was away too long: tombstones.py);
4. background workers (Chord maintenance, gossip, metadata sync), each a named task;
5. ``node.json`` in the data directory says the node is ready and where it listens.

Graceful stop (SIGTERM): announce "leaving" by gossip, hand every metadata record to
the successor, tell the ring neighbours, then close. A SIGKILL skips all of it; the
successors hold replicas of everything this node owned.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import os
import random
import time
from typing import Any

import msgspec

from sector.aio import Every, Worker, cancel_and_wait
from sector.config import NodeConfig
from sector.errors import (
    BadRequest,
    ClusterError,
    ConnectError,
    SectorError,
    TransportError,
    UsageError,
)
from sector.ids import node_id, to_hex
from sector.meta.service import MetaService
from sector.meta.store import MetaStore
from sector.node import status
from sector.node.fs import FsService
from sector.node.gc import GcWorker
from sector.node.http import NodeHttp
from sector.node.identity import load_uuid, next_incarnation
from sector.node.members import Drain, Gossip, Member, Members, members_from_wire
from sector.node.quorum import MEMBERS_FILE, Quorum
from sector.node.repair import RepairWorker
from sector.node.scrub import ScrubWorker
from sector.node.security import NodeSecurity
from sector.node.sphere import SphereService
from sector.node.swarm import SwarmService
from sector.node.tombstones import TombstoneWorker
from sector.routing.chord import ChordState, Peer
from sector.routing.driver import ChordDriver
from sector.security import guard
from sector.storage.blobs import BlobStore
from sector.storage.inventory import Inventory
from sector.storage.transfer import BlobService
from sector.transport import wan
from sector.transport.rpc import RpcPool, Server, split_addr
from sector.wire.messages import typed

log = logging.getLogger("sector.node")

DRAIN_MARK = "draining"  # file in the data directory: this node is being drained


def host_identity(addr: str, explicit: str | None) -> str:
    """What "one host" means for placement ("never two copies on one host").

    An explicit ``--host-id`` wins. Otherwise the IP address, except on loopback: a
    local cluster of several processes on 127.0.0.1 stands for several hosts (that is
    what it is for), so there each node is a host of its own.
    """
    if explicit:
        return explicit
    host, _ = split_addr(addr)
    try:
        if ipaddress.ip_address(host).is_loopback:
            return addr
    except ValueError:
        if host == "localhost":
            return addr
    return host


class Node:
    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.data = cfg.data
        self.started = time.time()
        self.security = NodeSecurity(cfg.tls, cfg.data) if cfg.tls is not None else None
        sec = self.security
        self.pool = RpcPool(
            timeout=cfg.rpc_timeout,
            max_frame=cfg.max_frame,
            ssl=sec.client_ctx if sec else None,
            on_open=sec.on_open if sec else None,
        )
        self.handlers: dict[str, Any] = {}
        self.server = Server(
            self.handlers,
            {},
            max_frame=cfg.max_frame,
            stall_timeout=cfg.stall_timeout,
            max_connections=cfg.max_connections,
            max_strangers=cfg.max_strangers,
            max_strangers_per_peer=max(1, cfg.max_strangers // 4),
            stranger_idle_timeout=cfg.stranger_idle_timeout,
            max_input_bytes=cfg.input_budget,
            ssl=sec.server_ctx if sec else None,
            authenticator=sec.auth if sec else None,
        )
        self.loops: list[Worker] = []  # gossip, the policy pull
        self._probe: asyncio.Task[None] | None = None  # gossip to a member seen down
        self._stopped = asyncio.Event()
        self.leaving = False
        self.http_url: str | None = None  # set once the HTTP face listens

    # ------------------------------------------------------------------ Ring protocol for meta/fs

    @property
    def me(self) -> Peer:
        return self.state.me

    def responsible_for(self, key: int) -> bool:
        return self.state.serves(key)

    def predecessor(self) -> Peer | None:
        return self.state.predecessor

    def replica_peers(self, k: int) -> list[Peer]:
        return self.state.replica_peers(k)

    # The partition rules (node/quorum.py) answer for the metadata layer's Ring.
    def owner_hint(self, key: int) -> Peer | None:
        return self.quorum.owner_hint(key)

    def voters(self) -> int:
        return self.quorum.voters()

    def _is_member(self, node_id: str, addr: str) -> bool:
        m = self.members.get(node_id)
        return m is not None and m.addr == addr

    def quorum_refusal(self) -> str | None:
        return self.quorum.refusal()

    def view_successors(self, key: int, n: int) -> list[Peer]:
        return self.quorum.view_successors(key, n)

    def view_state(self) -> tuple[bool, bool]:
        return self.quorum.view_state()

    def write_refusal(self, key: int) -> str | None:
        return self.quorum.write_refusal(key)

    def converged(self) -> bool:
        return self.quorum.converged()

    async def lookup(self, key: int, *, verify: bool = False) -> Peer:
        peer, _ = await self.driver.lookup(key, verify=verify)
        return peer

    def failed(self, peer: Peer, exc: BaseException | None = None) -> None:
        if self.quorum.suspect(to_hex(peer.id), peer.addr, exc):
            self.state.peer_failed(peer)
            self.pool.forget(peer.addr)

    async def call(
        self, addr: str, op: str, args: dict[str, Any], timeout: float | None = None
    ) -> Any:
        return await self.pool.call(addr, op, args, timeout=timeout)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        cfg = self.cfg
        host, port = split_addr(cfg.listen)
        if host in ("0.0.0.0", "::", ""):
            # The listen address is also what peers are told to dial: a wildcard would
            # have every node advertise an address that means "myself" to the dialer.
            raise UsageError(
                f"listen on a specific address, not {host} (peers dial what a node listens on)"
            )
        try:
            wan.configure(cfg.bulk_cc or os.environ.get("SECTOR_BULK_CC") or "auto")
        except ValueError as exc:
            raise UsageError(f"--bulk-cc: {exc}") from None
        self.data.mkdir(parents=True, exist_ok=True)
        if self.security is not None:
            self.data.chmod(0o700)  # replicas of private files: for the node's user only
        self.uuid = load_uuid(self.data)
        nid = node_id(self.uuid)
        self.inventory = Inventory(str(self.data / "inventory.sqlite3"))
        self.blobs = BlobStore(self.data, quota=cfg.quota, inventory=self.inventory)
        self.blobs.min_free = cfg.min_free
        self.blobs.piece_base = cfg.piece_size
        self.store = MetaStore(str(self.data / "meta.sqlite3"))
        restarted = (self.data / MEMBERS_FILE).exists()
        if self.security is not None and (cfg.join or restarted):
            # A node joining a secure cluster (or coming back to one) serves users only
            # once it has the cluster's current policy: see NodeSecurity.fetch_policy.
            self.security.auth.ready = False
        addr = await self.server.start(host, port)
        self.addr = addr
        self.host = host_identity(addr, cfg.host_id)
        self.state = ChordState(Peer(nid, addr), succ_list_len=cfg.succ_list_len)
        self.driver = ChordDriver(
            self.state,
            self.pool,
            stabilize_interval=cfg.stabilize_interval,
            fix_fingers_interval=cfg.stabilize_interval,
            check_pred_interval=cfg.stabilize_interval * 2,
            rpc_timeout=min(2.0, cfg.rpc_timeout),
            on_change=self._ring_changed,
            probe_targets=lambda: self.quorum.probe_targets(),
        )
        self.members = Members(
            Member(
                id=to_hex(nid),
                addr=addr,
                host=self.host,
                topology=cfg.topology,
                pid=os.getpid(),
                incarnation=next_incarnation(self.data),
                hb=0,
                data=str(self.data.resolve()),
            ),
            dead_after=cfg.dead_after,
        )
        self.quorum = Quorum(self.members, self.state, self.responsible_for, self.data)
        self.quorum.load()
        if (self.data / DRAIN_MARK).exists():
            self._set_draining(True)  # a drain survives a restart until cancelled
        self.meta = MetaService(self.store, self, k=cfg.meta_replicas, rpc_timeout=cfg.rpc_timeout)
        self.tombs = TombstoneWorker(self, cfg.tombstone_grace, cfg.tombstone_interval)
        if restarted:  # back after longer than the tombstone grace: forget (meta/purge.py)
            await self.tombs.check_stale(cfg.join)
        self.transfer = BlobService(
            self.blobs,
            self.inventory,
            self.pool,
            me=(to_hex(nid), addr),
            suspect=self.quorum.suspect,
            is_member=self._is_member,
        )
        self.fs = FsService(self)
        self.repair = RepairWorker(
            self,
            concurrency=cfg.repair_concurrency,
            rate=cfg.repair_rate,
            scan_interval=cfg.repair_scan_interval,
            audit_interval=cfg.audit_interval,
            settle=cfg.dead_after + 1.0,
        )
        self.handlers.update(self.driver.handlers())
        self.handlers.update(self.meta.handlers())
        self.handlers.update(self.fs.handlers())
        self.handlers.update(self.transfer.handlers())
        self.handlers.update(self.repair.handlers())
        # Scrub and gc (issue 3, parts 2-3): like repair, wait for the member table.
        self.scrub = ScrubWorker(
            self, rate=cfg.scrub_rate, interval=cfg.scrub_interval, settle=cfg.dead_after + 1.0
        )
        self.gc = GcWorker(
            self, grace=cfg.gc_grace, interval=cfg.gc_interval, settle=cfg.dead_after + 1.0
        )
        self.handlers.update(self.scrub.handlers())
        self.handlers.update(self.gc.handlers())
        self.sphere = SphereService(self)
        self.handlers.update(self.sphere.handlers())
        self.server.bulk_handlers.update(self.sphere.bulk_handlers())
        self.swarm = SwarmService(self)  # issue 14: tracker, cache, piece serving, fetches
        self.handlers.update(self.swarm.handlers())
        self.server.bulk_handlers.update(self.swarm.bulk_handlers())
        self.fs.on_blob_gone = self.swarm.forget
        self.meta.on_unseen = self.fs.finish_rm  # records rule 7
        self.handlers.update(
            {
                "node.gossip": self._h_gossip,
                "node.info": self._h_info,
                "node.ping": self._h_ping,
                "node.drain": self._h_drain,
                **self.tombs.handlers(),
            }
        )
        self.server.bulk_handlers.update(self.transfer.bulk_handlers())
        if self.security is not None:
            self.security.node = self
            self.handlers.update(self.security.handlers())
        else:
            self.handlers["sec.policy"] = self._h_open_policy
        self.handlers["sec.check"] = guard.h_check
        self._refresh_self()
        if cfg.join:
            await self._join(cfg.join)
        else:
            self.driver.create()
        if self.security is not None and not self.security.auth.ready:
            await self.security.fetch_policy(cfg.join, restarted=restarted)
        await self.meta.start()
        await self.driver.start()
        self.loops = [Every("gossip", self._gossip_tick, self.cfg.gossip_interval), self.tombs]
        if self.security is not None:
            self.loops.append(self.security.puller())
        for w in self.loops:
            await w.start()
        await self.repair.start()
        await self.scrub.start()
        await self.gc.start()
        await self.sphere.start()
        await self.swarm.start()
        self.http = NodeHttp(self)  # /metrics, /api/, the landing page (issue 16)
        self.http_url = await self.http.start(cfg.http)
        self._write_ready()
        log.info(
            "node %s listening on %s (%s)", to_hex(nid)[:8], addr, cfg.topology or "no topology"
        )

    async def _join(self, bootstrap: str) -> None:
        # The --join address first, then every member the saved table names: a node
        # whose bootstrap host is down (or moved) rejoins through any node it knew.
        others = [m.addr for m in self.members.voters() if m.id != self.members.me_id]
        tries = [bootstrap, *sorted(a for a in others if a != bootstrap)]
        # A restarted node that reaches none of its cluster (a partition) serves alone
        # after 15 s (no quorum: no writes; the merge probe joins it to the ring later);
        # a new node gives up after 60 s with an error (a wrong --join address).
        deadline = time.monotonic() + (15 if others else 60)
        k = 0
        while True:
            via = tries[k % len(tries)]
            k += 1
            try:
                await self.driver.join(via)
                await self._gossip_with(via)
                return
            except (TransportError, ClusterError) as exc:
                # Unreachable bootstrap, or a ring still forming (no live successor
                # found yet): nodes of a cluster may start in any order, so retry.
                if time.monotonic() > deadline:
                    if others:
                        log.warning("no member of the cluster answers (%s); alone for now", exc)
                        self.driver.create()
                        return
                    raise ConnectError(f"cannot join through {bootstrap}: {exc}") from None
                if k % len(tries) == 0:
                    await asyncio.sleep(0.5)

    def _write_ready(self) -> None:
        info = {"id": to_hex(self.state.me.id), "address": self.addr, "pid": os.getpid()}
        info["http"] = self.http_url
        tmp = self.data / "node.json.tmp"
        tmp.write_text(json.dumps(info) + "\n")
        os.replace(tmp, self.data / "node.json")

    def _ring_changed(self) -> None:
        self.meta.ring_changed()
        self.repair.ring_changed()

    async def leave(self) -> None:
        """Graceful leave: hand off metadata, tell the ring, stop."""
        if self.leaving:
            return
        self.leaving = True
        self.members.update_self(time.monotonic(), state="leaving")
        with contextlib.suppress(Exception):
            await self._gossip_round()
        succ = next((p for p in self.state.successors if p.id != self.state.me.id), None)
        if succ is not None:
            log.info("leaving: handing metadata to %s", succ.addr)
            try:
                await self.meta.handoff_all(succ)
            except SectorError as exc:
                log.warning("handoff to %s failed: %s", succ.addr, exc)
        log.info("leaving: handoff done, stopping")
        self.members.update_self(time.monotonic(), state="left")
        with contextlib.suppress(Exception):
            await self._gossip_round()
        with contextlib.suppress(Exception):
            await self.driver.leave()
        await self.stop()

    async def stop(self) -> None:
        with contextlib.suppress(AttributeError):
            await self.http.stop()
        for w in self.loops:
            await w.stop()
        for t in await cancel_and_wait([self._probe]):
            log.warning("background task %s did not stop", t.get_name())
        for name in ("driver", "repair", "scrub", "gc", "sphere", "swarm"):
            with contextlib.suppress(Exception):
                await getattr(self, name).stop()
        await self.meta.stop()
        await self.server.close()
        self.transfer.io.shutdown(wait=True)
        self.transfer.pumps.shutdown(wait=False, cancel_futures=True)
        await self.pool.close()
        self.store.close()
        with contextlib.suppress(AttributeError):
            self.inventory.close()
        with contextlib.suppress(OSError):
            (self.data / "node.json").unlink()
        self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    # ------------------------------------------------------------------ membership

    def _refresh_self(self) -> Member:
        return self.members.update_self(
            time.monotonic(), used=self.blobs.used, free=self.blobs.free()
        )

    async def _gossip_tick(self) -> None:
        try:
            await self._gossip_round()
        finally:
            # Checked every round (a set comparison): a member turning down starts a
            # repair scan within one gossip interval (dropping its pooled link here too
            # was tried and taken back, see the stop-10 note).
            self.repair.members_changed()

    async def _gossip_round(self) -> None:
        now = time.monotonic()
        self._refresh_self()
        self.members.expire(now)
        peers = {m.addr for m in self.members.reachable(now) if m.id != self.members.me_id}
        peers |= {p.addr for p in self.state.known_peers() if p.id != self.state.me.id}
        # Members seen down are still tried, one a round: the far side of a partition
        # is only "down" until the network heals, and gossip must find it again.
        down = sorted(
            m.addr
            for m in self.members.voters()
            if m.id != self.members.me_id and m.addr not in peers
        )
        if down and (self._probe is None or self._probe.done()):
            # In the background, one at a time: a probe into a black hole waits for its
            # timeout, and the round must not (our heartbeat would go stale).
            self._probe = asyncio.create_task(self._gossip_with(random.choice(down)))
        if peers:
            await self._gossip_with(random.choice(sorted(peers)))
        self.quorum.save()

    async def _gossip_with(self, addr: str) -> None:
        try:
            rep = await self.pool.call(
                addr,
                "node.gossip",
                {"entries": msgspec.to_builtins(self.members.entries())},
                timeout=2.0,
            )
        except SectorError as exc:  # unreachable, or just starting (no gossip handler yet)
            m = self.members.by_addr(addr)
            if m is not None and isinstance(exc, TransportError):
                self.quorum.suspect(m.id, addr, exc)
            return
        try:
            if self.members.merge(members_from_wire(rep), time.monotonic()):
                self.quorum.save()  # a new member (or address) is saved at once
        except ValueError as exc:
            log.warning("bad gossip reply from %s: %s", addr, exc)

    @typed(Gossip)
    async def _h_gossip(self, req: Gossip) -> Any:
        if self.members.merge(req.entries, time.monotonic()):
            self.quorum.save()
        return msgspec.to_builtins(self.members.entries())

    def member_view(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        self._refresh_self()
        return [
            {
                "id": m.id,
                "address": m.addr,
                "pid": m.pid,
                "state": st,
                "topology": m.topology,
                "host": m.host,
                "bytes_used": m.used,
                "bytes_free": m.free,
                "data": m.data,
            }
            for m, st in self.members.view(now)
        ]

    def alive_ids(self) -> set[str]:
        """Members that are up and take new replicas (draining ones excluded)."""
        return {m.id for m in self.members.alive(time.monotonic())}

    def draining_ids(self) -> set[str]:
        now = time.monotonic()
        return {m.id for m in self.members.reachable(now) if m.state == "draining"}

    # ------------------------------------------------------------------ drain

    def _set_draining(self, on: bool) -> None:
        # Gossiped state does the work: placement skips a draining member, and owners'
        # repair moves the copies it lists there (repair_policy rule 5). The local
        # refusal covers writers whose member table has not heard yet.
        self.members.update_self(time.monotonic(), state="draining" if on else "up")
        self.blobs.refuse = "node is draining: it takes no new replicas" if on else ""
        mark = self.data / DRAIN_MARK
        if on:
            mark.touch()
        else:
            with contextlib.suppress(FileNotFoundError):
                mark.unlink()

    @typed(Drain)
    async def _h_drain(self, req: Drain) -> Any:
        """``{cancel?}``: start (or cancel) draining this node; progress is in fs.status."""
        if self.leaving:
            raise BadRequest("node is leaving")
        self._set_draining(not req.cancel)
        with contextlib.suppress(Exception):
            await self._gossip_round()
        me = self.members.me
        return {"id": to_hex(self.state.me.id), "address": self.addr, "state": me.state}

    async def _h_open_policy(self, a: dict[str, Any]) -> Any:
        return {"cluster": None, "version": 0, "policy": None, "revoked": [], "private": []}

    async def _h_ping(self, a: dict[str, Any]) -> Any:
        now = time.monotonic()
        return {
            "id": to_hex(self.state.me.id),
            "address": self.addr,
            "members": [m.addr for m in self.members.alive(now)],
            # Live members by ring id: lets a client send single-record requests
            # straight to the likely owner (one hop; a wrong guess is forwarded).
            # Draining members still own their metadata, so they stay in the hints.
            "ring": [
                [m.id, m.addr] for m in self.members.reachable(now) if m.state in ("up", "draining")
            ],
            # Sphere's scheduler places segments by topology distance.
            "topology": {m.id: m.topology for m in self.members.alive(now)},
        }

    async def _h_info(self, a: dict[str, Any]) -> Any:
        info = await self.info()
        # Strangers (not a node, not an admin) see what fs.status shows them.
        return info if guard.is_node() or guard.is_admin() else status.hide_insides(info)

    async def info(self) -> dict[str, Any]:
        """This node's figures, state and workers (``node.info``, ``sector status``)."""
        counts = await asyncio.to_thread(self.meta.counts)  # + listed holders now down:
        counts["under_replicated"] += self.repair.lacking(self.alive_ids())
        held = await asyncio.to_thread(self.repair.held_on, self.draining_ids())
        repair = self.repair.status()
        return {
            "id": to_hex(self.state.me.id),
            "address": self.addr,
            "pid": os.getpid(),
            "load": os.getloadavg()[0],  # the host's 1-minute load average (web page)
            "http": self.http_url,
            "bytes_used": self.blobs.used,
            "bytes_free": self.blobs.free(),
            "min_free": self.cfg.min_free,
            "state": self.members.me.state,
            # Owned files still listing each draining node: 0 everywhere = drained.
            "draining_held": held,
            "security": self.security.describe() if self.security else {"tls": False},
            # How UDFs are confined here: full | userns | none (README "Sandbox").
            "sandbox": self.sphere.sandbox,
            "blobs": self.blobs.count,
            **counts,
            "repair_queue": repair["queue"],
            "swarm": self.swarm.status(),  # cache and piece counters (issue 14)
            "bulk": {**wan.describe(), **self.transfer.stats},  # cc (issue 15), gets/puts
            # Every background loop of the node, in one shape (``sector status --workers``).
            "workers": [
                repair,
                self.repair.scanner.status(),
                self.repair.auditor.status(),
                self.scrub.status(),
                self.gc.status(),
                self.sphere.status(),
                self.swarm.worker.status(),
                self.meta.handoff.status(),
                *(w.status() for w in self.driver.workers),
                *(w.status() for w in self.loops),
            ],
            "ring": {
                "predecessor": self.state.predecessor.addr if self.state.predecessor else None,
                "successors": [p.addr for p in self.state.successors],
                "merges": self.driver.merges,
                "events": [f"{w}: {d}" for w, d in list(self.state.events)[-16:]],
            },
            "partition": self.quorum.view(),
            # Slots and buffered input (transport/admission.py): a flood shows here.
            "connections": {**self.server.admission.counts(), "input": self.server.input.total},
        }
