"""Make the TLS files of a Craton deployment: a CA, a server certificate, a NATS server
certificate and a client certificate (for mutual TLS), PEM, into one folder.

    python scripts/gen_certs.py [--out certs] [--san DNS_OR_IP ...] [--days 365] [--new-ca]

Files: ``ca.crt``/``ca.key`` (RSA 4096, 10 years), ``server.crt``/``server.key`` (RSA 2048,
``--days``; the SANs of the deployment guide — ``craton-server.craton.local``,
``localhost``, ``127.0.0.1`` — plus the names the Compose files and the Kubernetes
StatefulSet reach replicas by, plus every ``--san``), ``nats-server.crt``/``.key`` (``nats``,
``localhost``, ``127.0.0.1``) and ``client.crt``/``client.key`` (``CN=craton-client``,
client authentication). Keys are written with mode 0600.

Rotation: run it again on the same folder. An existing ``ca.crt``/``ca.key`` pair is kept
and re-used to sign the new leaf certificates, so clients that trust the CA keep working;
``--new-ca`` makes a new CA too (then every client must be given the new ``ca.crt``).

Uses ``cryptography`` (a dependency of Craton), so it needs nothing but the project's venv.
Exit status 0 when the files were written, 2 for bad usage or a folder it cannot use.
"""

from __future__ import annotations

import argparse
import datetime
import ipaddress
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CA_KEY_BITS = 4096
LEAF_KEY_BITS = 2048
CA_DAYS = 3650
LEAF_DAYS_DEFAULT = 365
CLOCK_SKEW = datetime.timedelta(minutes=5)  # valid a little before now: peers' clocks drift
CA_NAME = "Craton CA"
SERVER_NAME = "craton-server.craton.local"
CLIENT_NAME = "craton-client"
# The guide's SANs, then the names the repository's own deployments use: Compose services
# (craton-server; craton-0..2 in the cluster file) and the StatefulSet's headless service
# (craton-server-N.craton-server.craton.svc.cluster.local).
SERVER_SANS = (
    SERVER_NAME,
    "localhost",
    "127.0.0.1",
    "craton-server",
    "craton-0",
    "craton-1",
    "craton-2",
    "craton-server.craton.svc.cluster.local",
    "*.craton-server.craton.svc.cluster.local",
    "*.craton-server.craton.svc",
)
NATS_SANS = ("nats", "localhost", "127.0.0.1")
EXIT_OK = 0
EXIT_USAGE = 2


class Key:
    """A private key and where it is written."""

    def __init__(self, bits: int) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=bits)

    def pem(self) -> bytes:
        return self.private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def san_entry(text: str) -> x509.GeneralName:
    """``127.0.0.1`` or ``::1`` → an IP SAN; anything else → a DNS SAN."""
    try:
        return x509.IPAddress(ipaddress.ip_address(text))
    except ValueError:
        return x509.DNSName(text)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_ca(key: Key, now: datetime.datetime) -> x509.Certificate:
    public = key.private.public_key()
    return (
        x509.CertificateBuilder()
        .subject_name(_name(CA_NAME))
        .issuer_name(_name(CA_NAME))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
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
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key.private, hashes.SHA256())
    )


def make_leaf(
    ca: x509.Certificate,
    ca_key: rsa.RSAPrivateKey,
    key: Key,
    common_name: str,
    sans: Sequence[str],
    usages: Sequence[x509.ObjectIdentifier],
    days: int,
    now: datetime.datetime,
) -> x509.Certificate:
    """A certificate for ``key`` signed by the CA: server (SANs) or client (no SANs)."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name))
        .issuer_name(ca.subject)
        .public_key(key.private.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
    )
    if sans:
        unique = list(dict.fromkeys(sans))
        builder = builder.add_extension(
            x509.SubjectAlternativeName([san_entry(s) for s in unique]), critical=False
        )
    return builder.sign(ca_key, hashes.SHA256())


def _write(path: Path, data: bytes, *, secret: bool) -> None:
    """Write through a temporary file, so a reader never sees half a key."""
    temporary = path.with_name(path.name + ".tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(fd, "wb") as out:
        out.write(data)
    os.replace(temporary, path)


def _cert_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _load_ca(folder: Path) -> tuple[x509.Certificate, rsa.RSAPrivateKey] | None:
    cert_path, key_path = folder / "ca.crt", folder / "ca.key"
    if not (cert_path.is_file() and key_path.is_file()):
        return None
    certificate = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError(f"{key_path} is not an RSA private key")
    return certificate, key


def generate(folder: Path, extra_sans: Sequence[str], days: int, new_ca: bool) -> list[str]:
    """Write the files into ``folder``; returns one line per file written."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    written: list[str] = []
    loaded = None if new_ca else _load_ca(folder)
    if loaded is None:
        ca_key = Key(CA_KEY_BITS)
        ca = make_ca(ca_key, now)
        _write(folder / "ca.key", ca_key.pem(), secret=True)
        _write(folder / "ca.crt", _cert_pem(ca), secret=False)
        written.append(f"{folder / 'ca.crt'}: new CA '{CA_NAME}', {CA_DAYS} days")
        signer = ca_key.private
    else:
        ca, signer = loaded
        written.append(f"{folder / 'ca.crt'}: kept, signs the new certificates")
    server, client = ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH
    # Replicas connect to each other with the server certificate: it is also a client's.
    leaves = (
        ("server", SERVER_NAME, (*SERVER_SANS, *extra_sans), (server, client)),
        ("nats-server", "nats", NATS_SANS, (server, client)),
        ("client", CLIENT_NAME, (), (client,)),
    )
    for stem, common_name, sans, usages in leaves:
        key = Key(LEAF_KEY_BITS)
        certificate = make_leaf(ca, signer, key, common_name, sans, usages, days, now)
        _write(folder / f"{stem}.key", key.pem(), secret=True)
        _write(folder / f"{stem}.crt", _cert_pem(certificate), secret=False)
        names = ", ".join(dict.fromkeys(sans)) or "no SANs"
        written.append(f"{folder / (stem + '.crt')}: CN={common_name}, {days} days; {names}")
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/gen-certs", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("certs"), help="folder (default certs)")
    parser.add_argument("--san", action="append", default=[], help="another server SAN")
    parser.add_argument("--days", type=int, default=LEAF_DAYS_DEFAULT, help="leaf validity")
    parser.add_argument("--new-ca", action="store_true", help="replace an existing CA")
    args = parser.parse_args(argv)
    if not 1 <= args.days <= CA_DAYS:
        print(f"gen-certs: --days must be in 1..{CA_DAYS}, got {args.days}", file=sys.stderr)
        return EXIT_USAGE
    if any(not san.strip() for san in args.san):
        print("gen-certs: --san needs a DNS name or an IP address", file=sys.stderr)
        return EXIT_USAGE
    try:
        lines = generate(args.out, [san.strip() for san in args.san], args.days, args.new_ca)
    except (OSError, ValueError) as error:
        print(f"gen-certs: {args.out}: {error}", file=sys.stderr)
        return EXIT_USAGE
    for line in lines:
        print(line)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
