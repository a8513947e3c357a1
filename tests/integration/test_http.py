"""Every node's HTTP face (issue 16) on real node processes: ``/metrics`` parsed with
prometheus_client's parser moves with the work done, the JSON API answers with the
cluster and a file's stat as an anonymous client sees them (a private file stays
private), bad input gets a JSON 4xx and the node serves on, ``sector status
--json`` shows each node's URL, and a running job's segment total is in ``/api/jobs``
from the first poll that shows the job."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from prometheus_client.parser import text_string_to_metric_families

import sector
from sector.security import tokens
from sector.testing.cluster import ProcCluster, wait_for


def echo_lines(seg: Any) -> Any:
    return bytes(seg.data)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    with ProcCluster(
        tmp_path_factory.mktemp("http"), replicas=2, node_args=["--engines", "1"]
    ) as c:
        c.start(2)
        yield c


def url_of(node: Any) -> str:
    info = json.loads((node.data / "node.json").read_text())
    assert info["http"].startswith("http://127.0.0.1:"), info
    return str(info["http"])


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as r:
            return r.status, r.headers.get("Content-Type", ""), r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("Content-Type", ""), e.read()


def api(base: str, route: str) -> tuple[int, Any]:
    code, ctype, body = get(base + route)
    assert ctype.startswith("application/json"), (route, code, ctype, body[:200])
    return code, json.loads(body)


def scrape(cluster: ProcCluster) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every node's /metrics, parsed, summed over the nodes: (sample name, labels) -> value."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for n in cluster.nodes:
        code, ctype, body = get(url_of(n) + "metrics")
        assert code == 200 and ctype.startswith("text/plain"), (code, ctype)
        for fam in text_string_to_metric_families(body.decode()):
            for s in fam.samples:
                key = (s.name, tuple(sorted(s.labels.items())))
                out[key] = out.get(key, 0.0) + s.value
    return out


def total(
    m: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    return sum(v for (n, ls), v in m.items() if n == name and set(labels.items()) <= set(ls))


def test_metrics_move_with_the_work_done(cluster: ProcCluster, tmp_path: Path) -> None:
    before = scrape(cluster)
    for name in (
        "sector_stored_bytes",
        "sector_free_bytes",
        "sector_blobs",
        "sector_under_replicated_files",
        "sector_repair_queue",
        "sector_repair_bytes_total",
        "sector_scrub_progress_ratio",
        "sector_scrub_corruptions_total",
        "sector_sphere_engines_busy",
        "sector_sphere_segments_failed_total",
        "sector_sphere_segments_speculated_total",
        "sector_request_duration_seconds_bucket",
        "sector_ring_nodes",
        "sector_gossip_members",
    ):
        assert any(n == name for n, _ in before), name
    assert total(before, "sector_ring_nodes") == 4  # each of 2 nodes sees a ring of 2
    data = b"".join(b"line %d of the metrics test\n" % i for i in range(40000))
    f = tmp_path / "in.txt"
    f.write_bytes(data)
    with sector.connect(cluster.address) as c:
        c.put(f, "/metrics/in.txt")
        mid = scrape(cluster)
        # Two replicas of the file came in over the bulk channel.
        grown = total(mid, "sector_bulk_bytes_total", direction="in") - total(
            before, "sector_bulk_bytes_total", direction="in"
        )
        assert grown >= 2 * len(data), grown
        assert total(mid, "sector_stored_bytes") - total(before, "sector_stored_bytes") >= 2 * len(
            data
        )
        for op in ("fs.begin_put", "blob.put"):  # the put's namespace and bulk requests
            assert total(mid, "sector_requests_total", op=op, outcome="ok") > total(
                before, "sector_requests_total", op=op, outcome="ok"
            ), op
        assert total(mid, "sector_request_duration_seconds_count") > total(
            before, "sector_request_duration_seconds_count"
        )
        c.sphere.run(echo_lines, "/metrics/in.txt", records="lines", output="/metrics/out").wait()
    after = scrape(cluster)
    assert total(after, "sector_sphere_segments_run_total") > total(
        before, "sector_sphere_segments_run_total"
    )
    assert total(after, "sector_requests_total") > total(mid, "sector_requests_total")


def test_json_api_serves_the_cluster_and_files(cluster: ProcCluster, tmp_path: Path) -> None:
    base = url_of(cluster.nodes[1])
    code, st = api(base, "api/status")
    assert code == 200
    assert sorted(n["address"] for n in st["nodes"]) == sorted(cluster.addresses())
    assert all(n["http"] and n["http"].startswith("http://") for n in st["nodes"])
    code, me = api(base, "api/node")
    assert code == 200 and me["address"] == cluster.nodes[1].address and "pid" not in me
    data = bytes(range(256)) * 4000 + b"tail"
    f = tmp_path / "x.bin"
    f.write_bytes(data)
    with sector.connect(cluster.address) as c:
        c.put(f, "/api-test/dir/x.bin")
        want = c.stat("/api-test/dir/x.bin")
    code, got = api(base, "api/stat?path=" + quote("/api-test/dir/x.bin"))
    assert code == 200 and got["size"] == len(data) and got["checksum"] == want["checksum"]
    code, ls = api(base, "api/ls?path=/api-test/dir")
    assert code == 200 and [e["name"] for e in ls["entries"]] == ["x.bin"]
    code, ctype, body = get(base + "api/file?path=/api-test/dir/x.bin")
    assert code == 200 and ctype == "application/octet-stream" and body == data
    code, ctype, body = get(base)
    assert code == 200 and ctype.startswith("text/html") and b"/metrics" in body
    # Bad input: a JSON error, a 4xx.
    for route, want_code in (
        ("api/stat?path=/api-test/../etc/passwd", 400),
        ("api/stat?path=relative", 400),
        ("api/stat", 400),
        ("api/stat?path=/no/such/file", 404),
        ("api/file?path=/api-test/dir", 400),
        ("api/nothing-here", 404),
        ("../../etc/passwd", 404),
    ):
        code, err = api(base, route)
        assert code == want_code and err["error"], (route, code, err)


def _raw(addr: tuple[str, int], data: bytes) -> bytes:
    with socket.create_connection(addr, timeout=10) as s:
        s.sendall(data)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_garbage_http_gets_4xx_and_the_node_serves_on(cluster: ProcCluster) -> None:
    base = url_of(cluster.nodes[0])
    u = urlsplit(base)
    addr = (u.hostname or "", u.port or 0)
    for junk in (
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(range(256)) * 4,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n",
        b"GET /" + b"b" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"NOT-HTTP garbage\r\n\r\n",
        b"POST /api/status HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
        b"Connection: close\r\n\r\n0123456789",
    ):
        reply = _raw(addr, junk)
        status = reply.split(b"\r\n", 1)[0]
        assert status.startswith(b"HTTP/1.") and status.split()[1][:1] == b"4", reply[:300]
        assert b"Traceback" not in reply
    code, _, _ = get(base + "api/node")
    assert code == 200
    assert cluster.nodes[0].alive
    assert "Traceback" not in cluster.nodes[0].log.read_text()


def test_status_json_shows_each_node_url(cluster: ProcCluster, sector_cli: Any) -> None:
    r = sector_cli("status", "--json", cluster=cluster.address)
    assert r.returncode == 0, r.stderr
    nodes = json.loads(r.stdout)["nodes"]
    assert sorted(n["http"] for n in nodes) == sorted(url_of(n) for n in cluster.nodes)


def test_private_file_is_refused_to_anonymous_http(tmp_path: Path) -> None:
    with ProcCluster(tmp_path / "c", replicas=1, secure=True) as cl:
        cl.start(1)
        assert cl.ca is not None
        f = tmp_path / "s.txt"
        f.write_bytes(b"secret\n")
        with cl.connect() as c:
            c.put(f, "/private/s.txt")
            c.put(f, "/public/p.txt")
            new = tokens.restrict(tokens.Policy.initial(cl.ca.cluster_id), "/private")
            assert c.put_policy(tokens.sign_policy(cl.ca, new))["taken"]
            wait_for(lambda: c.policy()["private"] == ["/private"], 10, what="the policy")
        base = url_of(cl.nodes[0])
        code, st = api(base, "api/stat?path=/public/p.txt")
        assert code == 200 and st["size"] == 7
        code, _, body = get(base + "api/file?path=/public/p.txt")
        assert code == 200 and body == b"secret\n"
        for route in ("api/stat?path=/private/s.txt", "api/file?path=/private/s.txt"):
            code, err = api(base, route)
            assert code == 403 and "permission denied" in err["error"], (route, code, err)
        code, ls = api(base, "api/ls?path=/private")
        assert code == 403, ls
        # SIGTERM after HTTP use: the node exits 0 with nothing left running behind.
        node = cl.nodes[0]
        cl.stop(node)
        assert node.proc is not None and node.proc.returncode == 0
        log = node.log.read_text()
        for bad in ("Traceback", "Task was destroyed", "Unclosed", "did not stop"):
            assert bad not in log, bad


def slow_task(seg: Any) -> Any:
    import time

    time.sleep(float(seg.param))
    return b"x"


def test_a_jobs_total_is_known_from_its_first_poll(cluster: ProcCluster) -> None:
    """/api/jobs carries the job's segment count from the moment any node shows the
    job, unchanged while it runs: the page's progress is done/total from the start."""
    base = url_of(cluster.nodes[0])
    with cluster.connect() as c:
        job = c.sphere.run(slow_task, tasks=[0.4] * 8, speculate=False)
        seen: list[tuple[int, int]] = []  # (segments, done) of each poll that saw the job
        while not job.done():
            row = next((j for j in api(base, "api/jobs")[1]["sphere"] if j["id"] == job.id), None)
            if row is not None and row["state"] == "running":
                seen.append((row["segments"], row["done"]))
        job.wait(timeout=60)
    assert seen, "the job was never seen running"
    assert {s for s, _d in seen} == {8}, seen
    assert seen[0][1] < 8, seen
