"""The engine sandbox as data: what a UDF sees, what it may use, and what the node says
when a limit stops one (issue 11). Pure; ``jail`` performs it in the engine process.

A user with the compute right runs any code in a node's engines. Unsandboxed, that code
runs as the node and reads what the node reads: its private key, its databases, other
users' staged output. The sandbox takes that away, with Linux namespaces used directly
(as bubblewrap and unshare(1) do; nothing to install):

Who a UDF runs as
    A node running as root runs its engines as an unprivileged system user, ``sector-udf``
    by default (``--udf-user``), made on first use (``useradd --system``; ``nobody`` if
    that fails). Its own user, not ``nobody``: files a UDF writes, and its processes,
    are then nobody else's, and no other daemon's ``nobody`` processes can signal or
    trace them. A node not running as root cannot change uid: its UDFs keep its uid.

What a UDF sees (its *view*: a mount namespace of its own, ``/`` made private first so
nothing propagates back)
    - the node's data directory, its TLS directory, ``$SECTOR_HOME`` and every
      ``--udf-hide`` path: an empty read-only tmpfs in their place (a file: /dev/null);
    - ``/tmp``, ``/var/tmp`` and ``/dev/shm``: private tmpfs (the first at most the
      memory limit, the others a quarter of it: what they hold is RAM that the limit
      does not count), and System V IPC of its own: nothing one engine leaves there
      reaches another;
    - ``INSIDE`` (``/tmp/sector``): ``blobs/`` and ``cache/`` (the stored files and
      fetched copies: segments are read there) read-only, and ``stage/``: the staging
      directory of the one Sector user whose tasks the engine runs, read-write. Task
      paths are rewritten to these (``translate``). An engine serves one user at a time:
      the node restarts it for another user (an open cluster has one, anonymous);
    - each ``--udf-bind`` path, read-write where it is (a shared directory by choice);
    - ``/proc`` of the engine's own PID namespace: no process of the node, of another
      engine, or of another user's UDF is visible, to read, signal or trace;
    - the rest of the file system as it is (programs, libraries, Python), as the
      unprivileged user sees it; where Python or Sector lies below a directory that user
      may not enter (a pyenv under ``/root``), that directory is an empty tmpfs with
      just those installations bound back read-only (``reach``); where they lie in a
      temporary directory (a checkout or a virtualenv under ``/tmp``), they are bound
      back read-only into the view's fresh ``/tmp`` (``code``).

Modes (``--udf-sandbox``, default ``auto``: the first that works, in this order)
    - ``full``: a root node; namespaces made as root, then the UDF user's uid.
    - ``userns``: a user namespace first (no root needed, if the kernel allows
      unprivileged user namespaces). A root node drops to the UDF user before making
      it; another node keeps its own uid, so files its user owns outside the hidden
      paths stay readable to UDFs.
    - ``none``: no sandbox; the node logs a WARNING and ``sector status`` says so.

Limits (per engine process, set before it serves; see ``jail``): memory (RLIMIT_DATA:
anonymous memory -- a mapped segment does not count, a numpy array does), processes
(RLIMIT_NPROC: counted per uid over every engine of that uid on the host, hence a
generous default), open files (RLIMIT_NOFILE), CPU seconds per task (RLIMIT_CPU is per
process lifetime, and engines are reused: before each task the engine sets its soft
limit to what it has used plus the task's allowance; the hard limit, fixed at start, is
twice the allowance, and the node restarts an engine once a task could not get its whole
allowance under it). After each task every process the UDF left behind is killed.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

__all__ = [
    "INSIDE",
    "MODES",
    "NODE_BLOBS",
    "Limits",
    "Spec",
    "binds",
    "blobs_seen",
    "check_spec",
    "cpu_hard",
    "cpu_soft",
    "death",
    "failure_message",
    "fmt_bytes",
    "modes_to_try",
    "mount_plan",
    "reach_pairs",
    "retire",
    "temp_code",
    "translate",
]

MODES = ("full", "userns", "none")
INSIDE = "/tmp/sector"  # where an engine sees what it is given
# The engine's environment variable naming where it sees its node's blob files: the
# fsspec file system in a UDF reads a replica held there directly (``fsspec.local``).
NODE_BLOBS = "SECTOR_NODE_BLOBS"
SMALL_TMPFS = "size=64k,nr_inodes=64"  # an empty tmpfs in place of a hidden directory
MIN_MEMORY = 256 << 20  # an engine with numpy imported needs ~100 MiB before any UDF


@dataclass(frozen=True, slots=True)
class Limits:
    """Per engine process; 0 = no limit."""

    memory: int = 0  # bytes of anonymous memory (RLIMIT_DATA)
    cpu: int = 0  # CPU seconds a task may use
    nofile: int = 0  # open files (RLIMIT_NOFILE)
    nproc: int = 0  # processes and threads of the UDF user (RLIMIT_NPROC)


@dataclass(frozen=True, slots=True)
class Spec:
    """One engine's sandbox: made by the node, sent to the engine at spawn."""

    mode: str  # "full" | "userns" | "none"
    uid: int  # who UDFs run as (full; userns when the node is root)
    gid: int
    user: str  # that user's name, for messages
    data: str  # the node's data directory
    hide: tuple[str, ...] = ()  # more paths to hide: TLS directory, SECTOR_HOME, --udf-hide
    shared: tuple[str, ...] = ()  # --udf-bind: read-write where they are
    reach: tuple[tuple[str, str], ...] = ()  # (cover, path): see ``reach_pairs``
    code: tuple[str, ...] = ()  # imports under a temporary directory: see ``temp_code``
    limits: Limits = Limits()
    stage: str | None = None  # the staging directory of the user this engine serves

    def with_stage(self, stage: str | None) -> Spec:
        return replace(self, stage=stage)


