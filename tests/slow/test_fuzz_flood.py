"""A flood of >= 10^6 fuzz frames at live nodes (issue 11): the nodes stay up, answer a
valid client afterwards, keep their files, their logs hold no traceback and their
memory does not run away. Not in the default suite: `make test-slow` (``pytest -m slow``).

Two clusters of three nodes: an open one (plain TCP) and a secure one (TLS), each with
a few files put first. Three *lanes* of ``sector.testing.fuzzflood``, one process each,
throw frames on raw sockets: ``open`` at the open cluster, ``tls-anon`` (a stranger, no
hello) and ``tls-user`` (after a real ``auth.hello`` with a valid user credential, so
frames get past the strangers' limits into the handlers) at the secure one. The
frames: random requests of the nodes' real ops (near-valid templates, random
arguments) pipelined many to a connection, each connection ending in, or going on
after, probes of its kind (random bytes, mutated requests, envelopes of the wrong
shape, the wrong transport). See ``sector.testing.fuzzflood`` for how they are made and
counted; ``SECTOR_FUZZ_FRAMES`` (default 10^6) is the number of frames the nodes must
be *known* to have read (answered, or refused with a close), shared by the lanes;
``SECTOR_FUZZ_FLOOD_SECONDS`` (default 360) bounds the flood's wall time: a flood that
has not reached its frames by then fails the test. (A flood ends as soon as its frames
are read; on a slower 2-core machine a clean-clone CI run read 929,509 frames in 240 s,
the old bound, hence the margin.)

Meanwhile a well-behaved client of each cluster puts and stats a small file twice a
second, through each node in turn: none of its ops may fail. After the flood: every
node alive; a fresh client puts and gets a file, byte-exact, through every node; the
files put before are unchanged (content, checksum, every replica verified); nothing
new in the namespace but the prober's files and the directories of flipped mkdirs
(``flipped_mkdir``: a bit flip can turn the template's ``mkdir -p`` of an existing
directory into a valid mkdir of a new one); nothing next to the data directories; no
traceback in any node's log (but KNOWN_UNFIXED); no node's RSS more than RSS_GROWTH
over what it was before the flood.

It prints a table (per lane and kind: frames written, answered, refused with a close,
held, refusals in the nodes' logs; connections, seconds, frames/s; RSS and CPU seconds
per node) and writes it as JSON: ``flood.json`` in the test's tmp dir, and at
``$SECTOR_FUZZ_JSON`` if set (``bench/results/fuzz_flood.json`` holds a recorded run).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import sector
from sector.testing import fuzzflood
from sector.testing.cluster import NodeProc, ProcCluster
from sector.testing.fuzzframes import templates

pytestmark = pytest.mark.slow

FRAMES = int(os.environ.get("SECTOR_FUZZ_FRAMES", "1000000"))
SECONDS = float(os.environ.get("SECTOR_FUZZ_FLOOD_SECONDS", "360"))
SHARES = {"open": 0.4, "tls-anon": 0.3, "tls-user": 0.3}  # of FRAMES, per lane
STALL_TIMEOUT = 2.0  # the nodes' --stall-timeout: cut-off frames are dropped soon
# A node's peak RSS may grow this much over what it held before the flood (a leak of
# one byte per frame would not show; a buffer held per connection or per frame would).
RSS_GROWTH = 256 << 20
MKDIR_PATH = templates("", 0, "", "")["fs.mkdir"]["path"]
# Bugs found here in modules their owners are to fix (see fuzzflood.tracebacks):
# a request pipelined just before a bulk blob.get on one connection has its reply
# written while the node sendfile()s the blob (sector/transport/server.py switches the
# connection to bulk with requests still in flight on it); reported.
KNOWN_UNFIXED: list[tuple[str, str]] = []
FAILED = ("failed", "hello-refused")  # connection counters that are no connection made


@pytest.fixture(scope="module")
def clusters(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, ProcCluster]]:
    root = tmp_path_factory.mktemp("flood")
    args = ["--stall-timeout", str(STALL_TIMEOUT), "--engines", "1"]
    args += ["--scrub-interval", "3600", "--audit-interval", "3600"]
    with contextlib.ExitStack() as stack:
        out = {}
        for name, secure in (("open", False), ("secure", True)):
            (root / name / "sentinel").mkdir(parents=True)
            cl = stack.enter_context(
                ProcCluster(root / name, replicas=2, node_args=args, secure=secure)
            )
            out[name] = cl.start(3)
        yield out


def put_files(cl: ProcCluster, d: Path) -> dict[str, Any]:
    """Files put before the flood: path -> (sha256, stat checksum, blob, size)."""
    out: dict[str, Any] = {}
    with cl.connect() as c:
        for name, size in [("small.txt", 100), ("empty", 0), ("bulk.bin", 700_000)]:
            data = os.urandom(size)
            (d / name).write_bytes(data)
            got = c.put(d / name, f"/keep/{name}")
            out[got["path"]] = (
                hashlib.sha256(data).hexdigest(),
                got["checksum"],
                got["blob"],
                size,
            )
        c.mkdir("/keep/dir")
    return out


def namespace(c: sector.Client, path: str = "/") -> dict[str, str]:
    """Every path under ``path``: its type."""
    out = {}
    for e in c.ls(path):
        out[e["path"]] = e["type"]
        if e["type"] == "dir":
            out.update(namespace(c, e["path"]))
    return out


def flipped_mkdir(path: str) -> bool:
    """Whether ``path`` is a directory the mkdir template (``fuzzframes.templates``:
    ``mkdir -p /keep/dir``, which exists) makes once a bit flip (at most 8, see
    ``FrameGen.mutate``) has changed its path into one that does not: a valid request,
    not a bug. Such a path has the length of the template's path or of its parent."""
    got = path.encode()
    for want in (MKDIR_PATH.rsplit("/", 1)[0], MKDIR_PATH):
        w = want.encode()
        if (
            len(w) == len(got)
            and sum((a ^ b).bit_count() for a, b in zip(w, got, strict=True)) <= 8
        ):
            return True
    return False


