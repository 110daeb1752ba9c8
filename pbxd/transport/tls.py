"""TLS settings for SIP over TLS (RFC 3261 §26.2.1, RFC 5922), with pyOpenSSL.

As a server pbxd presents a certificate and key read from files and may require
clients to present a certificate signed by a given CA. As a client it checks
the server's certificate against a trust root and its name against the host it
meant to reach (service-identity, through ``optionsForClientTLS``).

Certificates and keys are loaded with ``cryptography`` and handed to
pyOpenSSL as such (its own X509/PKey objects are deprecated there).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import Certificate, CertificateOptions, TLSVersion, optionsForClientTLS, trustRootFromCertificates

if TYPE_CHECKING:
    from twisted.internet._sslverify import IOpenSSLTrustRoot

MINIMUM_TLS_VERSION = TLSVersion.TLSv1_2


class TlsConfigError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the file."""


@attrs.frozen
class Credentials:
    """A certificate with its private key, and the chain certificates to send after it."""

    certificate: x509.Certificate
    private_key: Any  # a cryptography private key
    chain: tuple[x509.Certificate, ...] = ()

    @classmethod
    def from_files(cls, cert_file: str | Path, key_file: str | Path) -> Credentials:
        """``cert_file``: the leaf first, then any intermediates (PEM); ``key_file``: its key."""
        certificates = load_certificates(cert_file)
        try:
            key = serialization.load_pem_private_key(_read(key_file), password=None)
        except (ValueError, TypeError) as error:
            raise TlsConfigError(f"{key_file}: bad private key: {error}") from None
        if _public_bytes(key.public_key()) != _public_bytes(certificates[0].public_key()):
            raise TlsConfigError(f"{key_file}: the key does not match the certificate in {cert_file}")
        return cls(certificates[0], key, tuple(certificates[1:]))

    def options(self) -> dict[str, Any]:
        """Keyword arguments for CertificateOptions."""
        return {"privateKey": self.private_key, "certificate": self.certificate, "extraCertChain": list(self.chain)}


def load_certificates(path: str | Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file, in order (a leaf and its chain, or CAs)."""
    data = _read(path)
    if b"-----BEGIN CERTIFICATE-----" not in data:
        raise TlsConfigError(f"{path}: no PEM certificate found")
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError as error:
        raise TlsConfigError(f"{path}: bad certificate: {error}") from None


def trust_root_from_file(ca_file: str | Path) -> IOpenSSLTrustRoot:
    """Trust exactly the CA certificates in a PEM file."""
    return trustRootFromCertificates([Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)) for c in load_certificates(ca_file)])


def server_tls_options(
    cert_file: str | Path, key_file: str | Path, client_ca_file: str | Path | None = None
) -> CertificateOptions:
    """A server context: our certificate (and chain) and key; with ``client_ca_file``,
    clients must present a certificate signed by one of those CAs.

    The OpenSSL context is built here, so an unusable file fails at start-up
    rather than at the first connection.
    """
    options = CertificateOptions(
        **Credentials.from_files(cert_file, key_file).options(),
        trustRoot=trust_root_from_file(client_ca_file) if client_ca_file else None,
        raiseMinimumTo=MINIMUM_TLS_VERSION,
    )
    try:
        options.getContext()
    except Exception as error:
        raise TlsConfigError(f"{cert_file} / {key_file}: unusable: {error}") from None
    return options


@attrs.frozen
class TlsClientPolicy:
    """How pbxd checks servers it connects to, and what it presents itself.

    ``trust_root`` None means the platform's CA store. Connection creators are
    cached per server name, since each builds an OpenSSL context.
    """

    trust_root: IOpenSSLTrustRoot | None = None
    client_credentials: Credentials | None = None
    _creators: dict[str, IOpenSSLClientConnectionCreator] = attrs.field(
        factory=dict, init=False, eq=False, repr=False
    )

    @classmethod
    def from_files(
        cls,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
    ) -> TlsClientPolicy:
        if (cert_file is None) != (key_file is None):
            raise TlsConfigError("a client certificate needs both a certificate and a key file")
        credentials = Credentials.from_files(cert_file, key_file) if cert_file and key_file else None
        return cls(trust_root=trust_root_from_file(ca_file) if ca_file else None, client_credentials=credentials)

    def creator_for(self, server_name: str) -> IOpenSSLClientConnectionCreator:
        """A connection creator that verifies the certificate and that it names ``server_name``
        (a DNS name or an IP address)."""
        creator = self._creators.get(server_name)
        if creator is None:
            extra: dict[str, Any] = {"raiseMinimumTo": MINIMUM_TLS_VERSION}
            if self.client_credentials is not None:
                extra.update(self.client_credentials.options())
            creator = optionsForClientTLS(server_name, trustRoot=self.trust_root, extraCertificateOptions=extra)
            self._creators[server_name] = creator
        return creator


def _public_bytes(public_key: Any) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _read(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise TlsConfigError(f"{path}: {error.strerror}") from None
