"""Cluster CA, node certificates, and real TLS handshakes between the contexts."""

from __future__ import annotations

import socket
import ssl
import stat
import threading
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from sector.errors import CertificateError, TransportError, UsageError
from sector.security.pki import (
    ClusterCA,
    NodeIdentity,
    cluster_id_of_leaf,
    node_client_context,
    peer_is_node,
    server_context,
    user_client_context,
)

# Every certificate here is issued at NOW (backdated 5 minutes) and checked at NOW: one
# issued at the real time would not yet be valid at NOW once the suite has run for
# more than 5 minutes (it failed so under a long parallel run).
NOW = time.time()
DAY = 86400.0


def der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def ca() -> ClusterCA:
    return ClusterCA.create("test", now=NOW)


@pytest.fixture(scope="module")
def other_ca() -> ClusterCA:
    return ClusterCA.create("test", now=NOW)


@pytest.fixture(scope="module")
def n1(ca: ClusterCA) -> NodeIdentity:
    return ca.issue_node("n1", now=NOW)


# --- the CA -------------------------------------------------------------------------


def test_ca_certificate_shape(ca: ClusterCA) -> None:
    cert = ca.cert
    bc = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert bc.ca and bc.path_length == 0
    ku = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.key_cert_sign and ku.crl_sign and ku.digital_signature
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == f"sector-ca-{ca.cluster_id}"
    org = cert.subject.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)[0].value
    assert org == "sector"
    assert cert.not_valid_before_utc.timestamp() < NOW  # backdated for clock skew
    assert cert.not_valid_after_utc.timestamp() > NOW + 9 * 365 * DAY


def test_cluster_id_derives_from_the_key_not_the_name(ca: ClusterCA, other_ca: ClusterCA) -> None:
    assert len(ca.cluster_id) == 16 and int(ca.cluster_id, 16) >= 0
    assert ca.cluster_id != other_ca.cluster_id  # same name, different keys
    assert ClusterCA.from_pem(ca.cert_pem).cluster_id == ca.cluster_id
    assert ca.public().cluster_id == ca.cluster_id


def test_save_load_roundtrip(ca: ClusterCA, tmp_path: Path) -> None:
    ca.save(tmp_path / "ca")
    key_file = tmp_path / "ca" / "ca.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    loaded = ClusterCA.load(tmp_path / "ca")
    assert loaded.cert == ca.cert and loaded.key is not None
    assert loaded.cluster_id == ca.cluster_id
    assert not list((tmp_path / "ca").glob(".*tmp"))  # no temporary left behind
    # Without the key: only the public CA.
    key_file.unlink()
    public = ClusterCA.load(tmp_path / "ca")
    assert public.key is None and public.cluster_id == ca.cluster_id
    with pytest.raises(UsageError, match="no private key"):
        public.issue_node("n9")


def test_public_ca_saves_no_key(ca: ClusterCA, tmp_path: Path) -> None:
    ca.public().save(tmp_path)
    assert (tmp_path / "ca.crt").exists() and not (tmp_path / "ca.key").exists()


def test_load_errors_are_one_line_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(
        UsageError, match=r"no cluster CA in .* \(create one with `sector cluster init`\)"
    ):
        ClusterCA.load(tmp_path)
    (tmp_path / "ca.crt").write_text("garbage")
    with pytest.raises(UsageError, match=r"corrupt certificate in .*ca\.crt"):
        ClusterCA.load(tmp_path)
    with pytest.raises(UsageError, match="corrupt certificate"):
        ClusterCA.from_pem(b"not a pem")


def test_mismatched_key_refused(ca: ClusterCA, other_ca: ClusterCA, tmp_path: Path) -> None:
    ca.save(tmp_path)
    other_ca.save(tmp_path / "o")
    (tmp_path / "ca.key").write_bytes((tmp_path / "o" / "ca.key").read_bytes())
    with pytest.raises(UsageError, match="does not match"):
        ClusterCA.load(tmp_path)


def test_a_node_certificate_is_not_a_ca(n1: NodeIdentity) -> None:
    with pytest.raises(UsageError, match="not a CA"):
        ClusterCA.from_pem(n1.cert.public_bytes(serialization.Encoding.PEM))


# --- node certificates --------------------------------------------------------------


