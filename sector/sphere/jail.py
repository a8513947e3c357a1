"""The engine sandbox, performed: namespaces, mounts, credentials and limits (issue 11).

``sandbox`` says what an engine's view and limits are; this module makes them, with
ctypes on libc (Python 3.11 has no ``os.unshare``). ``engine_main`` is the target of
the engine process the node spawns. Its life, in a sandbox:

    E0 (spawned by the node; the node's pid namespace)
        imports the engine, unshare(mount, PID, IPC namespaces [+ user namespace]), mounts
        the view, forks: then only waits for E1 and leaves with its status; ends
        itself (and so the rest, below) when the node is gone.
      E1 (pid 1 of the new PID namespace)
        mounts /proc of that namespace, forks E2, reaps the UDF's orphans; dies with
        E0 (PR_SET_PDEATHSIG), and the kernel then kills everything in the namespace:
        a UDF's processes never outlive its engine.
        E2 (serves tasks)
          limits, then the UDF user's uid (full mode), no capabilities, no new
          privileges; then serves (``spe.serve``). After each task it
          kills every process left in its namespace (``kill(-1)`` spares itself and
          pid 1) and reaps them.

E2's exit status travels up as E0's (a signal as the same signal), so the node reads
an engine's death the same way in every mode (``sandbox.death``).

Why so many processes: a PID namespace is entered only by the children of the one
that makes it, its first process must reap orphans (the UDF's ``subprocess`` children
must not be reaped under it), and a user namespace can only be made by a single-
threaded process. E1 and E2 are forks of E0: the engine's code, imported once by E0
as the node's user (with one BLAS thread: numpy then starts no thread), is shared
between them, and E2 need not be able to read it.

Where the UDF user cannot enter a directory above the Python installation (a pyenv
under ``/root``), the view binds the installation back (``sandbox.reach_pairs``); a
user namespace made after dropping to that user cannot open it and leaves it out
(the engine says so; UDFs then import only what the engine already did).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import resource
import select
import signal
from dataclasses import replace
from multiprocessing.connection import Connection
from typing import Any

from sector.sphere.sandbox import (
    INSIDE,
    NODE_BLOBS,
    SMALL_TMPFS,
    Spec,
    binds,
    blobs_seen,
    cpu_hard,
    cpu_soft,
    failure_message,
    mount_plan,
    retire,
    translate,
)

__all__ = ["Guard", "engine_main", "probe_main"]

CLONE_NEWNS = 0x00020000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
MS_NOATIME, MS_NODIRATIME, MS_RELATIME = 1024, 2048, 1 << 21
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 38
O_PATH = 0o10000000
BLAS_THREADS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_CAP_VERSION_3 = 0x20080522

_libc = ctypes.CDLL(None, use_errno=True)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _fail(what: str) -> OSError:
    e = ctypes.get_errno()
    return OSError(e, f"{what}: {os.strerror(e)}")


def _b(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def unshare(flags: int) -> None:
    if _libc.unshare(ctypes.c_int(flags)) != 0:
        raise _fail("unshare")


def mount(src: str | None, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    ret = _libc.mount(_b(src), _b(target), _b(fstype), ctypes.c_ulong(flags), _b(data))
    if ret != 0:
        raise _fail(f"mount {fstype or src or ''} on {target}")


def prctl(option: int, arg: int) -> None:
    zero = ctypes.c_ulong(0)
    if _libc.prctl(ctypes.c_int(option), ctypes.c_ulong(arg), zero, zero, zero) != 0:
        raise _fail(f"prctl {option}")


def drop_bounding_set() -> None:
    """Nothing an exec could ever grant (needs CAP_SETPCAP: before the uid changes)."""
    with open("/proc/sys/kernel/cap_last_cap") as f:
        last = int(f.read())
    for cap in range(last + 1):
        with contextlib.suppress(OSError):  # EINVAL past the kernel's last
            prctl(PR_CAPBSET_DROP, cap)


def clear_capabilities() -> None:
    """No capability left, in any set (a uid change from root clears them too; in a
    user namespace its creator holds them all until now)."""
    hdr = _CapHeader(_CAP_VERSION_3, 0)
    data = (_CapData * 2)()
    if _libc.capset(ctypes.byref(hdr), data) != 0:
        raise _fail("capset")


# ---------------------------------------------------------------- the view


def _locked_flags(path: str) -> int:
    """The flags of the mount ``path`` is on that a remount must keep (in a user
    namespace the kernel refuses to clear them)."""
    f = os.statvfs(path).f_flag
    out = 0
    for st, ms in (
        (os.ST_NOSUID, MS_NOSUID),
        (os.ST_NODEV, MS_NODEV),
        (os.ST_NOEXEC, MS_NOEXEC),
        (os.ST_NOATIME, MS_NOATIME),
        (os.ST_NODIRATIME, MS_NODIRATIME),
        (os.ST_RELATIME, MS_RELATIME),
        (os.ST_RDONLY, MS_RDONLY),
    ):
        if f & st:
            out |= ms
    return out


def _hide(path: str) -> None:
    try:
        os.stat(path)
    except (FileNotFoundError, PermissionError):
        return  # nothing there, or nothing the sandbox's user could reach either
    if os.path.isdir(path):
        mount("tmpfs", path, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, f"mode=0755,{SMALL_TMPFS}")
        mount(None, path, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
    else:
        mount("/dev/null", path, None, MS_BIND, None)
        mount(None, path, None, MS_REMOUNT | MS_BIND | MS_RDONLY | _locked_flags(path), None)


def mount_view(spec: Spec) -> list[str]:
    """Perform ``sandbox.mount_plan`` in this (new) mount namespace. The sources of the
    binds are opened first, so covering them (the data directory) does not lose them,
    and bound back through ``/proc/self/fd``; their descriptors are closed at the end
    (one left open would lead a UDF back out: ``openat(fd, "..")``). Returns the
    optional sources this process could not open (and so did not bind)."""
    plan = mount_plan(spec)
    fds: dict[str, int] = {}
    skipped: list[str] = []
    try:
        for step in plan:
            if step[0] == "bind":
                try:
                    fds[step[1]] = os.open(step[1], O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
                except PermissionError:
                    if step[4:] != ("optional",):
                        raise
                    skipped.append(step[1])
        for step in plan:
            kind, target = step[0], step[1]
            if kind == "private":
                mount(None, target, None, MS_REC | MS_PRIVATE, None)
            elif kind == "hide":
                _hide(target)
            elif kind == "tmpfs" and (step[3:] != ("optional",) or os.path.isdir(target)):
                mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, step[2])
            elif kind == "mkdir":
                os.makedirs(target, mode=0o755, exist_ok=True)
            elif kind == "bind" and target in fds:
                inside, rw = step[2], step[3] == "rw"
                mount(f"/proc/self/fd/{fds[target]}", inside, None, MS_BIND, None)
                flags = _locked_flags(inside) | MS_NOSUID | MS_NODEV
                flags = flags & ~MS_RDONLY if rw else flags | MS_RDONLY
                mount(None, inside, None, MS_REMOUNT | MS_BIND | flags, None)
            elif kind == "ro":
                mount(None, target, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, None)
    finally:
        for fd in fds.values():
            os.close(fd)
    os.chdir("/")  # the old working directory may be in what is now covered
    return skipped


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


def _become(spec: Spec) -> None:
    os.setgroups([])
    os.setgid(spec.gid)
    os.setuid(spec.uid)


def enter(spec: Spec) -> list[str]:
    """E0's part: the namespaces and the view (the calling process stays outside the
    new PID namespace; its next child is that namespace's pid 1)."""
    if spec.mode == "full":
        unshare(CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC)
    else:
        if os.geteuid() == 0:
            # A root node: the UDF user first, then the user namespace, as that user
            # (mapped to itself: nothing of root's is mapped in it).
            _become(spec)
            prctl(PR_SET_DUMPABLE, 1)  # our /proc/self/*_map are ours to write again
        uid, gid = os.geteuid(), os.getegid()
        unshare(CLONE_NEWUSER | CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC)
        _write("/proc/self/setgroups", "deny")
        _write("/proc/self/uid_map", f"{uid} {uid} 1")
        _write("/proc/self/gid_map", f"{gid} {gid} 1")
    return mount_view(spec)


