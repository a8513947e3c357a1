"""`sector cluster ...`, `sector user ...`, `sector login/logout/whoami`.

The admin's directory holds the cluster CA (``ca.crt``, ``ca.key``: the admin key). It
is ``--admin-dir``, else ``$SECTOR_ADMIN_DIR``, else the ``security/`` directory of the
local cluster that ``sector up`` started, else ``$SECTOR_HOME/admin`` (where
``sector cluster init`` puts it). Issuing a credential or a node certificate needs only
that directory, no cluster: every node verifies them against the CA on its own.
Revoking, and restricting reads, changes the signed cluster policy, which is handed to
one node and spreads to all.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sector.cli import output
from sector.errors import UsageError

EXIT_OK = 0
DAY = 86400.0


def add_parsers(
    cmd: Callable[[str, str], argparse.ArgumentParser], common: argparse.ArgumentParser
) -> None:
    s = cmd("cluster", "cluster identity: CA, node certificates, read restrictions")
    sub = _Sub(s, common)
    a = sub.add_parser("init", help="create a cluster CA and an admin credential")
    _admin_dir(a)
    a.add_argument("--force", action="store_true", help="replace an existing CA")
    a = sub.add_parser("add-node", help="issue a node certificate (for `sector node --tls`)")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--out", type=Path, required=True, help="directory to write it to")
    a.add_argument("--ip", action="append", default=None, help="address of the node (repeat)")
    a.add_argument("--dns", action="append", default=None, help="host name of the node")
    _admin_dir(a)
    a = sub.add_parser("remove-node", help="refuse node NAME's certificate from now on")
    a.add_argument("name", metavar="NAME")
    _admin_dir(a)
    for name, text in (
        ("restrict", "make reads under PREFIX need a read grant"),
        ("unrestrict", "make PREFIX public again"),
    ):
        a = sub.add_parser(name, help=text)
        a.add_argument("prefix", metavar="PREFIX")
        _admin_dir(a)
    sub.add_parser("policy", help="the cluster policy: version, revoked users, private prefixes")

    s = cmd("user", "issue and revoke user credentials")
    sub = _Sub(s, common)
    a = sub.add_parser("add", help="issue a credential for NAME (printed, or written to -o)")
    a.add_argument("name", metavar="NAME")
    a.add_argument("--write", action="append", default=[], metavar="PREFIX")
    a.add_argument("--read", action="append", default=[], metavar="PREFIX")
    a.add_argument("--compute", action="store_true", help="may run Sphere jobs")
    a.add_argument("--admin", action="store_true", help="may drain nodes and run workers")
    a.add_argument("--days", type=float, default=365.0, help="lifetime (default 365; 0 = none)")
    a.add_argument("-o", "--output", type=Path, default=None, help="write the credential here")
    _admin_dir(a)
    a = sub.add_parser("revoke", help="refuse every credential of NAME issued so far")
    a.add_argument("name", metavar="NAME")
    _admin_dir(a)

    s = cmd("login", "store a credential for later commands")
    s.add_argument("credential", nargs="?", default=None, help="the credential (default: stdin)")
    s.add_argument("--file", type=Path, default=None, help="read the credential from a file")
    cmd("logout", "forget the stored credential of the cluster")
    cmd("whoami", "who the cluster takes you for")


class _Sub:
    """Sub-actions that take the global options (--json, --cluster, ...) after them too."""

    def __init__(self, parent: argparse.ArgumentParser, common: argparse.ArgumentParser):
        self._sub = parent.add_subparsers(dest="action", metavar="ACTION", required=True)
        self._common = common

    def add_parser(self, name: str, help: str) -> argparse.ArgumentParser:
        return self._sub.add_parser(name, help=help, description=help, parents=[self._common])


def _admin_dir(p: argparse.ArgumentParser) -> None:
    p.add_argument("--admin-dir", type=Path, default=None, help="the CA's directory")


def admin_dir(given: Path | None) -> Path:
    if given is not None:
        return given.expanduser()
    env = os.environ.get("SECTOR_ADMIN_DIR")
    if env:
        return Path(env).expanduser()
    from sector.config import current_cluster_dir, sector_home

    d = current_cluster_dir()
    if d is not None and (d / "security" / "ca.key").exists():
        return d / "security"
    return sector_home() / "admin"


def _ca(given: Path | None) -> Any:
    from sector.security.pki import ClusterCA

    d = admin_dir(given)
    ca = ClusterCA.load(d)
    if ca.key is None:
        raise UsageError(f"no admin key in {d} (ca.key): only the cluster admin can do this")
    return ca


def needs_client(args: argparse.Namespace) -> bool:
    if args.command in ("login", "logout", "whoami"):
        return True
    if args.command == "user":
        return bool(args.action == "revoke")
    return bool(args.action in ("restrict", "unrestrict", "policy", "remove-node"))


def run_local(args: argparse.Namespace) -> int:
    """The commands that need only the admin directory."""
    from sector.security import credstore, tokens
    from sector.security.pki import ClusterCA

    now = time.time()
    if args.command == "cluster" and args.action == "init":
        d = admin_dir(args.admin_dir)
        if (d / "ca.key").exists() and not args.force:
            raise UsageError(f"a cluster CA already exists in {d} (--force replaces it)")
        ca = ClusterCA.create()
        ca.save(d)
        token = tokens.issue(ca, "admin", write=["/"], compute=True, admin=True, ttl=None, now=now)
        _write_secret(d / "admin.token", token)
        credstore.save(ca.cluster_id, ca_pem=ca.cert_pem, token=token, user="admin")
        _emit(args, {"cluster": ca.cluster_id, "dir": str(d)}, f"cluster {ca.cluster_id} in {d}")
    elif args.command == "cluster" and args.action == "add-node":
        ca = _ca(args.admin_dir)
        ident = ca.issue_node(
            args.name, ips=args.ip or ["127.0.0.1"], dns=args.dns or ["localhost"]
        )
        ident.save(args.out)
        _emit(
            args,
            {"node": args.name, "dir": str(args.out), "cluster": ca.cluster_id},
            f"node certificate for {args.name} in {args.out} (sector node --tls {args.out})",
        )
    elif args.command == "user" and args.action == "add":
        ca = _ca(args.admin_dir)
        ttl = args.days * DAY if args.days > 0 else None
        token = tokens.issue(
            ca,
            args.name,
            write=args.write,
            read=args.read,
            compute=args.compute,
            admin=args.admin,
            ttl=ttl,
            now=now,
        )
        if args.output is not None:
            _write_secret(args.output, token)
        info = {
            "user": args.name,
            "cluster": ca.cluster_id,
            "write": args.write,
            "read": args.read,
            "compute": args.compute,
            "admin": args.admin,
            "expires": now + ttl if ttl else None,
            "token": token,
        }
        if args.json:
            output.emit_json(info)
        elif args.output is not None:
            output.echo(f"credential for {args.name} written to {args.output}")
        else:
            output.echo(token)
    else:
        raise UsageError(f"unknown command {args.command} {getattr(args, 'action', '')}")
    return EXIT_OK


def run_remote(client: Any, args: argparse.Namespace) -> int:
    """The commands that talk to the cluster."""
    from sector.security import credstore, tokens
    from sector.security.pki import ClusterCA

    if args.command == "whoami":
        me = client.whoami()
        text = f"{me['user'] or 'anonymous'}" + (
            f" on cluster {me['cluster']} (TLS)" if me["tls"] else " on an open cluster"
        )
        _emit(args, me, text)
        return EXIT_OK
    pol = client.policy()
    cid = pol.get("cluster")
    if not cid:
        raise UsageError("this cluster is open (no TLS, no credentials): nothing to do")
    if args.command == "login":
        token = _read_credential(args)
        grant = tokens.peek(token)
        if grant is None:
            raise UsageError("that is not a Sector credential")
        ca = ClusterCA.from_pem(str(pol.get("ca", "")))
        if ca.cluster_id != cid or grant.cluster != cid:
            raise UsageError(f"that credential is for cluster {grant.cluster}, not {cid}")
        tokens.verify(token, ca, None, time.time())  # signature and expiry, here and now
        # Where we logged in is remembered: a client there then insists on TLS and on
        # this cluster (security/client.py), however it found the credential.
        old = credstore.load(cid)
        seen = {*(old.addresses if old else ()), client.address}
        credstore.save(cid, ca_pem=ca.cert_pem, token=token, user=grant.user, addresses=seen)
        _emit(args, {"user": grant.user, "cluster": cid}, f"logged in as {grant.user} on {cid}")
    elif args.command == "logout":
        removed = credstore.remove(cid)
        _emit(
            args, {"cluster": cid, "removed": removed}, "logged out" if removed else "not logged in"
        )
    elif args.command == "cluster" and args.action == "policy":
        pol.pop("policy", None)
        pol.pop("ca", None)
        _emit(args, pol, _policy_text(pol))
    else:
        ca = _ca(args.admin_dir)
        if ca.cluster_id != cid:
            raise UsageError(
                f"the admin key in {admin_dir(args.admin_dir)} is not of cluster {cid}"
            )
        # Build on the newest policy any node has (one that was away may lag), so the
        # new version supersedes every copy in the cluster.
        current = tokens.Policy.initial(cid)
        for blob in _policies(client, pol):
            got = tokens.verify_policy(blob, ca)
            if tokens.supersedes(got, current):
                current = got
        now = time.time()
        if args.command == "user":
            new = tokens.revoke(current, args.name, now)
        elif args.action == "remove-node":
            new = tokens.remove_node(current, args.name, now)
        elif args.action == "restrict":
            new = tokens.restrict(current, args.prefix, now)
        else:
            new = tokens.unrestrict(current, args.prefix, now)
        rep = client.put_policy(tokens.sign_policy(ca, new))
        if not rep.get("taken"):
            raise UsageError("the cluster holds a newer policy than the one read: try again")
        info = {
            "cluster": cid,
            "version": rep.get("version"),
            "revoked": sorted(new.revoked),
            "private": list(new.private),
            "removed_nodes": list(new.removed_nodes),
        }
        what = (
            f"revoked {args.name}"
            if args.command == "user"
            else f"removed node {args.name}"
            if args.action == "remove-node"
            else f"{args.action}ed {args.prefix}"
        )
        _emit(args, info, f"{what} (policy version {info['version']})")
    return EXIT_OK


def _policies(client: Any, entry: dict[str, Any]) -> list[str]:
    """The signed policy of the entry node and of every other node that answers."""
    out = [entry["policy"]] if isinstance(entry.get("policy"), str) else []
    for n in client.status().get("nodes", []):
        if n.get("state") != "up":
            continue
        try:
            rep = client._run(client._aio.pool.call(n["address"], "sec.policy", {"have": -1}))
        except Exception:
            continue  # a node that does not answer catches up by anti-entropy
        if isinstance(rep, dict) and isinstance(rep.get("policy"), str):
            out.append(rep["policy"])
    return out


def _policy_text(pol: dict[str, Any]) -> str:
    return (
        f"cluster {pol.get('cluster')} policy version {pol.get('version')}\n"
        f"revoked: {', '.join(pol.get('revoked') or []) or '-'}\n"
        f"private: {', '.join(pol.get('private') or []) or '-'}"
    )


def _read_credential(args: argparse.Namespace) -> str:
    if args.file is not None:
        try:
            return args.file.read_text().strip()
        except OSError as exc:
            raise UsageError(f"cannot read {args.file}: {exc.strerror}") from None
    if args.credential:
        return str(args.credential).strip()
    if sys.stdin.isatty():
        raise UsageError("give the credential as an argument, with --file, or on stdin")
    return sys.stdin.read().strip()


def _write_secret(path: Path, text: str) -> None:
    from sector.security._files import write_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, (text + "\n").encode(), 0o600)


def _emit(args: argparse.Namespace, info: dict[str, Any], text: str) -> None:
    if args.json:
        output.emit_json(info)
    else:
        output.echo(text)
