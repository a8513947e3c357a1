"""The `sector` command: argument parsing, dispatch, and the exit-code contract.

Exit codes: 0 success; 1 the operation failed (a SectorError, or an OSError on a
local file); 2 bad usage (argparse); 130 interrupted (Ctrl-C); 141 stdout closed by
its reader (`sector cat /x | head`), which is not reported. A failure prints exactly
one line, ``sector: error: <message>``, never a traceback (``SECTOR_DEBUG=1`` adds
it). Only argparse, os and sys are imported up front; everything else is imported by
the command that needs it, so `sector ls` starts fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, cast

from sector.cli.args import (
    Unbuilt,
    add_http_option,
    arg_type,
    command_index,
    command_word,
    parse_address,
    parse_listen,
    parse_size,
    parse_topology,
    positive_int,
)
from sector.cli.output import error_message

PROG = "sector"

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_PIPE = 0, 1, 2, 130, 141


class _Parser(argparse.ArgumentParser):
    """argparse with the error line of the contract: one line, ``sector: error: ...``."""

    def error(self, message: str) -> NoReturn:
        hint = f" (see `{self.prog} -h`)"
        self.exit(EXIT_USAGE, f"{PROG}: error: {' '.join(message.split())}{hint}\n")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser of every command of DESIGN §3; with ``only``, of that command alone
    (all ~45 cost ~25 ms of CPU, more than a small `get`; an unknown word gets all)."""
    # --cluster and --json may come before or after the command. The main parser owns
    # the defaults; the copies on the subparsers default to SUPPRESS so that, when
    # absent after the command, they do not overwrite a value given before it.
    cluster_help = "enter the cluster through this node (default: $SECTOR_CLUSTER, else the `sector up` cluster)"
    common = _Parser(add_help=False)
    common.add_argument(
        "--cluster",
        metavar="HOST:PORT",
        type=arg_type(parse_address),
        default=argparse.SUPPRESS,
        help=cluster_help,
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output"
    )
    cred_help = "present this credential (default: $SECTOR_TOKEN, else `sector login`'s)"
    common.add_argument("--token", default=argparse.SUPPRESS, help=cred_help)
    anon_help = "present no credential (read public data only)"
    common.add_argument(
        "--anonymous", action="store_true", default=argparse.SUPPRESS, help=anon_help
    )

    p = _Parser(prog=PROG, description="Sector: a peer-to-peer storage cloud.")
    p.add_argument(
        "--cluster", metavar="HOST:PORT", type=arg_type(parse_address), help=cluster_help
    )
    p.add_argument("--json", action="store_true", default=False, help="machine-readable output")
    p.add_argument("--token", default=None, help=cred_help)
    p.add_argument("--anonymous", action="store_true", help=anon_help)
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def cmd(name: str, help: str) -> argparse.ArgumentParser:
        if only is not None and name != only:
            return cast(argparse.ArgumentParser, Unbuilt())
        return sub.add_parser(name, help=help, description=help, parents=[common])

    s = cmd("up", "start a local cluster on loopback in the background; print its address")
    s.add_argument(
        "-n", "--nodes", type=arg_type(positive_int), default=3, help="number of nodes (default 3)"
    )
    s.add_argument(
        "--replicas",
        type=arg_type(positive_int),
        default=3,
        help="default replica target (default 3)",
    )
    s.add_argument(
        "--dir", type=Path, default=None, help="cluster directory (default $SECTOR_HOME/cluster)"
    )
    s.add_argument(
        "--engines",
        type=arg_type(positive_int),
        default=None,
        help="Sphere processing engines per node (default: one per core)",
    )
    s.add_argument(
        "--insecure",
        action="store_true",
        help="no TLS, no credentials: anyone who can reach the ports may write",
    )

    s = cmd("down", "stop the local cluster")
    s.add_argument(
        "--dir", type=Path, default=None, help="cluster directory (default: the last `sector up`)"
    )

    s = cmd("node", "run one node in the foreground")
    s.add_argument("--data", type=Path, required=True, help="data directory of this node")
    s.add_argument(
        "--listen",
        metavar="HOST:PORT",
        type=arg_type(parse_listen),
        required=True,
        help="port 0 = any",
    )
    add_http_option(s)
    s.add_argument(
        "--join",
        metavar="HOST:PORT",
        type=arg_type(parse_address),
        help="any node of the ring to join",
    )
    s.add_argument(
        "--topology",
        metavar="/DC/RACK",
        type=arg_type(parse_topology),
        default=None,
        help="e.g. /dc1/rack2",
    )
    s.add_argument(
        "--replicas",
        type=arg_type(positive_int),
        default=3,
        help="default replica target (default 3)",
    )
    s.add_argument(
        "--quota", metavar="BYTES", type=arg_type(parse_size), help="cap on stored bytes (e.g. 10G)"
    )
    s.add_argument(
        "--min-free",
        metavar="BYTES",
        type=arg_type(parse_size),
        default=None,
        help="free-space floor: below it the node takes no new replicas (default 64M)",
    )
    s.add_argument(
        "--engines",
        type=arg_type(positive_int),
        default=None,
        help="Sphere processing engines (default: one per core)",
    )
    s.add_argument(
        "--udf-sandbox",
        choices=("auto", "full", "userns", "none"),
        default=None,
        help="how UDFs are confined (default auto: the strongest this host allows; "
        "see README 'Sandbox')",
    )
    s.add_argument(
        "--udf-user",
        metavar="NAME",
        default=None,
        help="the user UDFs run as on a root node (default sector-udf, made if missing)",
    )
    s.add_argument(
        "--udf-memory",
        metavar="BYTES",
        type=arg_type(parse_size),
        default=None,
        help="memory of each engine process (default: 3/4 of RAM over the engines)",
    )
    s.add_argument(
        "--udf-cpu-seconds",
        metavar="N",
        type=arg_type(positive_int),
        default=None,
        help="CPU seconds a UDF may use per task (default 600)",
    )
    s.add_argument(
        "--udf-nofile",
        metavar="N",
        type=arg_type(positive_int),
        default=None,
        help="open files per engine process (default 4096)",
    )
    s.add_argument(
        "--udf-nproc",
        metavar="N",
        type=arg_type(positive_int),
        default=None,
        help="processes and threads of the UDF user (default 256 + engines x (cores + 16))",
    )
    s.add_argument(
        "--udf-hide",
        metavar="PATH",
        action="append",
        default=None,
        help="a path UDFs must not see (repeatable; the data and TLS directories are hidden)",
    )
    s.add_argument(
        "--udf-bind",
        metavar="DIR",
        action="append",
        default=None,
        help="a directory UDFs may read and write where it is (repeatable)",
    )
    s.add_argument(
        "--bulk-cc",
        metavar="NAME",
        default=None,
        help="congestion control of bulk streams: auto (bbr where the kernel has it), "
        "bbr, cubic... (default auto; README 'WAN transfer')",
    )
    s.add_argument(
        "--tls",
        metavar="DIR",
        type=Path,
        default=None,
        help="node.crt, node.key and ca.crt (from `sector cluster add-node`): TLS, "
        "membership proved, every request checked (default: an open node)",
    )
    s.add_argument(
        "--host-id",
        metavar="NAME",
        default=None,
        help="what counts as one host for placement (default: the IP; each node on loopback)",
    )
    s.add_argument(
        "--stall-timeout",
        metavar="SECONDS",
        type=float,
        default=10.0,
        help="close a connection whose frame stalls this long (default 10)",
    )
    s.add_argument(
        "--max-connections",
        metavar="N",
        type=arg_type(positive_int),
        default=None,
        help="connections this node holds at most (default 1024)",
    )
    s.add_argument(
        "--max-strangers",
        metavar="N",
        type=arg_type(positive_int),
        default=None,
        help="of them, not yet identified as a node or user (default 256; 64 per address)",
    )
    s.add_argument(
        "--stranger-idle-timeout",
        metavar="SECONDS",
        type=float,
        default=None,
        help="close an unidentified connection idle this long (default 30)",
    )
    s.add_argument(
        "--input-budget",
        metavar="BYTES",
        type=arg_type(parse_size),
        default=None,
        help="bytes of requests the node holds at once, all peers together (default 256M)",
    )
    s.add_argument(
        "--repair-rate",
        metavar="BYTES",
        type=arg_type(parse_size),
        default=None,
        help="cap on bytes/s copied by repair (e.g. 100M; default: no cap)",
    )
    s.add_argument(
        "--scrub-rate",
        metavar="BYTES",
        type=arg_type(parse_size),
        default=None,
        help="bytes/s re-hashed by the scrubber (default 32M; 0 = no cap)",
    )
    s.add_argument(
        "--scrub-interval",
        metavar="SECONDS",
        type=float,
        default=None,
        help="seconds between scrub passes (default 86400; the scrub.now op runs one at once)",
    )
    s.add_argument(
        "--audit-interval",
        metavar="SECONDS",
        type=float,
        default=None,
        help="seconds between audits of the copies this node's records list (default 600)",
    )
    s.add_argument(
        "--gc-grace",
        metavar="SECONDS",
        type=float,
        default=None,
        help="age before an unclaimed blob or stale temp file is collected (default 600)",
    )
    s.add_argument(
        "--gc-interval",
        metavar="SECONDS",
        type=float,
        default=None,
        help="seconds between collector passes (default 300; the gc.now op runs one at once)",
    )
    for flag, helped in (
        ("grace", "age of a removal whose tombstones are purged (default 86400: a day)"),
        ("interval", "seconds between tombstone purge passes (default 3600)"),
    ):
        s.add_argument(
            f"--tombstone-{flag}", metavar="SECONDS", type=float, default=None, help=helped
        )

    s.add_argument(
        "--cache-size",
        metavar="BYTES",
        type=arg_type(parse_size),
        default=None,
        help="cache of other nodes' files (swarm distribution; default: 10%% of free disk, "
        "at least 2G where 8G are free)",
    )
    s.add_argument(
        "--piece-size",
        metavar="BYTES",
        type=arg_type(parse_size),
        default=None,
        help="base piece size of the piece hashes of new files (default 4M)",
    )
    s.add_argument(
        "--swarm-upload-rate",
        metavar="BYTES",
        type=arg_type(parse_size),
        default=None,
        help="cap on bytes/s of pieces this node serves to its peers (default: no cap)",
    )

    s = cmd("status", "nodes, files and under-replicated files of the cluster")
    s.add_argument(
        "--workers", action="store_true", help="also list every node's background workers"
    )

    # Also spelled `sector node drain ADDRESS` (see _alias): `node` itself requires
    # --data and --listen, so a real sub-action there would change how it parses.
    s = cmd("drain", "move every replica off a node; wait until it is safe to remove")
    s.add_argument("address", metavar="ADDRESS", type=arg_type(parse_address))
    s.add_argument("--no-wait", action="store_true", help="start the drain and return")
    s.add_argument("--cancel", action="store_true", help="stop draining; the node takes data again")
    s.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        default=0.0,
        help="give up waiting after this long (exit 1; default: wait for ever)",
    )

    s = cmd("put", "upload local files (directories with -r)")
    s.add_argument("-r", "--recursive", action="store_true", help="upload directories recursively")
    s.add_argument(
        "--replicas",
        type=arg_type(positive_int),
        default=None,
        help="replica target of the new files",
    )
    _jobs(s)
    s.add_argument("local", nargs="+", metavar="LOCAL")
    s.add_argument("remote", metavar="REMOTE")

    s = cmd("get", "download files (directories with -r)")
    s.add_argument(
        "-r", "--recursive", action="store_true", help="download directories recursively"
    )
    _jobs(s)
    s.add_argument("remote", nargs="+", metavar="REMOTE")
    s.add_argument("local", metavar="LOCAL")

    s = cmd("cat", "write a file to stdout")
    s.add_argument("remote", metavar="REMOTE")

    s = cmd("ls", "list a directory")
    s.add_argument(
        "-l", dest="long", action="store_true", help="long listing: type, size, replicas, mtime"
    )
    s.add_argument("path", nargs="?", default="/", metavar="PATH")

    s = cmd("stat", "describe a file: size, checksum, replicas and their nodes")
    s.add_argument(
        "--verify",
        action="store_true",
        help="have every replica re-hash its copy: health ok/corrupt/missing per replica",
    )
    s.add_argument("path", metavar="PATH")

    s = cmd("mkdir", "create a directory")
    s.add_argument(
        "-p", "--parents", action="store_true", help="create parents; no error if it exists"
    )
    s.add_argument("path", metavar="PATH")

    s = cmd("rm", "remove a file (a directory with -r)")
    s.add_argument(
        "-r", "--recursive", action="store_true", help="remove directories and their contents"
    )
    s.add_argument("path", metavar="PATH")

    s = cmd("mv", "rename or move a file or directory")
    s.add_argument("src", metavar="SRC")
    s.add_argument("dst", metavar="DST")

    from sector.cli import disco, mount, security, sphere, swarm

    sphere.add_parsers(cmd, common)
    swarm.add_parsers(cmd, common)
    mount.add_parsers(cmd, common)
    disco.add_parsers(cmd, common)
    security.add_parsers(cmd, common)
    if only is not None and only not in sub.choices:
        return build_parser()
    return p


