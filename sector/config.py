"""Typed configuration and where a client finds its cluster.

Defaults live here, each with the reason for its value. A client finds the cluster
in this order: an explicit address, ``SECTOR_CLUSTER``, then the local cluster that
``sector up`` started most recently (its directory is recorded in
``$SECTOR_HOME/current``; ``SECTOR_HOME`` defaults to ``~/.sector``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from sector.errors import UsageError

DEFAULT_PORT = 6000  # the original Sector master port


@dataclass(frozen=True, slots=True, kw_only=True)
class NodeConfig:
    data: Path
    listen: str = f"127.0.0.1:{DEFAULT_PORT}"
    join: str | None = None
    http: str = ""  # HTTP face (issue 16): "HOST:PORT", "" = listen host any port, "off"
    topology: str = ""  # "/dc/rack"; "" = unknown (treated as far from everything)
    host_id: str | None = None  # see NodeConfig.host; None = derived from the address
    replicas: int = 3  # default replica target of files (Sector's default)
    meta_replicas: int = 3  # k: metadata records live on the owner and k-1 successors
    succ_list_len: int = 8  # Chord successor list length r
    stabilize_interval: float = 0.5  # fast enough that a crash is noticed within ~2 s
    gossip_interval: float = 0.5
    dead_after: float = 4.0  # a member silent this long is down for placement and status
    rpc_timeout: float = 10.0
    max_frame: int = 16 << 20  # control frames only; bulk data never travels in frames
    stall_timeout: float = 10.0  # a frame must arrive whole this long after its first byte
    # Connections: a stranger (not yet a node or a user) costs an attacker nothing, so
    # strangers get a quarter of the slots, and a quarter of those per address, counted
    # before their TLS handshake, and are closed after 30 s idle; identified ones always
    # find a slot.
    max_connections: int = 1024
    max_strangers: int = 256
    stranger_idle_timeout: float = 30.0
    # Bytes of requests held (being read or being handled), node-wide: a 16 MiB frame
    # each from 16 peers at once; 64 MiB per address, 32 MiB for all strangers.
    input_budget: int = 256 << 20
    min_free: int = 64 << 20  # a node with less free space takes no new replicas
    quota: int | None = None  # cap on bytes this node stores (None = the disk)
    # Repair (issue 3): two files at a time keeps a recovering cluster serving reads;
    # no byte cap by default (restoring R copies fast is the point), settable per node.
    repair_concurrency: int = 2
    repair_rate: int = 0  # bytes/s copied by repair, 0 = no cap
    repair_scan_interval: float = 30.0  # periodic scan for what the triggers missed
    # Audit: the owner asks each holder whether the copies its records list are there
    # (HDFS's block report, pulled by the owner). Catches copies lost behind the
    # metadata's back (a disk swapped, a file removed by hand) that no read meets.
    audit_interval: float = 600.0
    # Scrub: a full re-hash of a 4 TB disk at 32 MiB/s takes ~1.5 days, well inside
    # a weekly pass, while leaving the disk's bandwidth to clients.
    scrub_rate: int = 32 << 20  # bytes/s re-hashed, 0 = no cap
    scrub_interval: float = 24 * 3600.0  # seconds between the starts of passes
    # GC: an upload's record is committed right after its blobs; 10 minutes is far
    # longer than that gap, so only true orphans are old enough to be looked at.
    gc_grace: float = 600.0
    gc_interval: float = 300.0  # seconds between passes
    # Tombstones (issue 17, meta/purge.py): dropped a day after the removal, far beyond
    # the anti-entropy push (5 min) and the audit; the purge scans the store hourly.
    tombstone_grace: float = 24 * 3600.0
    tombstone_interval: float = 3600.0
    # Sphere: processing engines (worker processes running UDFs); 0 = one per core.
    engines: int = 0
    # The engines' sandbox (sector.sphere.sandbox, sector.node.sandbox): which mode
    # ("auto" = the strongest this host allows), who UDFs run as (a root node's; made
    # if missing), and limits per engine process (0 = the default said there).
    udf_sandbox: str = "auto"
    # Congestion control of bulk streams (transport/wan.py): "auto" = bbr where the
    # kernel has it, else its default; a name pins one (for experiments). None: as
    # SECTOR_BULK_CC says, else auto.
    bulk_cc: str | None = None
    udf_user: str = "sector-udf"
    udf_memory: int = 0  # bytes; default 3/4 of RAM over the engines, >= 1 GiB
    udf_cpu_seconds: int = 600  # CPU seconds per task
    udf_nofile: int = 4096
    udf_nproc: int = 0  # default 256 + engines * (cores + 16): per uid, host-wide
    udf_hide: tuple[str, ...] = ()  # more paths UDFs must not see
    udf_bind: tuple[str, ...] = ()  # directories UDFs may read and write where they are
    # Swarm distribution (issue 14). The cache of other nodes' files: 0 = a tenth of the
    # disk's free space at start, at least 2 GiB where the disk has 8 GiB free
    # (node/cache.py). Pieces: 4 MiB as Kraken and Dragonfly, doubled past 2048 pieces
    # a file (storage/pieces.py). Uploads of pieces: bytes/s, 0 = no cap.
    cache_size: int = 0
    piece_size: int = 4 << 20
    swarm_upload_rate: int = 0
    # Security: a directory with node.crt, node.key and ca.crt makes the node secure
    # (TLS only, peers must prove membership, every request checked); None = open.
    tls: Path | None = None
    extra: dict[str, str] = field(default_factory=dict)


def sector_home() -> Path:
    return Path(os.environ.get("SECTOR_HOME") or Path.home() / ".sector")


def default_cluster_dir() -> Path:
    return sector_home() / "cluster"


def current_cluster_dir() -> Path | None:
    """The directory of the local cluster started last by ``sector up``."""
    ptr = sector_home() / "current"
    try:
        d = Path(ptr.read_text().strip())
    except OSError:
        return None
    return d if (d / "cluster.json").exists() else None


def read_cluster_file(d: Path) -> dict[str, object]:
    try:
        info = json.loads((d / "cluster.json").read_text())
    except (OSError, ValueError):
        raise UsageError(f"no local cluster in {d} (start one with `sector up`)") from None
    if not isinstance(info, dict):
        raise UsageError(f"corrupt cluster file in {d}")
    return info


def resolve_address(address: str | None = None) -> str:
    """The address a client should enter the cluster through."""
    if address:
        return address
    env = os.environ.get("SECTOR_CLUSTER")
    if env:
        return env
    d = current_cluster_dir()
    if d is None:
        raise UsageError(
            "no cluster given: pass --cluster HOST:PORT, set SECTOR_CLUSTER, or start one with `sector up`"
        )
    info = read_cluster_file(d)
    addrs = info.get("addresses")
    if isinstance(addrs, list) and addrs:
        return str(addrs[0])
    return str(info.get("address", ""))


def local_cluster_addresses(address: str) -> list[str]:
    """Other entry points of the local cluster, tried when ``address`` does not answer."""
    d = current_cluster_dir()
    if d is None:
        return []
    try:
        info = read_cluster_file(d)
    except UsageError:
        return []
    addrs = info.get("addresses")
    if not isinstance(addrs, list) or address not in [str(a) for a in addrs]:
        # Never fall over to a cluster the user did not name.
        return []
    return [str(a) for a in addrs if str(a) != address]
