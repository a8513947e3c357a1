"""The node's side of the engine sandbox: who UDFs run as, their limits, which mode this
host allows, and the directories engines write (issue 11; what the sandbox is, and why,
is ``sector.sphere.sandbox``; ``sector.sphere.jail`` makes it).

- The UDF user (``--udf-user``, default ``sector-udf``): looked up; the default one is
  made if missing and the node runs as root (``useradd --system --no-create-home
  --shell /usr/sbin/nologin``; nodes starting at once on one host may race, so a
  failed add is retried, then looked up again). If it cannot be made, ``nobody``,
  with a WARNING. A user named explicitly must exist.
- Limits: ``--udf-memory`` (default: three quarters of the RAM shared out over the
  engines, at least 1 GiB), ``--udf-cpu-seconds`` (600 per task), ``--udf-nofile``
  (4096), ``--udf-nproc`` (256 plus, per engine, a thread per core and 16: the count
  is per uid over every engine of the host, numpy's threads included).
- The mode: ``--udf-sandbox auto`` tries ``full`` (root), then ``userns``, in a
  throwaway engine (``jail.probe_main``: the same code an engine runs, so what the
  probe found is what engines get); then ``none``, logged as a WARNING once and shown
  as ``sandbox: none`` in ``node.info`` and ``sector status``. An explicit mode that
  does not work fails every task with the reason, never a silent downgrade.
- Directories an engine writes (an attempt's output, a job's reduce output) are made
  by the node and given to the UDF user; everything else in a job's directory is the
  node's, so a UDF cannot swap a directory the node writes into for a link elsewhere.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pwd
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from sector.config import NodeConfig, sector_home
from sector.errors import UsageError
from sector.sphere import jail
from sector.sphere.sandbox import (
    MIN_MEMORY,
    Limits,
    Spec,
    check_spec,
    modes_to_try,
    reach_pairs,
    temp_code,
)

__all__ = ["DEFAULT_USER", "Setup", "default_limits", "own_dir", "prepare", "udf_identity"]

log = logging.getLogger("sector.sphere")

DEFAULT_USER = "sector-udf"
PROBE_TIMEOUT = 120.0
USERADD = [
    "useradd",
    "--system",
    "--no-create-home",
    "--home-dir",
    "/nonexistent",
    "--shell",
    "/usr/sbin/nologin",
]


@dataclass(frozen=True, slots=True)
class Setup:
    """What the node's engines run in. ``spec`` is None when the requested sandbox
    cannot be had (``error`` says why): then no task runs."""

    spec: Spec | None
    requested: str
    error: str = ""
    failed: dict[str, str] = field(default_factory=dict)  # modes tried, and why not
    note: str = ""  # about the user (a fallback to nobody)

    @property
    def mode(self) -> str:
        return self.spec.mode if self.spec is not None else "unavailable"


def default_limits(cfg: NodeConfig, engines: int, ram: int, cores: int) -> Limits:
    """The limits of ``cfg``, with the defaults filled in (pure)."""
    memory = cfg.udf_memory or max(4 * MIN_MEMORY, ram * 3 // 4 // max(1, engines))
    nproc = cfg.udf_nproc or 256 + engines * (cores + 16)
    return Limits(memory=memory, cpu=cfg.udf_cpu_seconds, nofile=cfg.udf_nofile, nproc=nproc)


def udf_identity(
    name: str,
    *,
    euid: int,
    lookup: Callable[[str], pwd.struct_passwd] = pwd.getpwnam,
    create: Callable[[str], None] | None = None,
) -> tuple[int, int, str, str]:
    """(uid, gid, name, note) of the user UDFs run as. A node not running as root keeps
    its own uid (it cannot change it). ``create`` makes the default user if missing."""
    if euid != 0:
        me = pwd.getpwuid(euid)
        note = (
            f"the node is not root: UDFs keep its uid, not {name}'s" if name != DEFAULT_USER else ""
        )
        return me.pw_uid, os.getegid(), me.pw_name, note
    try:
        pw = lookup(name)
    except KeyError:
        if name != DEFAULT_USER:
            raise UsageError(f"--udf-user {name}: no such user") from None
        why = ""
        try:
            (create or _useradd)(name)
            pw = lookup(name)
        except (OSError, KeyError, subprocess.SubprocessError) as exc:
            why = str(exc) or type(exc).__name__
            pw = lookup("nobody")
            return pw.pw_uid, pw.pw_gid, pw.pw_name, f"cannot make user {name} ({why})"
    if pw.pw_uid == 0:
        raise UsageError(f"--udf-user {name} is root: UDFs must not run as root")
    return pw.pw_uid, pw.pw_gid, pw.pw_name, ""


def _useradd(name: str) -> None:
    for _ in range(10):
        r = subprocess.run([*USERADD, name], capture_output=True, text=True, check=False)
        try:
            pwd.getpwnam(name)
            return  # made, by us or by a node beside us
        except KeyError:
            pass
        if r.returncode != 10:  # 10: cannot lock /etc/passwd (another useradd): again
            raise OSError(f"useradd exited with {r.returncode}: {r.stderr.strip()}")
        time.sleep(0.2)
    raise OSError("useradd: /etc/passwd stayed locked")


def _ram() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 4 << 30


def enterable(path: str, uid: int, gid: int) -> bool:
    """Whether ``uid`` (with only ``gid``, as UDFs run) may enter directory ``path``."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    if uid == 0:
        return True
    bit = stat.S_IXUSR if st.st_uid == uid else stat.S_IXGRP if st.st_gid == gid else stat.S_IXOTH
    return bool(st.st_mode & bit)