def run(args: argparse.Namespace) -> int:
    """Run a parsed command; raises on failure (see :func:`main`)."""
    if args.command == "node":
        return _node(args)
    if args.command == "drain":
        from sector.cli import drain

        return drain.run(args)
    if args.command in ("up", "down"):
        return _up(args) if args.command == "up" else _down(args)
    if args.command in ("mount", "umount"):
        from sector.cli import mount

        return mount.run(args)
    from sector.cli import commands

    if args.command in ("cluster", "user", "login", "logout", "whoami"):
        from sector.cli import security

        if not security.needs_client(args):
            return security.run_local(args)
        anonymous = args.anonymous or args.command in ("login", "logout")
        client = commands.connect(args.cluster, token=args.token, anonymous=anonymous)
        try:
            return security.run_remote(client, args)
        finally:
            client.close()
    client = commands.connect(args.cluster, token=args.token, anonymous=args.anonymous)
    try:
        if args.command == "distribute":
            from sector.cli import swarm

            return swarm.run(client, args)  # type: ignore[arg-type]
        if args.command == "disco":
            from sector.cli import disco

            disco.run(client, args)
        elif args.command in ("sphere", "terasort"):
            from sector.cli import sphere

            sphere.run(client, args)
        else:
            commands.COMMANDS[args.command](client, args)
    finally:
        client.close()
    return EXIT_OK


