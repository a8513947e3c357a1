"""Security of a local cluster started by ``sector up``: made once, kept across restarts.

``DIR/security/`` holds the cluster CA (``ca.crt``, ``ca.key``: the admin key) and the
admin's credential (``admin.token``); each ``DIR/node-<i>/tls/`` holds that node's
certificate. The admin credential is also stored for the user who ran ``sector up``
(``$SECTOR_HOME/credentials``), as ``sector login`` would, so every later command and
``sector.connect()`` on this machine can write to the cluster it just made.
"""

from __future__ import annotations

import time
from pathlib import Path

from cryptography.hazmat.primitives.serialization import Encoding

from sector.security import credstore, tokens
from sector.security._files import write_atomic
from sector.security.pki import ClusterCA, NodeIdentity

ADMIN_TTL = None  # the local admin's credential does not expire


def admin_dir(directory: Path) -> Path:
    return directory / "security"


def ensure_ca(directory: Path) -> ClusterCA:
    """The cluster CA of a local cluster directory, created on first use."""
    d = admin_dir(directory)
    if (d / "ca.crt").exists():
        return ClusterCA.load(d)
    ca = ClusterCA.create("local")
    ca.save(d)
    return ca


def ensure_node_cert(ca: ClusterCA, data: Path, name: str) -> Path:
    """``data/tls`` with a certificate of this CA for node ``name`` (kept if valid)."""
    tls = data / "tls"
    try:
        ident = NodeIdentity.load(tls)
        if ident.cluster_id == ca.cluster_id:
            ca.verify_leaf(ident.cert.public_bytes(Encoding.DER), time.time() + 86400)
            return tls
    except Exception:
        pass  # missing, of another cluster, or about to expire: issue a new one
    ca.issue_node(name, ips=["127.0.0.1"], dns=["localhost"]).save(tls)
    return tls


def ensure_admin(ca: ClusterCA, directory: Path) -> str:
    """The admin credential of the local cluster, stored for this user too."""
    path = admin_dir(directory) / "admin.token"
    token = None
    try:
        token = path.read_text().strip()
        tokens.verify(token, ca, None, time.time())
    except Exception:
        token = tokens.issue(
            ca, "admin", write=["/"], compute=True, admin=True, ttl=ADMIN_TTL, now=time.time()
        )
        write_atomic(path, (token + "\n").encode(), 0o600)
    credstore.save(ca.cluster_id, ca_pem=ca.cert_pem, token=token, user="admin")
    return token
