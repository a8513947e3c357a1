"""The README's screenshots of the web page (issue 16): a local cluster of three nodes
with some files and a Sphere job running, photographed by a headless chromium.

    python tools/web_screenshot.py [OUT_DIR]     # writes web.png and web-jobs.png (docs/)
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sector.testing import browser
from sector.testing.cluster import ProcCluster, wait_for


def slow_task(seg: Any) -> Any:
    import time

    time.sleep(0.4)
    return str(seg.param).encode()


def main(out: Path) -> None:
    why = browser.available()
    if why:
        sys.exit(f"web_screenshot: {why}")
    out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        ProcCluster(Path(tmp) / "cl", replicas=2, node_args=["--engines", "2"]) as cl,
    ):
        first = cl.add(topology="/dc1/rack1")
        cl.add(join=first.address, topology="/dc1/rack2")
        cl.add(join=first.address, topology="/dc2/rack1")
        cl.wait_ring()
        c = cl.connect()
        src = Path(tmp) / "f.csv"
        for i in range(6):
            src.write_bytes(b"x,y\n" * (20_000 * (i + 1)))
            c.put(str(src), f"/data/part-{i}.csv")
        base = json.loads((first.data / "node.json").read_text())["http"]
        d = browser.chrome(1280, 800)
        try:
            d.get(f"{base}#overview")
            wait_for(lambda: len(d.find_elements("css selector", "#nodes tbody tr")) == 3, 15)
            time.sleep(1.0)  # a second poll: the figures settled
            d.save_screenshot(str(out / "web.png"))
            job = c.sphere.run(slow_task, tasks=list(range(60)), speculate=False)
            d.get(f"{base}#jobs")
            wait_for(lambda: d.find_elements("css selector", ".job"), 20)
            time.sleep(3.0)  # some segments done: the bar has moved
            d.save_screenshot(str(out / "web-jobs.png"))
            job.wait(timeout=120)
        finally:
            d.quit()
    print(f"wrote {out / 'web.png'} and {out / 'web-jobs.png'}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent.parent / "docs")
