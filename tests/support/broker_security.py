"""What a secured Mosquitto needs, made by the tests themselves: a CA, a server certificate for
127.0.0.1, a client certificate (the `cryptography` package), a password file
(`mosquitto_passwd`, Debian's mosquitto package) and an ACL."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from devtools.broker import LocalBroker, free_port


@dataclass(frozen=True)
class Certificates:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing here: trusting it must fail


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _write_key(key: ec.EllipticCurvePrivateKey, path: Path) -> None:
    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    path.chmod(0o644)  # mosquitto may read it as its own user


def _ca(common_name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(common_name))
            .issuer_name(_name(common_name)).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True,
                                         crl_sign=True, content_commitment=False,
                                         key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False,
                                         decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, common_name: str,
          server: bool) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(_name(common_name))
               .issuer_name(ca.subject).public_key(key.public_key())
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=1))
               .not_valid_after(now + datetime.timedelta(days=2))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server
                                                     else ExtendedKeyUsageOID.CLIENT_AUTH]),
                              critical=False))
    if server:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
    return key, builder.sign(ca_key, hashes.SHA256())


def make_certificates(folder: Path) -> Certificates:
    """A CA, a server certificate for the IP 127.0.0.1 only (so `localhost` does not match),
    a client certificate, and an unrelated CA."""
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o755)
    ca_key, ca = _ca("mlink test CA")
    paths = {name: folder / f"{name}.pem" for name in
             ("ca", "server_cert", "server_key", "client_cert", "client_key", "other_ca")}
    paths["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for role, server in (("server", True), ("client", False)):
        key, cert = _leaf(ca_key, ca, f"mlink test {role}", server)
        paths[f"{role}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        _write_key(key, paths[f"{role}_key"])
    _, other = _ca("some other CA")
    paths["other_ca"].write_bytes(other.public_bytes(serialization.Encoding.PEM))
    return Certificates(**paths)


def password_file(path: Path, users: dict[str, str]) -> Path:
    """A Mosquitto password file (hashed by mosquitto_passwd)."""
    path.write_text("".join(f"{user}:{password}\n" for user, password in users.items()))
    subprocess.run(["mosquitto_passwd", "-U", str(path)], check=True)
    path.chmod(0o644)
    return path


def secured_broker(folder: Path, certs: Certificates, users: dict[str, str], acl: str,
                   ) -> LocalBroker:
    """Plain listener (login required) on `broker.port`, TLS listener that requires a client
    certificate signed by the CA on `broker.tls_port`; both under the password file and ACL."""
    passwords = password_file(folder / "passwords", users)
    acl_file = folder / "acl"
    acl_file.write_text(acl)
    acl_file.chmod(0o644)
    tls_port = free_port()
    broker = LocalBroker(anonymous=False, extra_config=(
        f"password_file {passwords}\nacl_file {acl_file}\n"
        f"listener {tls_port} 127.0.0.1\ncafile {certs.ca}\ncertfile {certs.server_cert}\n"
        f"keyfile {certs.server_key}\nrequire_certificate true\n"))
    broker.tls_port = tls_port  # type: ignore[attr-defined]
    return broker
