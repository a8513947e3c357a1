"""Several hosts, emulated with network namespaces: nodes started by hand with
`sector node --listen HOST:PORT --join ANY`, each host with its own IP address."""

from __future__ import annotations

from pathlib import Path

import sector
from sector.testing.cluster import ProcCluster, wait_for
from sector.testing.netns import Hosts


def test_nodes_on_separate_hosts_never_put_two_copies_on_one_host(tmp_path: Path) -> None:
    # Host 0 runs two nodes (two data directories, two ports, one IP): placement must
    # treat them as one host. Hosts 1 and 2 run one node each.
    with Hosts(3) as hosts, ProcCluster(tmp_path / "cl") as cl:
        first = cl.add(listen=f"{hosts.ips[0]}:7000", wrap=hosts.wrap(0))
        cl.add(join=first.address, listen=f"{hosts.ips[0]}:7001", wrap=hosts.wrap(0))
        cl.add(join=first.address, listen=f"{hosts.ips[1]}:7000", wrap=hosts.wrap(1))
        # Any node is a valid place to join through, not only the first.
        cl.add(join=f"{hosts.ips[1]}:7000", listen=f"{hosts.ips[2]}:7000", wrap=hosts.wrap(2))
        cl.wait_ring()

        def all_up_everywhere() -> bool:
            # Placement uses each entry's member view: every node must see every node
            # up (a ring that is whole can still have a newcomer "joining" in a view).
            for addr in cl.addresses():
                with sector.connect(addr) as c:
                    states = {n["address"]: n["state"] for n in c.status()["nodes"]}
                if states != dict.fromkeys(cl.addresses(), "up"):
                    return False
            return True

        wait_for(all_up_everywhere, 30, what="every node to see every node up")
        src = tmp_path / "f.bin"
        src.write_bytes(b"z" * 70_000)
        # A client may enter through any node.
        for k, entry in enumerate(cl.addresses()):
            with sector.connect(entry) as c:
                for i in range(4):
                    st = c.put(src, f"/mh/e{k}/f{i}")
                    ips = [r["address"].rsplit(":", 1)[0] for r in st["replicas"]]
                    assert len(ips) == 3 and len(set(ips)) == 3, st
                    assert c.read(f"/mh/e{k}/f{i}") == src.read_bytes()
                listing = c.ls(f"/mh/e{k}")
                assert sorted(e["name"] for e in listing) == [f"f{i}" for i in range(4)]
            st = cl.status()
            assert {n["address"] for n in st["nodes"] if n["state"] == "up"} == set(cl.addresses())