def python_paths() -> list[str]:
    """Where this Python and its imports live: what an engine must be able to read."""
    found = [sys.base_prefix, sys.prefix, sys.exec_prefix, sys.base_exec_prefix, *sys.path]
    return [os.path.realpath(p) for p in found if p and os.path.isdir(p)]


def base_spec(cfg: NodeConfig, data: str, engines: int) -> tuple[Spec, str]:
    """The engines' spec before the mode is known (``mode`` "none"), and a note."""
    uid, gid, user, note = udf_identity(cfg.udf_user, euid=os.geteuid())
    hide = [str(cfg.tls)] if cfg.tls is not None else []
    hide += [str(sector_home()), *cfg.udf_hide]
    hidden = [data, *hide]
    reach = reach_pairs(
        [p for p in python_paths() if not any(_within(p, h) for h in hidden)],
        lambda d: enterable(d, uid, gid),
    )
    spec = Spec(
        mode="none",
        uid=uid,
        gid=gid,
        user=user,
        data=data,
        hide=tuple(os.path.abspath(p) for p in hide),
        shared=tuple(os.path.abspath(p) for p in cfg.udf_bind),
        reach=tuple(reach),
        code=tuple(temp_code(python_paths(), [os.path.abspath(h) for h in hidden])),
        limits=default_limits(cfg, engines, _ram(), os.cpu_count() or 1),
    )
    try:
        check_spec(spec)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return spec, note


def _within(path: str, root: str) -> bool:
    root = os.path.abspath(root)
    return path == root or path.startswith(root.rstrip("/") + "/")


def _probe(specs: list[Spec]) -> tuple[str | None, dict[str, str]]:
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=jail.probe_main, args=(theirs, specs), name="sphere-probe")
    proc.start()
    theirs.close()
    try:
        if not ours.poll(PROBE_TIMEOUT):
            return None, {s.mode: "the probe did not answer" for s in specs}
        mode, failed = ours.recv()
        return mode, failed
    except EOFError:
        return None, {s.mode: "the probe died" for s in specs}
    finally:
        ours.close()
        proc.kill()
        proc.join(10)


def prepare(cfg: NodeConfig, data: Path, engines: int) -> Setup:
    """The node's sandbox: user, limits and the mode this host allows. Blocking (a
    probe process, perhaps a useradd): call from a thread."""
    try:
        base, note = base_spec(cfg, os.path.abspath(data), engines)
    except (UsageError, OSError, KeyError) as exc:  # a bad --udf-* flag: say it, run nothing
        log.error("the UDF sandbox cannot be set up, no task will run: %s", exc)
        return Setup(None, cfg.udf_sandbox, error=str(exc))
    (data / "sphere" / "cache").mkdir(parents=True, exist_ok=True)  # bound into the view
    if note:
        log.warning("UDFs run as %s: %s", base.user, note)
    modes = modes_to_try(cfg.udf_sandbox, os.geteuid())
    tries = [replace(base, mode=m) for m in modes if m != "none"]
    mode, failed = _probe(tries) if tries else (None, {})
    if mode is None and "none" in modes:
        mode = "none"
    if mode is None:
        why = "; ".join(f"{m}: {w}" for m, w in failed.items())
        log.error("the UDF sandbox (%s) cannot be set up, no task will run: %s", modes[0], why)
        return Setup(None, cfg.udf_sandbox, error=why, failed=failed, note=note)
    if mode == "none":
        why = "; ".join(f"{m}: {w}" for m, w in failed.items()) or "--udf-sandbox none"
        log.warning(
            "UDFs run unsandboxed, as the node's own user (uid %d): they can read its "
            "key and data (%s)",
            os.geteuid(),
            why,
        )
    else:
        log.info("UDFs run in a %s sandbox as %s (uid %d)", mode, base.user, base.uid)
    spec = replace(base, mode=mode)
    return Setup(spec, cfg.udf_sandbox, failed=failed, note=note)


def own_dir(path: Path, spec: Spec) -> None:
    """Make ``path`` (in a directory of the node's) a directory the UDF user may write."""
    try:
        path.mkdir()
    except FileExistsError:
        pass
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory")
    if spec.mode != "none" and st.st_uid != spec.uid and spec.uid != os.geteuid():
        os.chown(path, spec.uid, spec.gid, follow_symlinks=False)
