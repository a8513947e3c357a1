"""The web page every node serves (issue 16), in a real headless chromium against real
node processes: every page loads with no console error, the overview lists every node
and shows a SIGKILLed one as down, the file browser lists a directory and shows a
file's replicas (and its download link serves the bytes), a running Sphere job's
progress moves while it runs, a phone-width window has no horizontal overflow, and
a job's user cancels the job from the page."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sector.disco import runtime
from sector.disco.core import Job, JobError
from sector.testing import browser
from sector.testing.cluster import ProcCluster, wait_for

pytestmark = pytest.mark.skipif(browser.available() is not None, reason=str(browser.available()))

TABS = ("overview", "files", "jobs", "workers")


def slow_task(seg: Any) -> Any:
    import time

    time.sleep(0.25)
    return str(seg.param).encode()


def count_map(line: Any, params: Any) -> Any:
    yield line, 1


def broken_map(line: Any, params: Any) -> Any:
    raise ValueError("this map is broken on purpose")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcCluster]:
    with ProcCluster(tmp_path_factory.mktemp("web"), replicas=2, node_args=["--engines", "1"]) as c:
        c.start(3)
        c.wait_ring()
        yield c
    runtime.close_clients()


@pytest.fixture(scope="module")
def base(cluster: ProcCluster) -> str:
    return str(json.loads((cluster.nodes[0].data / "node.json").read_text())["http"])


@pytest.fixture(scope="module")
def driver() -> Iterator[Any]:
    d = browser.chrome()
    try:
        yield d
    finally:
        d.quit()


@pytest.fixture
def page(driver: Any, base: str) -> Iterator[Any]:
    """The browser, its window desktop-sized; no console error may be left at the end."""
    driver.set_window_size(1280, 900)
    browser.console_errors(driver)
    yield driver
    assert browser.console_errors(driver) == []


def rows(driver: Any, css: str) -> list[dict[str, str]]:
    """The data-* attributes of the elements matching ``css``."""
    got = driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0]), e => Object.assign({}, e.dataset))",
        css,
    )
    return list(got)


def text_of(driver: Any, css: str) -> str:
    """The text of the first element matching ``css`` ("" if none), read in one step:
    the page re-renders at every poll, so a found element can go stale before its read."""
    got = driver.execute_script(
        "const e = document.querySelector(arguments[0]); return e ? e.innerText : ''", css
    )
    return str(got)


def click(driver: Any, css: str, text: str | None = None) -> bool:
    """Click the first element matching ``css`` (whose text is ``text``, if given) in one
    step, for the same reason as text_of; False if there is none yet."""
    return bool(
        driver.execute_script(
            "const e = Array.from(document.querySelectorAll(arguments[0]))"
            ".find(e => arguments[1] === null || e.innerText.trim() === arguments[1]);"
            "if (!e) return false; e.click(); return true",
            css,
            text,
        )
    )


def test_every_tab_loads_and_the_overview_lists_every_node(
    page: Any, base: str, cluster: ProcCluster
) -> None:
    for tab in TABS:
        page.get(f"{base}#{tab}")
        wait_for(
            lambda t=tab: page.execute_script(
                "return !document.getElementById(arguments[0]).hidden", t
            ),
            10,
            what=f"tab {tab}",
        )
    page.get(f"{base}#overview")
    want = {n.address for n in cluster.nodes}
    got = wait_for(
        lambda: {r["address"] for r in rows(page, "#nodes tbody tr") if r["state"] == "up"} == want,
        15,
        what="every node up on the overview",
    )
    assert got
    assert "Nodes up" in text_of(page, "#cards")
    # a worker card per background loop of each node
    page.get(f"{base}#workers")
    wait_for(lambda: "scrub" in text_of(page, "#worker-list"), 10, what="workers")


def test_file_browser_lists_a_directory_and_shows_replicas(
    page: Any, base: str, cluster: ProcCluster, tmp_path: Path
) -> None:
    src = tmp_path / "data.csv"
    src.write_bytes(b"a,b\n" + b"1,2\n" * 1000)
    with cluster.connect() as c:
        c.mkdir("/web/dir", parents=True)
        c.put(str(src), "/web/dir/data.csv")
        c.put(str(src), "/web/top.csv")
        st = c.stat("/web/dir/data.csv")
    page.get(f"{base}#files?path=/web")
    wait_for(
        lambda: {r["name"] for r in rows(page, "#listing tbody tr")} == {"dir", "top.csv"},
        10,
        what="the listing of /web",
    )
    assert click(page, "#listing a", "📁 dir/")
    wait_for(lambda: click(page, "#listing a", "data.csv"), 10, what="dir listed")
    reps = wait_for(
        lambda: {r["replica"] for r in rows(page, "#replicas tbody tr")}, 10, what="replicas"
    )
    assert reps == {r["address"] for r in st["replicas"]}
    href = page.find_element("id", "download").get_attribute("href")
    with urllib.request.urlopen(href, timeout=30) as r:
        assert r.read() == src.read_bytes()
    # each replica re-hashes its copy: health ok
    assert click(page, "#verify")
    wait_for(
        lambda: text_of(page, "#replicas tbody").split().count("ok") == len(reps),
        15,
        what="verified replicas",
    )


def test_a_running_jobs_progress_moves(page: Any, base: str, cluster: ProcCluster) -> None:
    with cluster.connect() as c:
        job = c.sphere.run(slow_task, tasks=list(range(36)), speculate=False)
        page.get(f"{base}#jobs")

        def progress() -> dict[str, str] | None:
            mine = [r for r in rows(page, ".job") if r["job"] == job.id]
            return mine[0] if mine else None

        first = wait_for(lambda: (p := progress()) and int(p["running"]) > 0 and p, 20, what="job")
        moved = wait_for(
            lambda: (p := progress()) and int(p["done"]) > int(first["done"]) and p,
            20,
            what="the job's progress to move",
        )
        assert int(moved["failed"]) == 0
        # the job's rows name the nodes that run its segments
        text = text_of(page, f'.job[data-job="{job.id}"]')
        assert sum(n.address in text for n in cluster.nodes) >= 2, text
        job.wait(timeout=60)


def test_disco_jobs_show_their_outcome_and_traceback(
    page: Any, base: str, cluster: ProcCluster, tmp_path: Path
) -> None:
    src = tmp_path / "in.txt"
    src.write_bytes(b"a\nb\na\n")
    with cluster.connect() as c:
        c.put(str(src), "/webdisco/in.txt")
    good = Job(master=cluster.address).run(input=["/webdisco/in.txt"], map=count_map)
    bad = Job(master=cluster.address).run(input=["/webdisco/in.txt"], map=broken_map)
    good.wait()
    with pytest.raises(JobError):
        bad.wait()
    page.get(f"{base}#jobs")

    def outcome(name: str) -> str:
        return text_of(page, f'tr[data-disco="{name}"]')

    wait_for(lambda: "ready" in outcome(good.name), 10, what="the good job ready")
    wait_for(lambda: "dead" in outcome(bad.name), 10, what="the broken job dead")
    assert "this map is broken on purpose" in outcome(bad.name)
    assert "Traceback" in outcome(bad.name)


def test_phone_width_has_no_horizontal_overflow(page: Any, base: str) -> None:
    page.set_window_size(390, 844)
    for tab in TABS:
        page.get(f"{base}#{tab}")
        wait_for(
            lambda t=tab: page.execute_script(
                "const s = document.getElementById(arguments[0]);"
                "return !s.hidden && s.innerText.trim().length > 0",
                t,
            ),
            10,
            what=f"tab {tab} rendered",
        )
        over = page.execute_script(
            "return document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert over <= 0, f"tab {tab} overflows a phone's width by {over} px"


def test_a_killed_node_shows_as_down(page: Any, base: str, cluster: ProcCluster) -> None:
    victim = cluster.nodes[-1]
    page.get(f"{base}#overview")
    wait_for(
        lambda: any(r["address"] == victim.address for r in rows(page, "#nodes tbody tr")),
        10,
        what="the victim listed",
    )
    cluster.kill(victim)
    t0 = time.monotonic()
    state = wait_for(
        lambda: next(
            (
                r["state"]
                for r in rows(page, "#nodes tbody tr")
                if r["address"] == victim.address and r["state"] != "up"
            ),
            None,
        ),
        30,
        what="the killed node shown as not up",
    )
    assert state in ("down", "unreachable"), state
    print(f"\nkilled node shown as {state} after {time.monotonic() - t0:.1f} s")


def test_an_open_cluster_takes_no_actions_over_http(base: str, cluster: ProcCluster) -> None:
    body = json.dumps({"address": cluster.nodes[0].address}).encode()
    assert browser.post(base + "api/drain", body, None)[0] == 401
    assert browser.post(base + "api/drain", body, "anything")[0] == 403


def test_draining_a_node_needs_an_admin_credential(page: Any, tmp_path: Path) -> None:
    """On a secure cluster: no credential 401, a user's 403, garbage 4xx; an admin
    drains a node from the page (its state shows as draining), and undrains it by API."""
    with ProcCluster(tmp_path, replicas=1, secure=True) as cl:
        cl.start(2)
        base = str(json.loads((cl.nodes[0].data / "node.json").read_text())["http"])
        victim = cl.nodes[1].address
        body = json.dumps({"address": victim}).encode()
        assert browser.post(base + "api/drain", body, None)[0] == 401
        code, err = browser.post(base + "api/drain", body, cl.token("ann", write=["/ann"]))
        assert code == 403, err
        assert 400 <= browser.post(base + "api/drain", body, "not-a-credential")[0] < 500
        assert browser.post(base + "api/drain", b"{", cl.admin_token)[0] == 400
        nobody = json.dumps({"address": "127.0.0.1:1"}).encode()
        assert browser.post(base + "api/drain", nobody, cl.admin_token)[0] == 404
        page.get(f"{base}#overview")
        page.find_element("css selector", "#admin summary").click()
        page.find_element("id", "credential").send_keys(cl.admin_token)
        button = f'button[data-drain="{victim}"]'
        wait_for(lambda: page.find_elements("css selector", button), 10, what="drain button")
        page.execute_script("document.querySelector(arguments[0]).click()", button)
        page.switch_to.alert.accept()

        def state() -> str | None:
            got = [r["state"] for r in rows(page, "#nodes tbody tr") if r["address"] == victim]
            return got[0] if got else None

        wait_for(lambda: state() in ("draining", "drained"), 15, what="the node draining")
        undrain = json.dumps({"address": victim, "cancel": True}).encode()
        code, rep = browser.post(base + "api/drain", undrain, cl.admin_token)
        assert code == 200 and rep["state"] == "up", rep
        wait_for(lambda: state() == "up", 15, what="the node up again")
        page.get("about:blank")  # no polls of the cluster once it is stopped


def sleepy_task(seg: Any) -> Any:
    import time

    time.sleep(float(seg.param))
    return b"late"


def test_a_running_job_is_cancelled_from_the_page(page: Any, tmp_path: Path) -> None:
    """On a secure cluster, with the job's user's credential pasted: the page shows the
    job's whole segment count from the start and a cancel button; clicking it ends the
    job in its driver with JobCancelled and the page shows it cancelled."""
    from sector.errors import JobCancelled

    with ProcCluster(tmp_path, replicas=1, secure=True, node_args=["--engines", "1"]) as cl:
        cl.start(2)
        base = str(json.loads((cl.nodes[0].data / "node.json").read_text())["http"])
        ann = cl.token("ann", write=["/ann"], compute=True)
        with cl.connect(token=ann) as c:
            job = c.sphere.run(sleepy_task, tasks=[60] * 5, speculate=False)
            page.get(f"{base}#overview")
            page.find_element("css selector", "#admin summary").click()
            page.find_element("id", "credential").clear()
            page.find_element("id", "credential").send_keys(ann)
            page.get(f"{base}#jobs")
            card = f'div.job[data-job="{job.id}"]'
            got = wait_for(lambda: rows(page, card), 20, what="the job on the page")
            assert got[0]["segments"] == "5", got
            button = f'button[data-cancel-job="{job.id}"]'
            wait_for(lambda: page.find_elements("css selector", button), 10, what="cancel button")
            page.execute_script("document.querySelector(arguments[0]).click()", button)
            page.switch_to.alert.accept()
            with pytest.raises(JobCancelled):
                job.wait(timeout=15)
            wait_for(
                lambda: [r["state"] for r in rows(page, card)] == ["cancelled"],
                15,
                what="the job shown as cancelled",
            )
            page.get("about:blank")  # no polls of the cluster once it is stopped