def test_node_certificate_shape(ca: ClusterCA, n1: NodeIdentity) -> None:
    cert = n1.cert
    assert n1.name == "n1" and n1.cluster_id == ca.cluster_id
    cn = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    assert cn == "node:n1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert [str(i) for i in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {
        x509.ExtendedKeyUsageOID.SERVER_AUTH,
        x509.ExtendedKeyUsageOID.CLIENT_AUTH,
    }
    assert not cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_issue_node_validates_input(ca: ClusterCA) -> None:
    with pytest.raises(UsageError, match="invalid node name"):
        ca.issue_node("")
    with pytest.raises(UsageError, match="invalid node name"):
        ca.issue_node("x" * 60)
    with pytest.raises(UsageError, match="invalid IP address"):
        ca.issue_node("n2", ips=["300.1.1.1"])
    n = ca.issue_node("n2", ips=["10.0.0.2", "::1"], dns=[], now=NOW)
    san = n.cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert len(san.get_values_for_type(x509.IPAddress)) == 2


def test_verify_leaf(ca: ClusterCA, other_ca: ClusterCA, n1: NodeIdentity) -> None:
    assert ca.verify_leaf(der(n1.cert), NOW) == "node:n1"
    assert ca.public().verify_leaf(der(n1.cert), NOW) == "node:n1"
    with pytest.raises(CertificateError, match=f"not issued by cluster {other_ca.cluster_id}"):
        other_ca.verify_leaf(der(n1.cert), NOW)
    with pytest.raises(CertificateError, match="not a valid certificate"):
        ca.verify_leaf(b"\x30\x03junk", NOW)
    # The CA's own certificate is self-signed, so it "is issued by" the CA: still refused.
    with pytest.raises(CertificateError, match="not a leaf"):
        ca.verify_leaf(der(ca.cert), NOW)
    assert issubclass(CertificateError, TransportError)


def test_expired_and_not_yet_valid_leaves_refused(ca: ClusterCA) -> None:
    old = ca.issue_node("old", days=1, now=NOW - 10 * DAY)
    with pytest.raises(CertificateError, match="node:old expired at"):
        ca.verify_leaf(der(old.cert), NOW)
    assert ca.verify_leaf(der(old.cert), NOW - 10 * DAY + 60) == "node:old"
    n = ca.issue_node("n3", days=1, now=NOW)
    with pytest.raises(CertificateError, match="expired"):
        ca.verify_leaf(der(n.cert), NOW + 2 * DAY)
    with pytest.raises(CertificateError, match="not valid before"):
        ca.verify_leaf(der(n.cert), NOW - DAY)


def test_cluster_id_of_leaf(ca: ClusterCA, n1: NodeIdentity) -> None:
    assert cluster_id_of_leaf(der(n1.cert)) == ca.cluster_id
    assert cluster_id_of_leaf(b"junk") is None
    assert cluster_id_of_leaf(b"") is None


def test_peer_is_node(ca: ClusterCA, other_ca: ClusterCA, n1: NodeIdentity) -> None:
    assert peer_is_node(der(n1.cert), ca, NOW)
    assert not peer_is_node(None, ca, NOW)
    assert not peer_is_node(der(n1.cert), other_ca, NOW)
    assert not peer_is_node(der(ca.cert), ca, NOW)


def test_node_identity_save_load(n1: NodeIdentity, tmp_path: Path) -> None:
    n1.save(tmp_path / "tls")
    assert stat.S_IMODE((tmp_path / "tls" / "node.key").stat().st_mode) == 0o600
    loaded = NodeIdentity.load(tmp_path / "tls")
    assert loaded.cert == n1.cert and loaded.ca == n1.ca and loaded.name == "n1"
    with pytest.raises(UsageError, match="no node certificate in"):
        NodeIdentity.load(tmp_path / "missing")


# --- TLS ----------------------------------------------------------------------------


def _handshake(
    server_ctx: ssl.SSLContext, client_ctx: ssl.SSLContext
) -> tuple[ssl.SSLObject, ssl.SSLObject, BaseException | None, BaseException | None]:
    """Join a server and a client through memory BIOs and run the handshake to its end.

    Then exchange one byte each way, so that a refusal the server decides after the
    client's last handshake flight (TLS 1.3 client certificates) shows up too.
    """
    s_in, s_out, c_in, c_out = (ssl.MemoryBIO() for _ in range(4))
    srv = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    cli = client_ctx.wrap_bio(c_in, c_out, server_side=False)
    errs: dict[str, BaseException | None] = {"s": None, "c": None}
    done = {"s": False, "c": False}
    for _ in range(20):
        for side, obj in (("c", cli), ("s", srv)):
            if done[side] or errs[side]:
                continue
            try:
                obj.do_handshake()
                done[side] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as e:
                errs[side] = e
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done[k] or errs[k] for k in done):
            break
    if done["c"] and done["s"]:
        cli.write(b"x")
        s_in.write(c_out.read())
        try:
            assert srv.read(1) == b"x"
        except ssl.SSLError as e:
            errs["s"] = e
    elif done["c"] and errs["s"]:
        c_in.write(s_out.read())
        try:
            cli.read(1)
        except ssl.SSLError as e:
            errs["c"] = e
    return srv, cli, errs["s"], errs["c"]


