"""The client's side of security: which node to trust, which credential to present.

A client dials TLS first (``tls="auto"``: a node of an open cluster closes on the TLS
hello and the client falls back to plain TCP, remembered per address). On a TLS
connection it reads the node's certificate, which names the cluster it belongs to; if
the client knows that cluster (``sector login`` or ``sector up`` stored its CA and a
credential under ``$SECTOR_HOME/credentials``), the certificate must verify against
that CA or the connection is refused, and the stored credential is presented with
``auth.hello``. A client that knows nothing of the cluster reads as anonymous over an
encrypted but unauthenticated link, which is all public data needs; it never sends a
credential to a node it cannot verify. Credentials never travel over plain TCP.

Order of credentials: an explicit ``token`` (``--token``/``SECTOR_TOKEN``), then the
stored one for the cluster; ``anonymous=True`` presents none.

A client that holds a credential for the address it dials (``--token``, a ``sector
login`` made through that address, or the local cluster ``sector up`` started) never
falls back to plain TCP, and the node must prove that it belongs to that credential's
cluster: anything else is refused with a clear error, never a silent anonymous or
plaintext session. Talking to another cluster there takes ``anonymous=True``.
"""

from __future__ import annotations

import asyncio
import os
import ssl
import time
from typing import Any

from sector.config import current_cluster_dir, read_cluster_file
from sector.errors import CertificateError, UsageError
from sector.security import credstore, pki, tokens
from sector.transport import rpc


def expected_cluster(address: str, token: str | None) -> str | None:
    """The cluster a client must find at ``address``: that of a stored credential
    logged in through that address, or of the local cluster that ``sector up`` started
    there (with a stored credential); "" for an explicit token (TLS only; a node of
    another cluster is never shown it, the client stays anonymous there); None if it
    holds no credential for the address."""
    if token:
        return ""
    stored = {c.cluster: c for c in credstore.all() if c.token}
    for c in stored.values():
        if address in c.addresses:
            return c.cluster
    d = current_cluster_dir()
    if d is not None:
        try:
            info = read_cluster_file(d)
        except UsageError:
            return None
        cid = info.get("cluster")
        raw = info.get("addresses")
        addrs = [str(a) for a in raw] if isinstance(raw, list) else []
        if info.get("secure") and isinstance(cid, str) and cid in stored and address in addrs:
            return cid
    return None


class ClientAuth:
    def __init__(
        self, *, token: str | None = None, anonymous: bool = False, address: str = ""
    ) -> None:
        self.token = token if token is not None else os.environ.get("SECTOR_TOKEN") or None
        self.anonymous = anonymous
        # The cluster this client holds a credential for at this address ("" for a
        # credential that names none): TLS only, and the node must be of it.
        self.expect = None if anonymous else expected_cluster(address, self.token)
        self.user: str | None = None  # who the cluster says we are, after a hello
        self.cluster: str | None = None
        self.secure = False  # True once a node answered over TLS
        self._cas: dict[str, pki.ClusterCA] = {}  # learnt this session (see _learn_ca)

    def presented_grant(self) -> tokens.Grant | None:
        """What the credential this client presented says (its rights, unchecked: the
        nodes check them); None if it presented none (anonymous, or an open cluster)."""
        if self.user is None or not self.cluster:
            return None
        stored = credstore.load(self.cluster)
        token = self.token or (stored.token if stored is not None else None)
        return tokens.peek(token) if token else None

    def context(self) -> ssl.SSLContext:
        return pki.user_client_context()

    async def on_open(
        self, addr: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        sslobj = writer.get_extra_info("ssl_object")
        if sslobj is None:
            return  # an open cluster: nothing to verify, and no credential goes in clear
        leaf = sslobj.getpeercert(binary_form=True)
        if not leaf:
            raise CertificateError(f"node {addr} presented no certificate")
        cid = pki.cluster_id_of_leaf(leaf)
        stored = credstore.load(cid) if cid else None
        ca = stored.ca if stored is not None else None
        if ca is not None:
            try:
                ca.verify_leaf(leaf, time.time())
            except CertificateError as exc:
                raise CertificateError(
                    f"node {addr} does not prove membership of cluster {cid}: {exc}"
                ) from None
        if self.expect and cid != self.expect:
            raise CertificateError(
                f"node {addr} is of cluster {cid}, not {self.expect or 'the one'} your "
                "credential is for (--anonymous to read it without your credential)"
            )
        self.secure, self.cluster = True, cid
        if self.anonymous:
            return
        token = self.token or (stored.token if stored else None)
        if not token or not cid or _token_cluster(token) != cid:
            return  # never hand a credential to a node of another (or an unknown) cluster
        if ca is None:
            ca = self._cas.get(cid) or await self._learn_ca(addr, cid, leaf, reader, writer)
        rep: Any = await rpc.hello(reader, writer, {"token": token})
        if isinstance(rep, dict) and isinstance(rep.get("user"), str):
            self.user = rep["user"]

    async def _learn_ca(
        self,
        addr: str,
        cid: str,
        leaf: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> pki.ClusterCA:
        """The cluster's CA, asked of the node, before a credential is shown to it.

        A cluster's id is a hash of its CA's public key, so the CA the node hands over
        must hash to the id the credential names, and the node's certificate must be
        signed by it: a stranger who copied the cluster id into a CA of its own fails
        here and never sees the credential.
        """
        rep: Any = await rpc.call_once(reader, writer, "sec.policy", {"have": 0})
        try:
            ca = pki.ClusterCA.from_pem(str(rep.get("ca", "")))
        except Exception:
            raise CertificateError(f"node {addr} gave no usable cluster CA") from None
        if ca.cluster_id != cid:
            raise CertificateError(f"node {addr} is not of cluster {cid}")
        try:
            ca.verify_leaf(leaf, time.time())
        except CertificateError as exc:
            raise CertificateError(
                f"node {addr} does not prove membership of {cid}: {exc}"
            ) from None
        self._cas[cid] = ca
        return ca


def _token_cluster(token: str) -> str | None:
    g = tokens.peek(token)
    return g.cluster if g is not None else None