def modes_to_try(requested: str, euid: int) -> tuple[str, ...]:
    """``--udf-sandbox`` as the modes to try, strongest first. ``full`` needs root."""
    if requested == "auto":
        return ("full", "userns", "none") if euid == 0 else ("userns", "none")
    if requested not in MODES:
        raise ValueError(f"--udf-sandbox must be auto, full, userns or none, not {requested!r}")
    return (requested,)


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def reach_pairs(paths: list[str], enterable: Callable[[str], bool]) -> list[tuple[str, str]]:
    """(cover, path) for each of ``paths`` (the Python installation, ``sys.path``) that
    lies below a directory the UDF user may not enter: ``cover`` is the first such
    directory. The view puts an empty tmpfs over ``cover`` and binds ``path`` back
    read-only: the installation becomes reachable, nothing else of ``cover`` does."""
    out: list[tuple[str, str]] = []
    for p in sorted(set(paths), key=lambda p: (p.count("/"), p)):
        if not p.startswith("/") or any(_under(p, q) for _, q in out) or _under(p, "/tmp"):
            continue
        parts = p.strip("/").split("/")
        for i in range(1, len(parts)):  # the ancestors, from the top; not p itself
            d = "/" + "/".join(parts[:i])
            if not enterable(d):
                out.append((d, p))
                break
    return out


TEMP_DIRS = ("/tmp", "/var/tmp", "/dev/shm")  # each a fresh tmpfs in the view


def temp_code(paths: list[str], hidden: list[str]) -> list[str]:
    """Of ``paths`` (the Python installation, ``sys.path``), those in a temporary
    directory, which the view replaces with a fresh tmpfs: a clean checkout or a
    virtualenv under ``/tmp`` must still be importable by UDFs. None that holds or lies
    in a hidden path (binding it would show what is hidden: its modules then stay out
    of reach), none under INSIDE, none inside another one kept."""
    out: list[str] = []
    for p in sorted(set(paths), key=lambda p: (p.count("/"), p)):
        if not p.startswith("/") or not any(_under(p, t) and p != t for t in TEMP_DIRS):
            continue
        if _under(p, INSIDE) or any(_under(p, h) or _under(h, p) for h in hidden):
            continue
        if not any(_under(p, q) for q in out):
            out.append(p)
    return out


def binds(spec: Spec) -> list[tuple[str, str, bool]]:
    """(outside, inside, writable) of what the engine is given."""
    out = [
        (f"{spec.data}/blobs", f"{INSIDE}/blobs", False),
        (f"{spec.data}/sphere/cache", f"{INSIDE}/cache", False),
    ]
    if spec.stage is not None:
        out.append((spec.stage, f"{INSIDE}/stage", True))
    return out + [(p, p, True) for p in spec.shared]


def blobs_seen(spec: Spec) -> str:
    """Where an engine of ``spec`` sees its node's blob files (read-only)."""
    return binds(spec)[0][1] if spec.mode != "none" else binds(spec)[0][0]


def hidden(spec: Spec) -> list[str]:
    """The paths to cover, without those under another (covered with it)."""
    paths = sorted({spec.data, *spec.hide}, key=lambda p: (p.count("/"), p))
    out: list[str] = []
    for p in paths:
        if not any(_under(p, q) for q in out) and not _under(p, "/tmp"):
            out.append(p)
    return out


def check_spec(spec: Spec) -> None:
    """ValueError for a spec that would undo itself: a shared path that is, holds or lies
    in a hidden one (a bind of it would show what was covered), or one under INSIDE."""
    for p in spec.shared:
        if not p.startswith("/") or _under(p, INSIDE):
            raise ValueError(f"--udf-bind {p}: must be an absolute path outside {INSIDE}")
        for h in (spec.data, *spec.hide):
            if _under(p, h) or _under(h, p):
                raise ValueError(f"--udf-bind {p}: would show UDFs {h}, which is hidden from them")
    if spec.limits.memory and spec.limits.memory < MIN_MEMORY:
        raise ValueError(f"--udf-memory must be at least {fmt_bytes(MIN_MEMORY)}")