def rss(node: NodeProc, field: str = "VmRSS") -> int:
    """Bytes of the node process's ``field`` in /proc/<pid>/status (VmHWM: its peak)."""
    assert node.proc is not None
    for line in Path(f"/proc/{node.proc.pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(node: NodeProc) -> float:
    """CPU time (user + system) the node process has used."""
    assert node.proc is not None
    fields = Path(f"/proc/{node.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class RssWatch:
    """Samples every node's RSS twice a second while the flood runs."""

    def __init__(self, nodes: dict[str, NodeProc]) -> None:
        self.nodes = nodes
        self.peak: Counter[str] = Counter()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(0.5):
            for name, n in self.nodes.items():
                with contextlib.suppress(OSError, AssertionError):
                    self.peak[name] = max(self.peak[name], rss(n))

    def __enter__(self) -> RssWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class Prober:
    """A well-behaved client of one cluster during the flood: a small put and a stat,
    twice a second, through each node in turn; what failed and the slowest op."""

    def __init__(self, cl: ProcCluster, scratch: Path) -> None:
        self.cl, self.scratch = cl, scratch
        self.ok = 0
        self.errors: list[str] = []
        self.slowest = 0.0
        self.paths: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        i = 0
        while not self.stop.wait(0.5):
            node = self.cl.nodes[i % len(self.cl.nodes)]
            path = f"/probe/p{i}"
            start = time.monotonic()
            local = self.scratch / "probe"
            local.write_bytes(f"probe {i}".encode())
            self.paths.append(path)  # a put that failed may have made it all the same
            try:
                with self.cl.connect(node.address, timeout=30) as c:
                    c.put(local, path)
                    assert c.stat(path)["size"] == len(f"probe {i}")
                self.ok += 1
            except Exception as exc:
                self.errors.append(f"{node.address}: {type(exc).__name__}: {exc}")
            self.slowest = max(self.slowest, time.monotonic() - start)
            i += 1

    def __enter__(self) -> Prober:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()

    def summary(self) -> dict[str, Any]:
        return {"ok": self.ok, "errors": self.errors, "slowest_seconds": self.slowest}


def run_lanes(specs: list[fuzzflood.Spec], d: Path) -> list[dict[str, Any]]:
    """One process per lane; each prints its tally as JSON."""
    procs = []
    for spec in specs:
        f = d / f"{spec.lane}.json"
        f.write_text(json.dumps(spec.__dict__))
        out = open(d / f"{spec.lane}.out", "wb")  # noqa: SIM115 - handed to the child
        err = open(d / f"{spec.lane}.err", "wb")  # noqa: SIM115
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "sector.testing.fuzzflood", str(f)], stdout=out, stderr=err
            )
        )
        out.close()
        err.close()
    results = []
    try:
        for spec, p in zip(specs, procs, strict=True):
            rc = p.wait(SECONDS + 120)  # a lane stops itself at SECONDS
            text = (d / f"{spec.lane}.out").read_text()
            assert rc == 0, f"lane {spec.lane} failed: {(d / f'{spec.lane}.err').read_text()}"
            results.append(json.loads(text))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


