"""`sector mount MOUNTPOINT` and `sector umount MOUNTPOINT`: the namespace as a file system.

The work is in ``sector.mount`` (see its package docstring); here are the arguments,
the help text and the output. ``mount`` returns once the file system is usable and
prints where it is; ``--foreground`` serves in this process instead (until unmounted,
or Ctrl-C / SIGTERM, which unmount).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sector.cli import output
from sector.cli.args import arg_type, parse_size

EPILOG = """\
Reads are lazy: a file's blocks are fetched from its replicas when read (sequential
reads are read ahead) and kept in the local cache (--cache, at most --cache-size
bytes, least recently used dropped first); the kernel keeps a file's pages until its
next version. Writes follow Sector's model: a new file (or one opened with O_TRUNC,
which replaces it) is written to a local spool and stored in Sector when it is
closed; close() returns EIO if that fails. Changing an existing file in place
(O_APPEND, or a write open without O_TRUNC) fails with EPERM, the reason in the log.
Without a credential for a secure cluster the mount is read-only (EROFS).

example:
  mkdir -p ~/sector && sector mount ~/sector
  mkdir -p ~/sector/data && cp big.bin ~/sector/data/ && ls -l ~/sector/data
  df -h ~/sector && sector umount ~/sector

Needs FUSE 3 (fusermount3 and libfuse3: apt-get install fuse3)."""


def add_parsers(cmd: Callable[[str, str], argparse.ArgumentParser], common: Any) -> None:
    s = cmd("mount", "mount the namespace as a file system (FUSE) and return once it is usable")
    s.epilog = EPILOG
    s.formatter_class = argparse.RawDescriptionHelpFormatter
    s.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path, help="an existing directory")
    s.add_argument(
        "--cache",
        metavar="DIR",
        type=Path,
        default=None,
        help="local cache, spool and log (default $SECTOR_HOME/mounts/<one per mount point>)",
    )
    s.add_argument(
        "--cache-size",
        metavar="BYTES",
        type=arg_type(parse_size),
        default=1 << 30,
        help="cached file blocks kept at most (e.g. 20G; default 1G)",
    )
    s.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=15.0,
        help="a request the cluster does not answer in this time fails with EIO (default 15)",
    )
    s.add_argument(
        "--ttl",
        metavar="SECONDS",
        type=float,
        default=1.0,
        help="how long file attributes are kept before asking again (default 1)",
    )
    s.add_argument(
        "--foreground",
        action="store_true",
        help="serve in this process until unmounted (log on stderr)",
    )
    s.add_argument("--ready-fd", type=int, default=None, help=argparse.SUPPRESS)

    u = cmd("umount", "unmount a Sector file system (fusermount3 -u)")
    u.add_argument("mountpoint", metavar="MOUNTPOINT", type=Path)
    u.add_argument("-z", "--lazy", action="store_true", help="detach now, even if it is busy")


def run(args: argparse.Namespace) -> int:
    from sector.mount import daemon

    if args.command == "umount":
        mp = daemon.umount(args.mountpoint, lazy=args.lazy)
        if args.json:
            output.emit_json({"unmounted": mp})
        else:
            output.echo(f"unmounted {mp}")
        return 0
    if args.timeout <= 0 or args.ttl < 0:
        from sector.errors import UsageError

        raise UsageError("--timeout must be positive and --ttl not negative")
    opts = daemon.MountOptions(
        mountpoint=args.mountpoint,
        cluster=args.cluster,
        token=args.token,
        anonymous=args.anonymous,
        cache=args.cache.resolve() if args.cache is not None else None,
        cache_size=args.cache_size,
        timeout=args.timeout,
        ttl=args.ttl,
    )
    if args.foreground:
        return daemon.run_foreground(opts, args.ready_fd)
    info = daemon.start_background(opts)
    if args.json:
        output.emit_json(info)
    else:
        output.echo(
            f"mounted Sector on {info['mountpoint']} (pid {info['pid']}, log {info['log']}); "
            f"`sector umount {info['mountpoint']}` unmounts it"
        )
    return 0