def mount_plan(spec: Spec) -> list[tuple[str, ...]]:
    """The mount steps of a view, in order (``jail`` performs them; the sources of the
    binds are opened before the first step, so covering them does not lose them):

    ("private", "/")           no mount event propagates out of (or into) the view
    ("hide", path)             an empty read-only tmpfs over a directory, /dev/null over a file
    ("tmpfs", path, options[, "optional"])  a fresh tmpfs (optional: if path exists)
    ("mkdir", path)            a directory (in a tmpfs made just before)
    ("bind", outside, inside, "ro"|"rw"[, "optional"])  optional: skipped if unreadable
    ("ro", path)               remount a tmpfs read-only
    """
    # tmpfs pages are not the engine's memory (RLIMIT_DATA does not count them): /tmp
    # may hold as much as the limit, the other two a quarter of it each.
    mem = spec.limits.memory
    size, small = (f"size={mem}", f"size={mem // 4}") if mem else ("size=25%", "size=5%")
    steps: list[tuple[str, ...]] = [("private", "/")]
    covers = sorted({c for c, _ in spec.reach})
    for cover in covers:
        steps.append(("tmpfs", cover, "mode=0755,size=64k"))
        for c, p in spec.reach:
            if c == cover:
                steps += [("mkdir", p), ("bind", p, p, "ro", "optional")]
        steps.append(("ro", cover))
    steps += [("hide", p) for p in hidden(spec)]  # after: a hidden path may lie in a bind
    steps += [
        ("tmpfs", "/tmp", f"mode=1777,{size}"),
        ("tmpfs", "/var/tmp", f"mode=1777,{small}", "optional"),
        ("tmpfs", "/dev/shm", f"mode=1777,{small}", "optional"),
    ]
    for p in spec.code:
        steps += [("mkdir", p), ("bind", p, p, "ro", "optional")]
    steps += [
        ("mkdir", INSIDE),
        ("tmpfs", INSIDE, "mode=0755,size=64k"),
    ]
    for outside, inside, writable in binds(spec):
        if _under(inside, "/tmp"):
            steps.append(("mkdir", inside))
        steps.append(("bind", outside, inside, "rw" if writable else "ro"))
    steps.append(("ro", INSIDE))
    return steps


def translate(task: Any, where: list[tuple[str, str, bool]]) -> Any:
    """A task with every path under a bind's outside rewritten to its inside (strings,
    and strings in lists, at the top level of a dict task)."""

    def one(v: Any) -> Any:
        if isinstance(v, str):
            for outside, inside, _ in where:
                if _under(v, outside):
                    return inside + v[len(outside) :]
        elif isinstance(v, list):
            return [one(x) for x in v]
        return v

    if not isinstance(task, dict):
        return task
    return {k: one(v) for k, v in task.items()}


# ---------------------------------------------------------------- CPU time per task


def cpu_hard(limit: int) -> int:
    """The engine's hard RLIMIT_CPU, fixed at start: room for two tasks' allowance."""
    return 2 * limit + 5


def cpu_soft(used: float, limit: int) -> int:
    """The soft limit for the next task: what the engine used so far plus the allowance."""
    return min(cpu_hard(limit), int(used) + 1 + limit)


def retire(used: float, limit: int) -> bool:
    """Whether the engine must be restarted before its next task: the next could not
    have its whole allowance under the hard limit."""
    return limit > 0 and int(used) + 1 + limit > cpu_hard(limit)


# ---------------------------------------------------------------- what the node says


def fmt_bytes(n: int) -> str:
    for unit, shift in (("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def failure_message(error: str, limits: Limits) -> str | None:
    """A clearer message for a task whose UDF raised what a limit causes, or None.
    ``error`` is the engine's ("the UDF raised MemoryError: ...", ``spe``)."""
    m = re.match(r"the (?:UDF|reduce) raised (\w+)", error)
    exc = m.group(1) if m else ""
    if exc == "MemoryError" and limits.memory:
        return f"UDF exceeded its memory limit ({fmt_bytes(limits.memory)}): {error}"
    if limits.nproc and (exc == "BlockingIOError" or "can't start new thread" in error):
        return (
            f"UDF could not start a process or thread: its user may have only "
            f"{limits.nproc} (--udf-nproc): {error}"
        )
    return None


def death(code: int | None, limits: Limits) -> tuple[str, bool]:
    """What an engine's exit code says about its task, and whether to retry the task
    elsewhere (a limit would be hit again; a crash or a kill may be the node's)."""
    if code == -signal.SIGXCPU:
        return f"UDF exceeded its CPU time limit ({limits.cpu} s)", False
    if code == -signal.SIGKILL:
        hard = f", or the hard stop of its CPU time limit ({limits.cpu} s)" if limits.cpu else ""
        return f"the engine process was killed (SIGKILL: out of memory{hard})", True
    if code is not None and code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"the engine process died of {name} (did the UDF crash?)", True
    if code is None:
        return "the engine process died", True
    return f"the engine process exited with code {code} (did the UDF exit?)", True