# The node options that keep NodeConfig's default when not given.
_KEEP_DEFAULT = (
    "scrub_rate scrub_interval gc_grace gc_interval engines audit_interval "
    "tls max_connections max_strangers stranger_idle_timeout input_budget "
    "udf_sandbox udf_user udf_memory udf_cpu_seconds udf_nofile udf_nproc "
    "cache_size piece_size swarm_upload_rate bulk_cc tombstone_grace tombstone_interval"
)


def _node(args: argparse.Namespace) -> int:
    from sector.config import NodeConfig
    from sector.node.main import run_node

    cfg = NodeConfig(
        data=args.data,
        listen=args.listen,
        http=args.http,
        join=args.join,
        topology=args.topology or "",
        replicas=args.replicas,
        quota=args.quota,
        host_id=args.host_id,
        stall_timeout=args.stall_timeout,
        repair_rate=args.repair_rate or 0,
        udf_hide=tuple(args.udf_hide or ()),
        udf_bind=tuple(args.udf_bind or ()),
        **({"min_free": args.min_free} if args.min_free is not None else {}),
        **{k: getattr(args, k) for k in _KEEP_DEFAULT.split() if getattr(args, k) is not None},
    )
    return int(run_node(cfg))


def _up(args: argparse.Namespace) -> int:
    from sector.cli import output
    from sector.config import default_cluster_dir
    from sector.node.localcluster import start_cluster

    directory = args.dir or default_cluster_dir()
    if sys.stderr.isatty():
        sys.stderr.write(f"starting {args.nodes} nodes in {directory} ...\n")
    info = start_cluster(
        directory, args.nodes, args.replicas, engines=args.engines, secure=not args.insecure
    )
    if args.json:
        output.emit_json(info)
    else:
        output.echo(str(info["address"]))
        if info.get("http"):  # stdout stays the address alone, for `$(sector up)`
            sys.stderr.write(f"web page and /metrics: {info['http']}\n")
    return EXIT_OK


