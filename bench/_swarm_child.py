"""One host's part of a bench/swarm.py run: started by the bench inside a host's network
namespace (``ip netns exec``), it gets ready, waits at the barrier, does its transfer
and reports.

    python bench/_swarm_child.py CONTROL_SOCKET SPEC_JSON

The control socket is the bench's Unix socket (a path: reachable from every network
namespace). The protocol, one JSON object a line:

    child -> bench   {"host": i, "ready": true}        prepared: listening, imported, ...
    bench -> child   {"go": true}                       the barrier opens (all at once)
    child -> bench   {"host": i, "start": t0, "end": t1, "ok": bool, "error": "...", ...}
    bench -> child   (closes the socket)                stop: seeders and relays exit

``start`` is this process's ``time.time()`` when "go" arrived and ``end`` when it had
the whole file; every host is a namespace of one machine, so they share one clock.
A seeder already has the file: it reports ``end = start`` at once and keeps serving
until the bench closes the socket.

Kinds (``spec["kind"]``):

    cmd      run ``spec["argv"]`` after the barrier (curl, the `sector` CLI process)
    sector   the `sector` command run in this process: ``sector.cli.main.main(argv)``,
             imported before the barrier (what the CLI does, without the interpreter's
             start-up, which the ``cmd`` kind keeps)
    aria2    aria2c: a seeder started before the barrier, or a leecher started after
             it; aria2's --on-bt-download-complete hook writes the time it finished
    lt       libtorrent: a session made before the barrier; a seeder adds the torrent
             before (and is ready once its tracker answered), a leecher after; the
             time is taken at torrent_finished_alert
    relay    the pipelined chain: host 0 sends the file to host 1 after the barrier;
             host i writes what it receives to its file and forwards it to host i+1
             as it arrives (no fault tolerance: the lower bound of the issue)
    mount    a `sector mount` made before the barrier; after it, ``spec["argv"]``
             (``python -c "import numpy"`` with the mount on PYTHONPATH)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BUF = 1 << 20


class Control:
    def __init__(self, path: str, host: int) -> None:
        self.host = host
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.connect(path)
        self.rfile = self.sock.makefile("r")

    def send(self, **msg: Any) -> None:
        self.sock.sendall((json.dumps({"host": self.host, **msg}) + "\n").encode())

    def wait_go(self) -> float:
        line = self.rfile.readline()
        if not line:
            raise SystemExit(0)  # the bench gave up before the barrier
        return time.time()

    def wait_stop(self) -> None:
        """Until the bench closes the socket."""
        while self.rfile.readline():
            pass


def _tail(text: str | bytes, n: int = 400) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return " ".join(text.split())[-n:]


# -- kinds --------------------------------------------------------------------------


def run_cmd(ctl: Control, spec: dict[str, Any]) -> None:
    ctl.send(ready=True)
    t0 = ctl.wait_go()
    proc = subprocess.run(spec["argv"], capture_output=True, check=False)
    t1 = time.time()
    ok = proc.returncode == 0
    ctl.send(start=t0, end=t1, ok=ok, error="" if ok else _tail(proc.stderr + proc.stdout))


def run_sector(ctl: Control, spec: dict[str, Any]) -> None:
    # What `sector get` imports on its way (the CLI imports lazily), done before the
    # barrier so the clock holds the command's work, not the interpreter's start-up.
    import sector.cli.commands
    import sector.client  # noqa: F401
    from sector.cli.main import main

    ctl.send(ready=True)
    t0 = ctl.wait_go()
    err = open(spec["stderr"], "w+")  # noqa: SIM115 - read back below
    old = os.dup(2)
    os.dup2(err.fileno(), 2)
    try:
        code = main(spec["argv"])
    except SystemExit as exc:
        code = int(exc.code or 0) if not isinstance(exc.code, str) else 1
    finally:
        sys.stderr.flush()
        os.dup2(old, 2)
    t1 = time.time()
    err.seek(0)
    ctl.send(start=t0, end=t1, ok=code == 0, error="" if code == 0 else _tail(err.read()))


def run_aria2(ctl: Control, spec: dict[str, Any]) -> None:
    log = open(spec["log"], "ab")  # noqa: SIM115 - handed to the child
    if spec.get("seed"):
        proc = subprocess.Popen(spec["argv"], stdout=log, stderr=subprocess.STDOUT)
        ctl.send(ready=True)
        t0 = ctl.wait_go()
        ctl.send(start=t0, end=t0, ok=proc.poll() is None, error="", seed=True)
    else:
        done = Path(spec["done"])
        with contextlib.suppress(FileNotFoundError):
            done.unlink()
        ctl.send(ready=True)
        t0 = ctl.wait_go()
        proc = subprocess.Popen(spec["argv"], stdout=log, stderr=subprocess.STDOUT)
        # The hook writes `date +%s.%N` when aria2 has the whole file (and goes on
        # seeding); polling its file only decides when we learn of it, not the time.
        deadline = t0 + spec["timeout"]
        while not done.exists() and proc.poll() is None and time.time() < deadline:
            time.sleep(0.005)
        text = ""
        for _ in range(200):  # the hook may be writing it
            text = done.read_text().strip() if done.exists() else ""
            if text:
                break
            time.sleep(0.005)
        if text:
            ctl.send(start=t0, end=float(text), ok=True, error="")
        else:
            why = f"aria2c exited {proc.returncode}" if proc.poll() is not None else "timed out"
            ctl.send(start=t0, end=time.time(), ok=False, error=why)
    ctl.wait_stop()
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # aria2 tells the tracker it stopped
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _lt_session(spec: dict[str, Any]) -> Any:
    import libtorrent as lt

    settings = {
        "listen_interfaces": f"{spec['ip']}:{spec['port']}",
        "enable_dht": False,
        "enable_lsd": False,
        "enable_upnp": False,
        "enable_natpmp": False,
        # a trusted network: no encryption, TCP only (uTP's LEDBAT yields to TCP and
        # would only slow a LAN swarm), no rate limits, every peer unchoked
        "out_enc_policy": int(lt.enc_policy.disabled),
        "in_enc_policy": int(lt.enc_policy.disabled),
        "allowed_enc_level": int(lt.enc_level.plaintext),
        "enable_outgoing_utp": False,
        "enable_incoming_utp": False,
        "upload_rate_limit": 0,
        "download_rate_limit": 0,
        "unchoke_slots_limit": -1,
        "connection_speed": 200,
        "smooth_connects": False,
        "max_out_request_queue": 1500,
        "announce_to_all_trackers": True,
        "alert_mask": int(
            lt.alert_category.status | lt.alert_category.error | lt.alert_category.tracker
        ),
    }
    make: Any = lt.session  # a dict of settings: the stubs know only settings_pack
    return lt, make(settings)


def run_lt(ctl: Control, spec: dict[str, Any]) -> None:
    lt, ses = _lt_session(spec)
    info = lt.torrent_info(spec["torrent"])
    params = {"ti": info, "save_path": spec["save"]}
    if spec.get("seed"):
        params["flags"] = lt.torrent_flags.seed_mode  # it has the file: no hash check
        handle = ses.add_torrent(params)
        # Ready once seeding and the tracker has answered (leechers then find us).
        deadline = time.time() + 30
        announced = False
        while time.time() < deadline and not announced:
            ses.wait_for_alert(100)
            for a in ses.pop_alerts():
                if isinstance(a, lt.tracker_reply_alert):
                    announced = True
        ok = announced and handle.status().is_seeding
        ctl.send(ready=True)
        t0 = ctl.wait_go()
        ctl.send(start=t0, end=t0, ok=ok, error="" if ok else "seeder not announced", seed=True)
    else:
        ctl.send(ready=True)
        t0 = ctl.wait_go()
        handle = ses.add_torrent(params)
        end = None
        error = ""
        deadline = t0 + spec["timeout"]
        while end is None and time.time() < deadline:
            ses.wait_for_alert(50)
            now = time.time()
            for a in ses.pop_alerts():
                if isinstance(a, lt.torrent_finished_alert):
                    end = now
                elif isinstance(a, lt.torrent_error_alert):
                    error = a.message()
        st = handle.status()
        ctl.send(
            start=t0,
            end=end if end is not None else time.time(),
            ok=end is not None,
            error=error or ("" if end is not None else f"timed out at {st.progress:.0%}"),
            peers=st.num_peers,
        )
    ctl.wait_stop()
    ses.remove_torrent(handle)


def run_relay(ctl: Control, spec: dict[str, Any]) -> None:
    nxt = spec.get("next")  # "ip:port" of the next host, None for the last
    if spec.get("source"):
        assert nxt is not None, "the source needs a next host"
        ctl.send(ready=True)
        t0 = ctl.wait_go()
        host, port = nxt.rsplit(":", 1)
        with socket.create_connection((host, int(port))) as s, open(spec["file"], "rb") as f:
            size = os.fstat(f.fileno()).st_size
            sent = 0
            while sent < size:
                sent += os.sendfile(s.fileno(), f.fileno(), sent, size - sent)
        ctl.send(start=t0, end=t0, ok=True, error="", seed=True, sent_until=time.time())
        ctl.wait_stop()
        return
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((spec["ip"], spec["port"]))
    ls.listen(1)
    ctl.send(ready=True)
    t0 = ctl.wait_go()
    conn, _ = ls.accept()
    out = None
    if nxt:
        host, port = nxt.rsplit(":", 1)
        out = socket.create_connection((host, int(port)))
    buf = bytearray(BUF)
    view = memoryview(buf)
    fd = os.open(spec["dest"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        while n := conn.recv_into(buf):
            if out is not None:
                out.sendall(view[:n])  # forward first: the next host waits on it
            os.write(fd, view[:n])
    finally:
        os.close(fd)
    t1 = time.time()
    if out is not None:
        out.close()
    conn.close()
    ctl.send(start=t0, end=t1, ok=True, error="")
    ctl.wait_stop()


def run_mount(ctl: Control, spec: dict[str, Any]) -> None:
    mnt = Path(spec["mountpoint"])
    mnt.mkdir(parents=True, exist_ok=True)
    log = open(spec["log"], "ab")  # noqa: SIM115 - handed to the child
    mount = subprocess.Popen(spec["mount_argv"], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 60
    # A mount command may stay in the foreground or return once mounted: wait for the
    # mount itself, and give up early only if the command failed.
    while not os.path.ismount(mnt) and time.time() < deadline and mount.poll() in (None, 0):
        time.sleep(0.05)
    if not os.path.ismount(mnt):
        ctl.send(ready=True)
        t0 = ctl.wait_go()
        ctl.send(start=t0, end=t0, ok=False, error=f"not mounted (sector mount: {mount.poll()})")
    else:
        ctl.send(ready=True)
        t0 = ctl.wait_go()
        proc = subprocess.run(spec["argv"], capture_output=True, check=False, env=spec["env"])
        t1 = time.time()
        where = proc.stdout.decode(errors="replace").strip()
        ok = proc.returncode == 0 and where.startswith(str(mnt))
        error = "" if ok else _tail(proc.stderr) or f"imported from {where}, not the mount"
        ctl.send(start=t0, end=t1, ok=ok, error=error)
    subprocess.run(spec["umount_argv"], capture_output=True, check=False)
    if mount.poll() is None:
        mount.terminate()
        try:
            mount.wait(10)
        except subprocess.TimeoutExpired:
            mount.kill()
            mount.wait()
    ctl.wait_stop()


KINDS = {
    "cmd": run_cmd,
    "sector": run_sector,
    "aria2": run_aria2,
    "lt": run_lt,
    "relay": run_relay,
    "mount": run_mount,
}


def main() -> int:
    path, spec = sys.argv[1], json.loads(sys.argv[2])
    ctl = Control(path, spec["host"])
    try:
        KINDS[spec["kind"]](ctl, spec)
    except Exception as exc:  # report it to the bench: its table says what failed
        with contextlib.suppress(OSError):
            now = time.time()
            ctl.send(start=now, end=now, ok=False, error=f"{type(exc).__name__}: {exc}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