def test_node_to_node_handshake(ca: ClusterCA, n1: NodeIdentity, tmp_path: Path) -> None:
    n1.save(tmp_path / "n1")
    n2 = ca.issue_node("n2", now=NOW)
    n2.save(tmp_path / "n2")
    srv, cli, serr, cerr = _handshake(
        server_context(tmp_path / "n1"), node_client_context(tmp_path / "n2")
    )
    assert serr is None and cerr is None
    assert ca.verify_leaf(srv.getpeercert(binary_form=True) or b"", NOW) == "node:n2"
    assert ca.verify_leaf(cli.getpeercert(binary_form=True) or b"", NOW) == "node:n1"
    assert cli.version() in ("TLSv1.2", "TLSv1.3")


def test_contexts_from_identity_objects(n1: NodeIdentity) -> None:
    ctx = server_context(n1)
    assert ctx.verify_mode == ssl.CERT_OPTIONAL and not ctx.check_hostname
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    cctx = node_client_context(n1)
    assert cctx.verify_mode == ssl.CERT_REQUIRED and not cctx.check_hostname
    uctx = user_client_context()
    assert uctx.verify_mode == ssl.CERT_NONE and not uctx.check_hostname


def test_missing_tls_dir_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no node certificate"):
        server_context(tmp_path)
    with pytest.raises(UsageError, match="no node certificate"):
        node_client_context(tmp_path)


def test_server_refuses_a_client_cert_of_another_cluster(
    n1: NodeIdentity, other_ca: ClusterCA, tmp_path: Path
) -> None:
    # A stranger that accepts any server (so the refusal is the server's own) and
    # presents a node certificate signed by another CA.
    other_ca.issue_node("n1", now=NOW).save(tmp_path)
    client = user_client_context()
    client.load_cert_chain(tmp_path / "node.crt", tmp_path / "node.key")
    _, _, serr, cerr = _handshake(server_context(n1), client)
    assert isinstance(serr, ssl.SSLCertVerificationError)
    assert isinstance(cerr, ssl.SSLError)  # told by an alert


def test_node_client_refuses_a_server_of_another_cluster(
    n1: NodeIdentity, other_ca: ClusterCA
) -> None:
    stranger = other_ca.issue_node("n9", now=NOW)
    _, _, _, cerr = _handshake(server_context(stranger), node_client_context(n1))
    assert isinstance(cerr, ssl.SSLCertVerificationError)


def test_user_client_then_verifies_the_leaf_itself(
    ca: ClusterCA, other_ca: ClusterCA, n1: NodeIdentity
) -> None:
    srv, cli, serr, cerr = _handshake(server_context(n1), user_client_context())
    assert serr is None and cerr is None
    assert srv.getpeercert(binary_form=True) is None  # an anonymous / user client
    leaf = cli.getpeercert(binary_form=True)
    assert leaf is not None
    assert cluster_id_of_leaf(leaf) == ca.cluster_id
    assert ca.public().verify_leaf(leaf, NOW) == "node:n1"
    with pytest.raises(CertificateError):
        other_ca.verify_leaf(leaf, NOW)


def test_handshake_over_a_real_socket_pair(ca: ClusterCA, n1: NodeIdentity) -> None:
    n2 = ca.issue_node("n2", now=NOW)
    a, b = socket.socketpair()
    a.settimeout(5)
    b.settimeout(5)
    seen: list[bytes | None] = []

    def serve() -> None:
        with server_context(n1).wrap_socket(a, server_side=True) as s:
            seen.append(s.getpeercert(binary_form=True))
            s.sendall(s.recv(5).upper())

    t = threading.Thread(target=serve)
    t.start()
    try:
        with node_client_context(n2).wrap_socket(b) as c:
            c.sendall(b"hello")
            assert c.recv(5) == b"HELLO"
    finally:
        t.join(5)
    assert peer_is_node(seen[0], ca, NOW)