def check_cluster(
    cl: ProcCluster, written: dict[str, Any], tmp: Path, probed: list[str]
) -> list[str]:
    """Alive, a fresh put and get through every node, the files unchanged, nothing new
    but the directories of flipped mkdirs (``flipped_mkdir``), which it returns."""
    dead = [n.index for n in cl.nodes if not n.alive]
    assert not dead, f"node(s) {dead} died"
    local = tmp / "after.bin"
    local.write_bytes(os.urandom(300_000))
    with cl.connect() as c:
        c.put(local, "/after.bin")
        for path, (sha, checksum, blob, _) in written.items():
            now = c.stat(path)
            assert (now["checksum"], now["blob"]) == (checksum, blob), path
            assert hashlib.sha256(c.read(path)).hexdigest() == sha, path
            assert all(r["health"] == "ok" for r in c.stat(path, verify=True)["replicas"]), path
        now = namespace(c)
        made = {"/keep", "/keep/dir", "/after.bin", *written}
        extra = {p: t for p, t in now.items() if p not in made | {"/probe", *probed}}
        assert made <= set(now), made - set(now)
        flipped = sorted(p for p, t in extra.items() if t == "dir" and flipped_mkdir(p))
        assert set(extra) == set(flipped), f"new in the namespace: {extra}"
    for n in cl.nodes:
        with cl.connect(n.address) as c:
            assert c.read("/after.bin") == local.read_bytes(), n.index
    assert not any((cl.root / "sentinel").iterdir())
    return flipped