def _down(args: argparse.Namespace) -> int:
    from sector.cli import output
    from sector.config import current_cluster_dir, default_cluster_dir
    from sector.node.localcluster import stop_cluster

    directory = args.dir or current_cluster_dir() or default_cluster_dir()
    n = stop_cluster(directory)
    if args.json:
        output.emit_json({"stopped": n, "dir": str(Path(directory).expanduser().resolve())})
    else:
        output.echo(f"stopped {n} node{'s' if n != 1 else ''}")
    return EXIT_OK


def _alias(argv: list[str]) -> list[str]:
    """``node drain ADDRESS`` -> ``drain ADDRESS``: the documented spelling of a drain."""
    i = command_index(argv)
    if i is not None and argv[i : i + 2] == ["node", "drain"]:
        return argv[:i] + argv[i + 1 :]
    return argv


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `sector` script; returns the exit code."""
    words = _alias(list(sys.argv[1:] if argv is None else argv))
    args = build_parser(command_word(words)).parse_args(words)
    args.argv = words  # `disco run` starts its driver with the same words
    from sector.cli.output import StdoutClosed, flush_stdout

    try:
        code = run(args)
        flush_stdout()  # here, not at interpreter exit, so a closed pipe is seen by us
        return code
    except StdoutClosed:
        # Point stdout at /dev/null so the interpreter's final flush cannot complain.
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass  # stdout is not a real file (embedded use): nothing will flush to a pipe
        return EXIT_PIPE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # the contract: one line, never a traceback
        if os.environ.get("SECTOR_DEBUG", "0") not in ("", "0"):
            import traceback

            traceback.print_exc()
        _report(exc)
        return EXIT_FAILED


def _report(exc: BaseException) -> None:
    sys.stderr.write(f"{PROG}: error: {error_message(exc)}\n")
    sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())


def _jobs(s: argparse.ArgumentParser) -> None:
    """``-j/--jobs`` of put -r and get -r."""
    s.add_argument(
        "-j",
        "--jobs",
        type=arg_type(positive_int),
        default=32,
        help="files in flight at once (default 32)",
    )