def _mount_proc() -> bool:
    """/proc of this PID namespace; where the kernel refuses (a user namespace in a
    container with masked /proc paths), an empty /proc rather than the host's."""
    try:
        mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
        return True
    except OSError:
        _hide("/proc")
        return False


def _limits(spec: Spec) -> None:
    lim = spec.limits
    pairs = [(resource.RLIMIT_CORE, 0)]
    if lim.memory:
        pairs.append((resource.RLIMIT_DATA, lim.memory))
    if lim.nofile:
        pairs.append((resource.RLIMIT_NOFILE, lim.nofile))
    if lim.nproc:
        pairs.append((resource.RLIMIT_NPROC, lim.nproc))
    if lim.cpu:
        pairs.append((resource.RLIMIT_CPU, cpu_hard(lim.cpu)))
    for which, n in pairs:
        _, hard = resource.getrlimit(which)
        try:
            resource.setrlimit(which, (n, n))
        except ValueError:  # above a hard limit the node's user cannot raise: that one
            resource.setrlimit(which, (hard, hard))


def _close_other_fds(keep: int) -> None:
    """Only the node's pipe and stdio: nothing else of the node's (its resource
    tracker's pipe, say) stays within a UDF's reach."""
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


# ---------------------------------------------------------------- the processes


def _cpu_used() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Guard:
    """E2's part around each task: paths into the view and the CPU allowance before;
    after, the UDF's leftover processes killed and a limit's failure said plainly."""

    def __init__(self, spec: Spec) -> None:
        self.where = binds(spec) if spec.mode != "none" else []  # no view: paths as they are
        self.limits = spec.limits
        # kill(-1) only where it reaches no further than this engine's namespace.
        self.contained = spec.mode != "none" and os.getppid() == 1

    def begin(self, task: Any) -> Any:
        if self.limits.cpu:
            _, hard = resource.getrlimit(resource.RLIMIT_CPU)
            soft = cpu_soft(_cpu_used(), self.limits.cpu)
            if hard != resource.RLIM_INFINITY:  # (-1 in Python)
                soft = min(soft, hard)
            resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))
        return translate(task, self.where)

    def end(self, res: Any) -> Any:
        if self.contained:
            with contextlib.suppress(ProcessLookupError):
                os.kill(-1, signal.SIGKILL)
            while True:
                try:
                    os.waitpid(-1, 0)
                except ChildProcessError:
                    break
        if isinstance(res, dict):
            err = res.get("error")
            if isinstance(err, str):
                clear = failure_message(err, self.limits)
                if clear is not None:
                    res["error"] = clear
            if retire(_cpu_used(), self.limits.cpu):
                res["_retire"] = True
        return res


