"""The cluster CA, node certificates, and the TLS contexts built from them.

Membership without a membership server: the cluster *is* its CA key pair. Whoever
holds the CA private key (the admin) signs one X.509 certificate per node; a node
proves membership by presenting a certificate signed directly by the CA, and every
node checks that locally against the CA certificate it was installed with.

Choices, and what was rejected:

* **ECDSA P-256 / SHA-256**: small keys and signatures, fast to generate in tests,
  supported by every TLS stack. RSA would work but costs ~100 ms per key.
* **The cluster id is derived from the CA public key** (first 16 hex chars of
  SHA-256 over its DER SubjectPublicKeyInfo), not from a name an admin typed: two
  clusters called "sector" stay distinct, and a forged CA with the same subject has
  a different id. The id also sits in the CA's CN (``sector-ca-<id>``), so a client
  can read, from a leaf's *issuer* name, which stored CA to check it against
  (``cluster_id_of_leaf``) - a hint only; the signature check decides.
* **One level, no intermediates** (``path_length=0``, ``verify_directly_issued_by``):
  nothing to configure, and a chain of one is the easiest to audit.
* **No hostname checks** (``check_hostname=False`` everywhere): a node's identity is
  the CA's signature on its certificate, while its addresses change with DHCP,
  containers and port 0. The SAN still lists the addresses it was issued for, for
  humans and for other tools.
* **Contexts load from a directory** (``node.crt``, ``node.key``, ``ca.crt``): the
  ``ssl`` module only loads keys from files, and the node keeps them on disk anyway.
  A ``NodeIdentity`` held in memory (tests, in-process clusters) is written to a
  private temporary directory for the duration of the load.

Everything here is synchronous and pure apart from reading and writing those files;
time comes in as ``now`` (unix seconds) where it matters.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from sector.errors import CertificateError, UsageError
from sector.security import _x509
from sector.security._files import write_atomic

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
NODE_CERT = "node.crt"
NODE_KEY = "node.key"

CA_DAYS = 3650
NODE_DAYS = 825  # the longest leaf lifetime browsers ever accepted; renew by re-issuing

NODE_PREFIX = "node:"
_CA_CN = re.compile(r"sector-ca-([0-9a-f]{16})")
# X.509 caps a CN at 64 characters; "node:" takes 5 of them.
_NODE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,58}")


@dataclass(frozen=True, slots=True)
class ClusterCA:
    """The cluster's certificate authority; ``key`` is None where only the public half is known."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey | None = None

    @classmethod
    def create(cls, name: str = "sector", *, now: float | None = None) -> ClusterCA:
        """A new cluster: a fresh key pair and its self-signed CA certificate.

        ``name`` is a human label (stored as the OU); the identity is the key.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        pub = key.public_key()
        subject = _x509.name(f"sector-ca-{_x509.key_id(pub)}", name[:64] or "sector")
        cert = (
            _x509.builder(subject, subject, pub, now, CA_DAYS)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_x509.CA_USAGE, critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(cert, key)

    @classmethod
    def from_pem(cls, cert_pem: bytes | str) -> ClusterCA:
        """The public CA from its PEM certificate (as stored by ``sector login``)."""
        data = cert_pem.encode() if isinstance(cert_pem, str) else cert_pem
        try:
            cert = x509.load_pem_x509_certificate(data)
        except ValueError:
            raise UsageError("corrupt certificate: not a PEM X.509 certificate") from None
        return cls._checked(cert, None, "certificate")

    @classmethod
    def load(cls, dir: Path) -> ClusterCA:
        """The CA saved in ``dir``, with its private key if ``ca.key`` is there."""
        dir = Path(dir)
        cert = _x509.read_cert(
            dir / CA_CERT, f"no cluster CA in {dir} (create one with `sector cluster init`)"
        )
        key_path = dir / CA_KEY
        key = _x509.read_key(key_path, f"no {key_path}") if key_path.exists() else None
        return cls._checked(cert, key, str(dir / CA_CERT))

    @classmethod
    def _checked(
        cls, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey | None, where: str
    ) -> ClusterCA:
        if _x509.p256_public(cert) is None:
            raise UsageError(f"{where} is not a sector cluster CA (not an ECDSA P-256 key)")
        try:
            bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
        except x509.ExtensionNotFound:
            bc = None
        if bc is None or not bc.ca:
            raise UsageError(f"{where} is not a CA certificate")
        if key is not None and not _x509.same_key(key, cert):
            raise UsageError(f"the private key next to {where} does not match it")
        return cls(cert, key)

    @property
    def cluster_id(self) -> str:
        """16 hex chars derived from the CA public key (never from a name)."""
        pub = _x509.p256_public(self.cert)
        assert pub is not None  # checked on construction by create/load/from_pem
        return _x509.key_id(pub)

    @property
    def cert_pem(self) -> bytes:
        return _x509.cert_pem(self.cert)

    def save(self, dir: Path) -> None:
        """Write ``ca.crt`` and, if this CA has its key, ``ca.key`` (mode 0600)."""
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        write_atomic(dir / CA_CERT, _x509.cert_pem(self.cert), 0o644)
        if self.key is not None:
            write_atomic(dir / CA_KEY, _x509.key_pem(self.key), 0o600)

    def public(self) -> ClusterCA:
        """The same CA without its private key (what is given to nodes and users)."""
        return ClusterCA(self.cert, None)

    def issue_node(
        self,
        name: str,
        ips: Sequence[str] = ("127.0.0.1",),
        dns: Sequence[str] = ("localhost",),
        days: int = NODE_DAYS,
        *,
        now: float | None = None,
    ) -> NodeIdentity:
        """A new key pair and certificate for node ``name``, signed by this CA."""
        if self.key is None:
            raise UsageError("this CA has no private key (only the cluster admin can add nodes)")
        if not isinstance(name, str) or not _NODE_NAME.fullmatch(name):
            raise UsageError(
                f"invalid node name {name!r:.80}: use 1-59 letters, digits and _ . : @ -"
            )
        if days <= 0:
            raise UsageError(f"invalid certificate lifetime: {days} days")
        sans: list[x509.GeneralName] = []
        for ip in ips:
            try:
                sans.append(x509.IPAddress(ipaddress.ip_address(ip)))
            except ValueError:
                raise UsageError(f"invalid IP address {ip!r:.80}") from None
        for host in dns:
            try:
                sans.append(x509.DNSName(host))
            except (ValueError, TypeError):
                raise UsageError(f"invalid DNS name {host!r:.80}") from None
        key = ec.generate_private_key(ec.SECP256R1())
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(self.key.public_key())
        builder = (
            _x509.builder(
                _x509.name(NODE_PREFIX + name), self.cert.subject, key.public_key(), now, days
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_x509.NODE_USAGE, critical=True)
            .add_extension(_x509.NODE_EKU, critical=False)
            .add_extension(aki, critical=False)
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        cert = builder.sign(self.key, hashes.SHA256())
        return NodeIdentity(cert, key, self.cert)

    def verify_leaf(self, leaf_der: bytes, now: float) -> str:
        """The CN of a peer's certificate if this CA issued it and it is valid at ``now``.

        Raises CertificateError otherwise: the peer has not proved it belongs here.
        """
        try:
            leaf = x509.load_der_x509_certificate(leaf_der)
        except (ValueError, TypeError):
            raise CertificateError("peer certificate refused: not a valid certificate") from None
        cn = _x509.cn(leaf.subject) or "(no CN)"
        try:
            leaf.verify_directly_issued_by(self.cert)
        except (ValueError, TypeError, InvalidSignature):
            raise CertificateError(
                f"peer certificate refused: {cn} was not issued by cluster {self.cluster_id}",
                cluster=self.cluster_id,
                peer=cn,
            ) from None
        try:
            bc = leaf.extensions.get_extension_for_class(x509.BasicConstraints).value
            is_ca = bc.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if is_ca or cn == "(no CN)":
            # The CA's own self-signed certificate passes the check above; a peer
            # presenting it is not a node.
            raise CertificateError(f"peer certificate refused: {cn} is not a leaf certificate")
        when = _x509.utc(now)
        if when < leaf.not_valid_before_utc:
            raise CertificateError(
                f"peer certificate refused: {cn} is not valid before "
                f"{leaf.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
                peer=cn,
            )
        if when > leaf.not_valid_after_utc:
            raise CertificateError(
                f"peer certificate refused: {cn} expired at "
                f"{leaf.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
                peer=cn,
            )
        return cn


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """A node's key, its certificate, and the CA that signed it: what it needs for TLS."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey
    ca: x509.Certificate

    @property
    def name(self) -> str:
        cn = _x509.cn(self.cert.subject) or ""
        return cn.removeprefix(NODE_PREFIX)

    @property
    def cluster_id(self) -> str:
        return ClusterCA(self.ca).cluster_id

    def save(self, dir: Path) -> None:
        """Write ``node.crt``, ``node.key`` (mode 0600) and ``ca.crt`` into ``dir``."""
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        write_atomic(dir / NODE_KEY, _x509.key_pem(self.key), 0o600)
        write_atomic(dir / NODE_CERT, _x509.cert_pem(self.cert), 0o644)
        write_atomic(dir / CA_CERT, _x509.cert_pem(self.ca), 0o644)

    @classmethod
    def load(cls, dir: Path) -> NodeIdentity:
        dir = Path(dir)
        missing = f"no node certificate in {dir} (the cluster admin issues one)"
        cert = _x509.read_cert(dir / NODE_CERT, missing)
        key = _x509.read_key(dir / NODE_KEY, missing)
        ca = _x509.read_cert(dir / CA_CERT, f"no cluster CA certificate in {dir}")
        if not _x509.same_key(key, cert):
            raise UsageError(f"{dir / NODE_KEY} does not match {dir / NODE_CERT}")
        return cls(cert, key, ca)


