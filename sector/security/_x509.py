"""X.509 plumbing for ``pki``: names, builders, key checks, PEM files.

Private: nothing here decides anything about membership; ``pki`` does.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from sector.errors import UsageError

# not_before is set this far in the past so a peer whose clock lags a little does
# not refuse a certificate issued a moment ago.
BACKDATE = dt.timedelta(minutes=5)


def utc(now: float | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    return dt.datetime.fromtimestamp(now, dt.UTC)


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    spki = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()[:16]


def name(cn: str, ou: str | None = None) -> x509.Name:
    attrs = [
        x509.NameAttribute(NameOID.COMMON_NAME, cn),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "sector"),
    ]
    if ou:
        attrs.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, ou))
    return x509.Name(attrs)


def builder(
    subject: x509.Name,
    issuer: x509.Name,
    pub: ec.EllipticCurvePublicKey,
    now: float | None,
    days: int,
) -> x509.CertificateBuilder:
    start = utc(now)
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(pub)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - BACKDATE)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
    )


# KeyUsage's fields, in order: digital_signature, content_commitment, key_encipherment,
# data_encipherment, key_agreement, key_cert_sign, crl_sign, encipher_only, decipher_only.
CA_USAGE = x509.KeyUsage(True, False, False, False, False, True, True, False, False)
# TLS with ECDHE needs only signatures from a node's key.
NODE_USAGE = x509.KeyUsage(True, False, False, False, False, False, False, False, False)
NODE_EKU = x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH])


def cn(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else None


def p256_public(cert: x509.Certificate) -> ec.EllipticCurvePublicKey | None:
    key = cert.public_key()
    if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1):
        return key
    return None


def same_key(key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> bool:
    fmt = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return key.public_key().public_bytes(*fmt) == cert.public_key().public_bytes(*fmt)


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def cert_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def read(path: Path, missing: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(missing, path=str(path)) from None
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}", path=str(path)) from None


def read_cert(path: Path, missing: str) -> x509.Certificate:
    data = read(path, missing)
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError:
        raise UsageError(f"corrupt certificate in {path}", path=str(path)) from None


def read_key(path: Path, missing: str) -> ec.EllipticCurvePrivateKey:
    data = read(path, missing)
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise UsageError(f"corrupt private key in {path}", path=str(path)) from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, ec.SECP256R1):
        raise UsageError(f"{path} is not an ECDSA P-256 key", path=str(path))
    return key