def _hello(spec: Spec, **more: Any) -> tuple[str, dict[str, Any]]:
    return ("hello", {"mode": spec.mode, "uid": os.getuid(), "gid": os.getgid(), **more})


def _server(conn: Connection, spec: Spec, probe: bool, info: dict[str, Any]) -> None:
    """E2: limits, credentials, then the engine (imported by E0 already)."""
    try:
        _close_other_fds(conn.fileno())
        os.chdir("/tmp")
        os.environ.update(HOME="/tmp", TMPDIR="/tmp")
        _limits(spec)
        drop_bounding_set()
        if spec.mode == "full":
            _become(spec)
        clear_capabilities()
        prctl(PR_SET_NO_NEW_PRIVS, 1)
    except Exception as exc:
        conn.send(("error", f"cannot start the engine in its sandbox: {exc}"))
        os._exit(1)
    conn.send(_hello(spec, inside=INSIDE, **info))
    if not probe:
        from sector.sphere import spe  # (imported by E0)

        spe.serve(conn, None, guard=Guard(spec))
    os._exit(0)


def _init(conn: Connection, spec: Spec, probe: bool, life: int, info: dict[str, Any]) -> None:
    """E1: pid 1 of the engine's PID namespace."""
    try:
        prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        if select.select([life], [], [], 0)[0]:  # E0 already gone: its pipe reads EOF
            os._exit(1)
        info["proc"] = _mount_proc()
        server = os.fork()
    except Exception as exc:
        conn.send(("error", f"cannot start the engine's PID namespace: {exc}"))
        os._exit(1)
    if server == 0:
        _server(conn, spec, probe, info)
    conn.close()
    while True:  # reap orphans until the server ends; then end with its status
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            os._exit(1)
        if pid == server:
            if os.WIFSIGNALED(status):
                os._exit(128 + os.WTERMSIG(status))
            os._exit(os.waitstatus_to_exitcode(status))


