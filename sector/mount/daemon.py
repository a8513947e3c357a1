"""Mounting and unmounting: the mount process, its start in the background, umount.

``sector mount`` starts the mount process (``sector mount --foreground``) as a new
session with its output in ``<state>/mount.log`` and waits, against a deadline, for
it to say on a pipe that the kernel's FUSE INIT has arrived (the mount is usable) or
why it failed; only then does it print where the file system is mounted and return.
The process daemonizes by being started so, rather than by forking: a fork after
the client's event-loop thread has started would lose that thread.

The mount process mounts with libfuse's ``auto_unmount``: fusermount3 stays behind
and unmounts when the process dies, even by SIGKILL, so a killed mount leaves no
dead mount point ("Transport endpoint is not connected"). SIGTERM, SIGINT and SIGHUP
end libfuse's loop, which unmounts. ``sector umount`` is ``fusermount3 -u``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sector.config import sector_home
from sector.errors import SectorError, UsageError
from sector.mount import policy
from sector.mount.core import state_dir

log = logging.getLogger("sector.mount")
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class MountOptions:
    mountpoint: Path
    cluster: str | None = None
    token: str | None = None
    anonymous: bool = False
    cache: Path | None = None
    cache_size: int = 1 << 30
    timeout: float = 15.0
    ttl: float = 1.0

    @property
    def state(self) -> Path:
        return state_dir(self.cache, self.mountpoint, sector_home())


def mounts() -> dict[str, str]:
    try:
        return policy.mounts_of(Path("/proc/self/mountinfo").read_text())
    except OSError:
        return {}


def fusermount() -> str:
    path = shutil.which("fusermount3")
    if path is None:
        raise UsageError("fusermount3 not found: install FUSE 3 (Debian: apt-get install fuse3)")
    return path


def check_mountpoint(mountpoint: Path) -> Path:
    """The absolute mount point, if it is an existing directory not mounted yet."""
    mp = Path(os.path.abspath(mountpoint))
    if str(mp) in mounts():
        raise UsageError(f"{mp} is already a mount point (unmount it first: sector umount {mp})")
    if not mp.is_dir():
        raise UsageError(f"no such directory: {mp} (create the mount point first)")
    if not os.access("/dev/fuse", os.R_OK | os.W_OK):
        raise UsageError("/dev/fuse is missing or not usable: FUSE is not available here")
    fusermount()
    return mp


# ---------------------------------------------------------------- in the background


def start_background(opts: MountOptions) -> dict[str, Any]:
    """Start the mount process and return once the mount is usable (or raise why not)."""
    mp = check_mountpoint(opts.mountpoint)
    state = opts.state.resolve()
    state.mkdir(parents=True, exist_ok=True)
    logfile = state / "mount.log"
    r, w = os.pipe()
    cmd = [sys.executable, "-m", "sector", "mount", "--foreground", "--ready-fd", str(w)]
    cmd += ["--cache", str(state), "--cache-size", str(opts.cache_size)]
    cmd += ["--timeout", str(opts.timeout), "--ttl", str(opts.ttl)]
    if opts.cluster:
        cmd += ["--cluster", opts.cluster]
    if opts.anonymous:
        cmd += ["--anonymous"]
    env = dict(os.environ)
    if opts.token:
        env["SECTOR_TOKEN"] = opts.token  # not on the command line, where ps shows it
    with open(os.open(logfile, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab") as out:
        proc = subprocess.Popen(
            [*cmd, str(mp)],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            pass_fds=(w,),
            start_new_session=True,
            cwd="/",  # hold no directory busy
            env=env,
        )
    os.close(w)
    try:
        said = _read_line(r, START_TIMEOUT)
    finally:
        os.close(r)
    if said != "ok":
        if said is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            raise SectorError(f"the mount did not come up in {START_TIMEOUT:g} s (log: {logfile})")
        proc.wait(10)
        raise SectorError(said.removeprefix("error: ") or _last_line(logfile))
    deadline = time.monotonic() + 10
    while str(mp) not in mounts():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SectorError(f"{mp} did not appear as mounted (log: {logfile})")
        time.sleep(0.05)
    return {"mountpoint": str(mp), "pid": proc.pid, "log": str(logfile), "cache": str(state)}


def _last_line(logfile: Path) -> str:
    try:
        lines = [ln for ln in logfile.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        lines = []
    tail = f": {lines[-1].strip()}" if lines else ""
    return f"the mount process failed (log: {logfile}){tail}"


def _read_line(fd: int, timeout: float) -> str | None:
    """The first line the mount process writes (EOF: "" ; no line in time: None)."""
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.split(b"\n", 1)[0].decode(errors="replace").strip()


# ---------------------------------------------------------------- the mount process


def run_foreground(opts: MountOptions, ready_fd: int | None = None) -> int:
    """Mount and serve until unmounted or signalled; the exit code."""
    logging.basicConfig(
        level=logging.DEBUG
        if os.environ.get("SECTOR_DEBUG", "0") not in ("", "0")
        else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    ready = _Ready(ready_fd)
    try:
        mp = check_mountpoint(opts.mountpoint)
        fs, client = _build(opts)
    except (SectorError, OSError) as exc:
        msg = str(exc) if isinstance(exc, SectorError) else f"{exc.strerror}: {exc.filename}"
        log.error("cannot mount: %s", msg)
        ready.say(f"error: {msg}")
        return 1
    try:
        from sector.mount import fuseops
    except Exception as exc:  # mfusepy raises OSError (or AttributeError) without libfuse 3
        client.close()
        ready.say(f"error: libfuse 3 is not usable ({exc}): install fuse3")
        return 1

    def on_init() -> None:
        log.info("mounted %s on %s (cache %s)", client.address, mp, opts.state)
        ready.say("ok")

    ops = fuseops.SectorOperations(fs, on_init)
    options = fuseops.fuse_options(
        f"sector:{client.address}", read_only=fs.access.read_only, ttl=opts.ttl
    )
    try:
        fuseops.serve(ops, str(mp), options)
    except RuntimeError as exc:
        # libfuse's loop ends with an error code when a signal ended it; that is a
        # clean stop once the file system was up.
        if not ready.said:
            ready.say(f"error: libfuse could not mount {mp} (code {exc}; log: {opts.state})")
            return 1
    finally:
        # Whatever is still in flight must not keep an unmounted process alive.
        _exit_anyway_after(30.0)
        if not ready.said:
            fs.close()
        client.close()
    log.info("unmounted %s", mp)
    return 0


def _exit_anyway_after(seconds: float) -> None:
    def stuck() -> None:
        log.error("still running %g s after unmounting: exiting", seconds)
        logging.shutdown()
        os._exit(0)

    t = threading.Timer(seconds, stuck)
    t.daemon = True
    t.start()


class _Ready:
    """The pipe to ``sector mount`` waiting for us: one line, "ok" or "error: ..."."""

    def __init__(self, fd: int | None) -> None:
        self.fd = fd
        self.said = False

    def say(self, line: str) -> None:
        if line == "ok":
            self.said = True
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.write(self.fd, line.encode() + b"\n")
            os.close(self.fd)
        self.fd = None


def _build(opts: MountOptions) -> tuple[Any, Any]:
    from sector.client.sync import connect
    from sector.mount.cache import BlockCache
    from sector.mount.core import SectorFS
    from sector.mount.remote import Remote
    from sector.mount.spool import Spool

    client = connect(opts.cluster, timeout=opts.timeout, token=opts.token, anonymous=opts.anonymous)
    try:
        who = client.whoami()
        auth = client.aio.auth
        grant = auth.presented_grant() if auth is not None else None
        access = policy.access_for(secure=bool(who["tls"]), user=who["user"], grant=grant)
        state = opts.state
        state.mkdir(parents=True, exist_ok=True)
        remote = Remote(client, opts.timeout)
        cache = BlockCache(state, opts.cache_size, remote.read_range)
        fs = SectorFS(remote, cache, Spool(state), access, ttl=opts.ttl)
    except BaseException:
        client.close()
        raise
    if access.read_only:
        log.warning("no credential for this secure cluster: mounted read-only")
    return fs, client


# ---------------------------------------------------------------- unmount


def umount(mountpoint: Path, *, lazy: bool = False) -> str:
    mp = str(Path(os.path.abspath(mountpoint)))
    fstype = mounts().get(mp)
    if fstype is None:
        raise UsageError(f"{mp} is not mounted")
    if not policy.is_sector_mount(fstype):
        raise UsageError(f"{mp} is not a Sector mount ({fstype})")
    cmd = [fusermount(), "-u", *(["-z"] if lazy else []), mp]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    if res.returncode != 0:
        why = " ".join(res.stderr.split()) or f"fusermount3 exited {res.returncode}"
        raise SectorError(f"cannot unmount {mp}: {why}")
    return mp
