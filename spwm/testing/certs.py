# -*- test-case-name: tests.test_tunnel_tls -*-
"""
Test certificates, made at test time (never committed): a CA and server or
client certificates signed by it, valid, expired or for another name.
"""

from __future__ import annotations

import datetime
import ipaddress
import os

from attrs import frozen
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@frozen
class CertFiles:
    """
    PEM files of one certificate.

    @ivar cert: path of the certificate.
    @ivar key: path of its private key.
    """

    cert: str
    key: str


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


class TestCA:
    """
    A certificate authority for tests, writing its files under C{directory}.

    @ivar ca_file: path of the CA certificate (what an agent trusts with C{--ca}).
    """

    def __init__(self, directory: str, name: str = "SPWM Test CA") -> None:
        os.makedirs(directory, exist_ok=True)
        self.directory = directory
        self._key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        self._cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=365))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self._key, hashes.SHA256())
        )
        self.ca_file = os.path.join(directory, "ca.pem")
        with open(self.ca_file, "wb") as f:
            f.write(self._cert.public_bytes(serialization.Encoding.PEM))

    def issue(
        self, names: list[str], filename: str, *, expired: bool = False, client: bool = False, days: float = 90
    ) -> CertFiles:
        """
        Issue a certificate for C{names} (DNS names or IP addresses).

        @param expired: make one whose validity ended yesterday.
        @param days: how long from now it is valid (an ACME client's 90
            days by default: a contact point warns 14 days before the end).
        @param client: for TLS client authentication instead of a server.
        """
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.timezone.utc)
        if expired:
            start, end = now - datetime.timedelta(days=10), now - datetime.timedelta(days=1)
        else:
            start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=days)
        alt: list[x509.GeneralName] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(names[0]))
            .issuer_name(self._cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .sign(self._key, hashes.SHA256())
        )
        cert_path = os.path.join(self.directory, filename + ".pem")
        key_path = os.path.join(self.directory, filename + ".key")
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
        with open(key_path, "wb") as f:
            f.write(_key_pem(key))
        return CertFiles(cert_path, key_path)


def self_signed(directory: str, names: list[str], filename: str = "self") -> CertFiles:
    """
    A certificate signed by its own throw-away CA (so untrusted by any other).
    """
    return TestCA(os.path.join(directory, filename + "-ca"), "Untrusted CA").issue(names, filename)