def cluster_id_of_leaf(leaf_der: bytes) -> str | None:
    """The cluster id named by a leaf's issuer (``sector-ca-<id>``), or None.

    A hint for choosing which stored CA to verify against: anyone can write any
    issuer name, so the answer means nothing until ``verify_leaf`` has passed.
    """
    try:
        cn = _x509.cn(x509.load_der_x509_certificate(leaf_der).issuer)
    except (ValueError, TypeError):
        return None
    m = _CA_CN.fullmatch(cn or "")
    return m.group(1) if m else None


def peer_is_node(peercert_der: bytes | None, ca: ClusterCA, now: float) -> bool:
    """True iff the peer presented a certificate of this cluster naming a node."""
    if not peercert_der:
        return False
    try:
        cn = ca.verify_leaf(peercert_der, now)
    except CertificateError:
        return False
    return cn.startswith(NODE_PREFIX)


# --- TLS contexts ---------------------------------------------------------------------
#
# The server asks for a client certificate but does not insist (CERT_OPTIONAL): nodes
# present theirs, users and anonymous readers present none and prove who they are
# with a signed credential inside the protocol instead. The CA is the only trust
# anchor, so a certificate from any other CA fails the handshake. A user client does
# not verify during the handshake at all: it learns which cluster it reached only from
# the certificate, then checks the leaf itself with ``verify_leaf`` against the CA it
# stored for that cluster.


def _base(protocol: int) -> ssl.SSLContext:
    ctx = ssl.SSLContext(protocol)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = False
    return ctx


def _load_identity(ctx: ssl.SSLContext, tls: Path | NodeIdentity) -> None:
    if isinstance(tls, NodeIdentity):
        # ssl only loads keys from files: a private directory that lives for the call.
        with tempfile.TemporaryDirectory(prefix="sector-tls-") as tmp:
            tls.save(Path(tmp))
            _load_identity(ctx, Path(tmp))
        return
    d = Path(tls)
    for f in (NODE_CERT, NODE_KEY, CA_CERT):
        if not (d / f).exists():
            raise UsageError(
                f"no node certificate in {d} (missing {f}; the cluster admin issues one)"
            )
    try:
        ctx.load_cert_chain(d / NODE_CERT, d / NODE_KEY)
        ctx.load_verify_locations(cafile=d / CA_CERT)
    except (ssl.SSLError, OSError) as e:
        raise UsageError(f"cannot load the node certificate in {d}: {e}", path=str(d)) from None


def server_context(tls: Path | NodeIdentity) -> ssl.SSLContext:
    """A node's server side: presents the node certificate, accepts optional client certs."""
    ctx = _base(ssl.PROTOCOL_TLS_SERVER)
    _load_identity(ctx, tls)
    ctx.verify_mode = ssl.CERT_OPTIONAL
    return ctx


def node_client_context(tls: Path | NodeIdentity) -> ssl.SSLContext:
    """A node calling another node: both sides must show a certificate of this cluster."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)
    _load_identity(ctx, tls)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def user_client_context() -> ssl.SSLContext:
    """A user's client: no certificate, no verification during the handshake (see above)."""
    ctx = _base(ssl.PROTOCOL_TLS_CLIENT)
    ctx.verify_mode = ssl.CERT_NONE
    return ctx