def commit() -> str:
    """The commit measured (empty outside a git checkout)."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=Path(__file__).parent,
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        return out.stdout.strip()
    return ""


def table(
    results: list[dict[str, Any]], logs: dict[str, Counter[str]], nodes: dict[str, Any]
) -> str:
    cols = ("written", "answered", "closed", "held")
    rows = [f"{'lane/kind':<22}" + "".join(f"{c:>11}" for c in (*cols, "log-refused"))]
    for r in results:
        for kind in sorted(r["written"], key=lambda k: -r["written"][k]):
            name = f"{r['lane']}/{kind}"
            vals = [r[c].get(kind, 0) for c in cols] + [sum(logs.get(name, Counter()).values())]
            rows.append(f"{name:<22}" + "".join(f"{v:>11,}" for v in vals))
        conns = sum(v for k, v in r["connections"].items() if k not in FAILED)
        rows.append(
            f"{r['lane'] + ' total':<22}"
            + "".join(f"{sum(r[c].values()):>11,}" for c in cols)
            + f"   read {r['read']:,} in {r['seconds']:.0f} s = {r['read'] / r['seconds']:,.0f}/s,"
            f" {conns:,} connections"
        )
    rows.append("")
    rows.append(f"{'node':<12}{'rss before':>12}{'peak':>12}{'after':>12}  (MiB){'cpu s':>10}")
    for name, m in nodes.items():
        rows.append(
            f"{name:<12}"
            + "".join(f"{m[k] / 2**20:>12.0f}" for k in ("before", "peak", "after"))
            + f"{m['cpu_seconds']:>17.1f}"
        )
    return "\n".join(rows)


@pytest.mark.timeout(SECONDS + 600)
def test_a_million_fuzz_frames_leave_the_nodes_up_and_the_files_unchanged(
    clusters: dict[str, ProcCluster], tmp_path: Path
) -> None:
    written = {}
    for name, cl in clusters.items():
        (tmp_path / name).mkdir()
        written[name] = put_files(cl, tmp_path / name)
    open_, secure = clusters["open"], clusters["secure"]
    user = secure.token("fuzzer", write=["/"], read=["/"], compute=True)
    nodes = {f"{name}/n{n.index}": n for name, cl in clusters.items() for n in cl.nodes}
    before = {name: rss(n) for name, n in nodes.items()}
    cpu = {name: cpu_seconds(n) for name, n in nodes.items()}

    def spec(lane: str, cl: ProcCluster, seed: int) -> fuzzflood.Spec:
        _, checksum, blob, size = written["open" if cl is open_ else "secure"]["/keep/bulk.bin"]
        return fuzzflood.Spec(
            lane=lane,
            addresses=cl.addresses(),
            tls=cl is secure,
            token=user if lane == "tls-user" else None,
            frames=int(FRAMES * SHARES[lane]) + 1,
            seconds=SECONDS,
            seed=seed,
            files={
                "blob": blob,
                "size": size,
                "checksum": checksum,
                "node_id": cl.nodes[1].node_id,
            },
        )

    specs = [spec("open", open_, 1), spec("tls-anon", secure, 2), spec("tls-user", secure, 3)]
    start = time.monotonic()
    probers = {}
    for name, cl in clusters.items():
        (tmp_path / name / "probe").mkdir()
        probers[name] = Prober(cl, tmp_path / name / "probe")
    with RssWatch(nodes) as watch, probers["open"], probers["secure"]:
        results = run_lanes(specs, tmp_path)
    seconds = time.monotonic() - start

    logs: dict[str, Counter[str]] = {}
    for n in nodes.values():
        for k, v in fuzzflood.refusals_in_log(n.log.read_text(errors="replace")).items():
            logs.setdefault(k, Counter()).update(v)
    mem = {
        name: {
            "before": before[name],
            "peak": max(watch.peak[name], rss(n, "VmHWM")),
            "after": rss(n),
            "cpu_seconds": cpu_seconds(n) - cpu[name],
        }
        for name, n in nodes.items()
        if n.alive
    }
    read = sum(r["read"] for r in results)
    record = {
        "frames_target": FRAMES,
        "frames_read": read,
        "frames_written": sum(sum(r["written"].values()) for r in results),
        "seconds": seconds,
        "frames_per_second": read / seconds,
        "lanes": results,
        "log_refusals": {k: dict(v) for k, v in sorted(logs.items())},
        "rss_bytes": mem,
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg": list(os.getloadavg()),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": commit(),
    }
    (tmp_path / "flood.json").write_text(json.dumps(record, indent=2) + "\n")
    if os.environ.get("SECTOR_FUZZ_JSON"):
        Path(os.environ["SECTOR_FUZZ_JSON"]).write_text(json.dumps(record, indent=2) + "\n")
    print()
    print(table(results, logs, mem))
    print(f"frames read by the nodes: {read:,} of {FRAMES:,} in {seconds:.0f} s")

    flipped = {}
    for name, cl in clusters.items():
        (tmp_path / name / "check").mkdir()
        flipped[name] = check_cluster(
            cl, written[name], tmp_path / name / "check", probers[name].paths
        )
    print(f"directories made by flipped mkdirs: {flipped}")
    record["flipped_mkdirs"] = flipped
    record["probers"] = {name: p.summary() for name, p in probers.items()}
    print(f"a client's put + stat during the flood: {record['probers']}")
    (tmp_path / "flood.json").write_text(json.dumps(record, indent=2) + "\n")
    if os.environ.get("SECTOR_FUZZ_JSON"):
        Path(os.environ["SECTOR_FUZZ_JSON"]).write_text(json.dumps(record, indent=2) + "\n")
    found = {
        name: fuzzflood.tracebacks(n.log.read_text(errors="replace"), KNOWN_UNFIXED)
        for name, n in nodes.items()
    }
    assert not any(found.values()), "\n\n".join(t for ts in found.values() for t in ts)
    for name, m in mem.items():
        assert m["peak"] < m["before"] + RSS_GROWTH, f"{name}: RSS {m}"
    for name, p in probers.items():
        assert p.ok and not p.errors, f"a well-behaved client of {name} failed: {p.errors[:5]}"
    for r in results:
        assert r["read"] >= FRAMES * SHARES[r["lane"]], (
            f"lane {r['lane']}: {r['read']:,} frames read in {r['seconds']:.0f} s, not "
            f"{FRAMES * SHARES[r['lane']]:,.0f} (SECTOR_FUZZ_FLOOD_SECONDS={SECONDS:g})"
        )
        assert any(k.startswith(r["lane"] + "/") for k in logs), f"no refusal of {r['lane']} logged"
        assert not r["connections"].get("hello-refused"), r["connections"]
