"""TLS on the main port (``VDB_TLS_CERT`` and ``VDB_TLS_KEY``): the client round trip and the
probes both go through it; the metrics port stays plain HTTP; a certificate that does not
load stops the start with one line."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import socket
import ssl
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from craton.client import Client, CratonError
from craton.core.wire import Handshake, encode
from tests.net.support import ServerProcess, http_get, split


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "craton-test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.crt", folder / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_tls_round_trip_and_probes(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    env = {"VDB_TLS_CERT": str(cert), "VDB_TLS_KEY": str(key)}
    with ServerProcess(tmp_path / "data", tmp_path / "server.log", **env) as server:
        server.start()
        trust = ssl.create_default_context(cafile=str(cert))
        with Client(server.address, tls=trust, retry_deadline_s=10) as client:
            client.create_stream("secret")
            client.append("secret", [b"over tls"])
            assert client.read("secret").events == (b"over tls",)

        with (
            socket.create_connection(split(server.address), timeout=10) as raw,
            trust.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            tls.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ")
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["status"] == "ok"
        assert http_get(server.metrics_address, "/health")[0] == 200

        plain = Client(server.address, retry_deadline_s=1)
        with pytest.raises(CratonError):  # plain text is not served on a TLS port
            plain.connect()
        plain.close()
        assert server.stop() == 0


def test_a_certificate_that_does_not_load_is_one_line(tmp_path: Path) -> None:
    bad_cert, bad_key = tmp_path / "bad.crt", tmp_path / "bad.key"
    bad_cert.write_text("not a certificate")
    bad_key.write_text("not a key")
    env = {"VDB_TLS_CERT": str(bad_cert), "VDB_TLS_KEY": str(bad_key)}
    with ServerProcess(tmp_path / "data", tmp_path / "server.log", **env) as server:
        server.start(wait_ready=False)
        assert server.wait() == 1
        lines = server.tail(100).splitlines()
        refusal = [line for line in lines if line.startswith("craton-server:")]
        assert len(refusal) == 1 and "VDB_TLS_CERT" in refusal[0], lines


def test_tls_floor_host_names_and_plaintext_frames(tmp_path: Path) -> None:
    """TLS 1.2 at least (1.3 preferred); the client checks the host name against the
    certificate; a plaintext frame on the TLS port ends the connection without a hang."""
    cert, key = self_signed(tmp_path)
    env = {"VDB_TLS_CERT": str(cert), "VDB_TLS_KEY": str(key)}
    with ServerProcess(tmp_path / "data", tmp_path / "server.log", **env) as server:
        server.start()
        host, port = split(server.address)
        trust = ssl.create_default_context(cafile=str(cert))
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            trust.wrap_socket(raw, server_hostname=host) as tls,
        ):
            assert tls.version() == "TLSv1.3", "a client that offers 1.3 gets it"
        only_12 = ssl.create_default_context(cafile=str(cert))
        only_12.maximum_version = ssl.TLSVersion.TLSv1_2
        with (
            socket.create_connection((host, port), timeout=10) as raw,
            only_12.wrap_socket(raw, server_hostname=host) as tls,
        ):
            assert tls.version() == "TLSv1.2"
        old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        old.load_verify_locations(cafile=str(cert))
        old.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # deprecated: the point
            old.maximum_version = ssl.TLSVersion.TLSv1_1
        with socket.create_connection((host, port), timeout=10) as raw, pytest.raises(OSError):
            old.wrap_socket(raw, server_hostname=host)  # refused below TLS 1.2

        with (  # the certificate names 127.0.0.1 only, and the client's context checks it
            socket.create_connection((host, port), timeout=10) as raw,
            pytest.raises(ssl.SSLCertVerificationError, match="match"),
        ):
            trust.wrap_socket(raw, server_hostname="db.example")

        with socket.create_connection((host, port), timeout=10) as raw:
            raw.sendall(encode(Handshake(1, 0xBEEF, None), 1))
            with contextlib.suppress(ConnectionResetError):  # a reset is as clean as an EOF
                assert raw.recv(65536) == b"", "no Craton frame comes back in plain text"
        with Client(server.address, tls=trust, retry_deadline_s=10) as client:
            client.create_stream("still-serving")  # the bad clients disturbed no one
        cli = [sys.executable, "-m", "craton", "append", "still-serving", "via the cli"]
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VDB_", "CRATON_"))}
        env["CRATON_ADDRESS"] = server.address
        trusted = subprocess.run(
            [*cli, "--ca-file", str(cert)], capture_output=True, text=True, env=env, timeout=30
        )
        assert trusted.returncode == 0, trusted.stderr
        untrusted = subprocess.run(
            [*cli, "--tls", "--timeout", "1"], capture_output=True, text=True, env=env, timeout=30
        )  # the system's CAs do not know this certificate
        assert untrusted.returncode == 3 and untrusted.stderr.count("\n") == 1, untrusted.stderr
        assert server.stop() == 0