def _leave_like(status: int) -> None:
    """End E0 as E2 ended: a signal by the same signal, else the same exit code."""
    code = os.waitstatus_to_exitcode(status)
    sig = -code if code < 0 else code - 128 if 128 < code < 128 + signal.NSIG else 0
    if sig:
        with contextlib.suppress(OSError, ValueError):
            prctl(PR_SET_DUMPABLE, 0)  # no core file of ours for a mirrored SIGXCPU
            signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, [sig])
            os.kill(os.getpid(), sig)
    os._exit(code if code >= 0 else 1)


def engine_main(conn: Connection, parent: int, spec: Spec, probe: bool = False) -> None:
    """The engine process's target (E0). ``probe``: set up, say hello, and end."""
    # The engine proper is loaded first, as the node's user: the UDF user may not be
    # able to read it (or Python). One BLAS thread (engines are one per core; dask's
    # workers do the same): the import then starts no thread, and a process must be
    # single-threaded to make a user namespace.
    for var in BLAS_THREADS:
        os.environ.setdefault(var, "1")
    os.environ[NODE_BLOBS] = blobs_seen(spec)  # a UDF's sector:// reads local replicas
    if not probe:  # (a probe tries the sandbox only: it imports nothing more)
        from sector.sphere import spe
    if spec.mode == "none":
        # No view and no other uid, but the limits still hold (all but the process
        # count: it is per uid, and the uid here is the node's, threads and all).
        try:
            _limits(replace(spec, limits=replace(spec.limits, nproc=0)))
        except (OSError, ValueError) as exc:
            conn.send(("error", f"cannot set the engine's limits: {exc}"))
            return
        conn.send(_hello(spec))
        if not probe:
            spe.serve(conn, parent, guard=Guard(spec))
        return
    try:
        skipped = enter(spec)
        life_r, life_w = os.pipe()
        # SIGCHLD blocked (and so kept pending) to be waited for with a timeout below;
        # E1 unblocks it at once.
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGCHLD])
        child = os.fork()
    except Exception as exc:
        conn.send(("error", f"cannot set up the {spec.mode} sandbox: {exc}"))
        return
    if child == 0:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signal.SIGCHLD])
        os.close(life_w)
        _init(conn, spec, probe, life_r, {"unreachable": skipped})
    os.close(life_r)
    conn.close()
    # No thread here (a process that made a PID namespace for its children may not
    # start one): wait for E1, and once a second see that the node is still there.
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            _leave_like(status)
        if not probe and os.getppid() != parent:
            os._exit(0)  # the node is gone: E1 goes with us (PR_SET_PDEATHSIG)
        signal.sigtimedwait([signal.SIGCHLD], 1.0)


def probe_main(conn: Connection, specs: list[Spec]) -> None:
    """Try each spec in turn, each in a throwaway process: the first whose engine starts
    is the node's mode. Sends ``(mode, {mode: why it failed})``."""
    import multiprocessing

    failed: dict[str, str] = {}
    for spec in specs:
        ours, theirs = multiprocessing.Pipe()
        pid = os.fork()
        if pid == 0:
            ours.close()
            try:
                engine_main(theirs, os.getppid(), spec, probe=True)
            finally:
                os._exit(0)
        theirs.close()
        try:
            kind, what = ours.recv() if ours.poll(60) else ("error", "no answer in 60 s")
        except EOFError:
            kind, what = "error", "the probe ended without a word"
        ours.close()
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, 0)
        if kind == "hello":
            conn.send((spec.mode, failed))
            return
        failed[spec.mode] = str(what)
    conn.send((None, failed))
