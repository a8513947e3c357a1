"""The client's stored credentials: what ``sector login`` writes, one file per cluster.

``$SECTOR_HOME/credentials/<cluster_id>.json`` (directory 0700, files 0600)::

    {"cluster": "<id>", "token": "<credential>" | null, "ca": "<CA PEM>",
     "user": "alice" | null, "addresses": ["10.0.0.5:6000", ...]}

Keyed by cluster id because that is what a client learns from the node it reached
(``pki.cluster_id_of_leaf``): it then picks the CA to verify the node against and
the credential to present. A file with no token still pins the CA, for anonymous
reads of a cluster one trusts. A file that is unreadable, half-written or does not
match its name is ignored (``None``), never a traceback: the worst case is being
asked to log in again.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from sector.config import sector_home
from sector.errors import UsageError
from sector.security._files import private_dir, write_atomic
from sector.security.pki import ClusterCA

_CLUSTER_ID = re.compile(r"[0-9a-f]{16}")


@dataclass(frozen=True, slots=True)
class StoredCredential:
    cluster: str
    ca_pem: str
    token: str | None = None
    user: str | None = None
    addresses: tuple[str, ...] = ()

    @property
    def ca(self) -> ClusterCA:
        """The cluster's public CA (checked on load, so this does not fail)."""
        return ClusterCA.from_pem(self.ca_pem)


def directory() -> Path:
    return sector_home() / "credentials"


def _path(cluster_id: str) -> Path:
    return directory() / f"{cluster_id}.json"


def save(
    cluster_id: str,
    *,
    ca_pem: str | bytes,
    token: str | None = None,
    user: str | None = None,
    addresses: Iterable[str] = (),
) -> StoredCredential:
    """Store (or replace) what we know of one cluster; UsageError if it is inconsistent."""
    if not isinstance(cluster_id, str) or not _CLUSTER_ID.fullmatch(cluster_id):
        raise UsageError(f"invalid cluster id {cluster_id!r:.80}: expected 16 hex chars")
    pem = ca_pem.decode("ascii", "replace") if isinstance(ca_pem, bytes) else ca_pem
    actual = ClusterCA.from_pem(pem).cluster_id
    if actual != cluster_id:
        raise UsageError(f"the CA certificate is of cluster {actual}, not {cluster_id}")
    cred = StoredCredential(cluster_id, pem, token, user, tuple(addresses))
    doc = {
        "cluster": cred.cluster,
        "token": cred.token,
        "ca": cred.ca_pem,
        "user": cred.user,
        "addresses": list(cred.addresses),
    }
    private_dir(directory())
    write_atomic(_path(cluster_id), (json.dumps(doc, indent=2) + "\n").encode(), 0o600)
    return cred


def load(cluster_id: str) -> StoredCredential | None:
    """The stored credential of one cluster, or None (none stored, or unusable)."""
    if not isinstance(cluster_id, str) or not _CLUSTER_ID.fullmatch(cluster_id):
        return None
    try:
        doc = json.loads(_path(cluster_id).read_text())
    except (OSError, ValueError):
        return None
    return _parse(cluster_id, doc)


def _parse(cluster_id: str, doc: object) -> StoredCredential | None:
    if not isinstance(doc, dict) or doc.get("cluster") != cluster_id:
        return None
    ca, token, user, addrs = doc.get("ca"), doc.get("token"), doc.get("user"), doc.get("addresses")
    if not isinstance(ca, str):
        return None
    if not (token is None or isinstance(token, str)) or not (user is None or isinstance(user, str)):
        return None
    if addrs is None:
        addrs = []
    if not isinstance(addrs, list) or any(not isinstance(a, str) for a in addrs):
        return None
    try:
        if ClusterCA.from_pem(ca).cluster_id != cluster_id:
            return None
    except UsageError:
        return None
    return StoredCredential(cluster_id, ca, token, user, tuple(addrs))


def remove(cluster_id: str) -> bool:
    """Forget one cluster; False if nothing was stored for it."""
    if not isinstance(cluster_id, str) or not _CLUSTER_ID.fullmatch(cluster_id):
        return False
    try:
        _path(cluster_id).unlink()
    except FileNotFoundError:
        return False
    return True


def all() -> list[StoredCredential]:
    """Every usable stored credential, by cluster id.

    (Shadows the builtin inside this module: nothing here uses the builtin.)
    """
    try:
        names = sorted(p.stem for p in directory().glob("*.json"))
    except OSError:
        return []
    return [c for c in map(load, names) if c is not None]
