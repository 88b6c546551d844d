"""A throwaway certificate authority for TLS tests: a CA, a server certificate for loopback
and a client certificate, written as PEM files."""

from __future__ import annotations

import datetime
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALIDITY = datetime.timedelta(days=2)


@dataclass(frozen=True, slots=True)
class CertificateFiles:
    """One certificate and its unencrypted PKCS#8 key; ``bundle`` holds both (for Kafka's
    PEM key store)."""

    cert: Path
    key: Path
    bundle: Path


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path
    server: CertificateFiles
    client: CertificateFiles


def make_pki(
    directory: Path,
    name: str = "dualstream-test",
    server_names: Sequence[str] = ("localhost", "127.0.0.1"),
) -> Pki:
    """A CA, a server certificate for ``server_names`` (host names or IP addresses) and a
    client certificate, all signed by the CA, in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} CA")])
    now = datetime.datetime.now(datetime.UTC)
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path = directory / "ca.pem"
    ca_path.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(stem: str, usage: x509.ObjectIdentifier, server: bool) -> CertificateFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name} {stem}")])
        builder = _builder(subject, ca_name, key.public_key(), now).add_extension(
            x509.ExtendedKeyUsage([usage]), critical=False
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_general_name(each) for each in server_names]),
                critical=False,
            )
        cert = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        files = CertificateFiles(
            directory / f"{stem}.pem", directory / f"{stem}-key.pem", directory / f"{stem}-all.pem"
        )
        files.cert.write_bytes(cert)
        files.key.write_bytes(key_pem)
        files.key.chmod(0o600)
        files.bundle.write_bytes(key_pem + cert)
        files.bundle.chmod(0o600)
        return files

    return Pki(
        ca=ca_path,
        server=issue("server", ExtendedKeyUsageOID.SERVER_AUTH, server=True),
        client=issue("client", ExtendedKeyUsageOID.CLIENT_AUTH, server=False),
    )


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )
