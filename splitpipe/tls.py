"""TLS for the gRPC link between agent and server: PEM files read and checked up front.

The server presents ``--tls-cert`` / ``--tls-key`` and, with ``--tls-client-ca``, asks every
client for a certificate that CA signed (mutual TLS). The agent verifies the server against
``--tls-ca`` (or the system's roots with plain ``--tls``) and presents its own certificate
when given one. Files are checked with the standard library's ``ssl`` before gRPC sees them,
so that a wrong path, a file that is not PEM, or a key that does not belong to its certificate
is a one-line error at start, not a handshake that fails on every connection later.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitpipe.errors import SplitpipeError

_CERT = b"-----BEGIN CERTIFICATE-----"
# what gRPC reports when a handshake fails for a reason a retry does not mend
HANDSHAKE_FAILURES = ("handshake failed", "verification check failed", "certificate_verify_failed")


def read_pem(path: str | Path, option: str, what: str = "certificate") -> bytes:
    """The bytes of a PEM file named by ``option``; a clear error if it is missing or not PEM."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SplitpipeError(f"{option} {path}: no such file") from None
    except OSError as exc:
        raise SplitpipeError(f"{option} {path}: cannot be read ({exc.strerror})") from None
    marker = _CERT if what == "certificate" else b"PRIVATE KEY-----"
    if marker not in data:
        raise SplitpipeError(f"{option} {path}: not a PEM {what} (no '{marker.decode()}' block)")
    return data


def _check_pair(cert: Path, key: Path, cert_option: str, key_option: str, key_pem: bytes) -> None:
    if b"ENCRYPTED" in key_pem:
        # gRPC takes no passphrase, and ssl would prompt for one on the terminal
        raise SplitpipeError(
            f"{key_option} {key}: the key is encrypted (passphrase-protected); accepted: an unencrypted "
            f"PEM key (decrypt it with `openssl pkey -in {key} -out KEY`, and keep that file private)"
        )
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key, password=b"")
    except ssl.SSLError as exc:
        why = (
            "the key does not belong to the certificate" if "KEY_VALUES_MISMATCH" in str(exc) else exc.reason
        )
        raise SplitpipeError(f"{cert_option} {cert} and {key_option} {key}: {why}") from None
    except OSError:
        raise SplitpipeError(f"{cert_option} {cert} and {key_option} {key}: the key cannot be read") from None


def _decode(path: Path) -> dict[str, Any] | None:
    """The first certificate of a PEM file as ``ssl`` decodes a peer's (None where it cannot)."""
    decode = getattr(getattr(ssl, "_ssl", None), "_test_decode_cert", None)
    if decode is None:
        return None
    try:
        info: dict[str, Any] = decode(str(path))
    except (ssl.SSLError, OSError, ValueError, TypeError):
        return None
    return info


def _check_dates(path: Path, option: str) -> None:
    """An expired (or not yet valid) certificate fails every handshake: say so at start."""
    info = _decode(path)
    if info is None:
        return
    now = time.time()
    try:
        not_before = ssl.cert_time_to_seconds(info["notBefore"])
        not_after = ssl.cert_time_to_seconds(info["notAfter"])
    except (KeyError, ValueError):
        return
    if now > not_after:
        raise SplitpipeError(
            f"{option} {path}: the certificate expired on {info['notAfter']}; accepted: one valid now"
        )
    if now < not_before:
        raise SplitpipeError(
            f"{option} {path}: the certificate is not valid before {info['notBefore']} (check the "
            f"clock); accepted: one valid now"
        )


def _name(rdns: Any) -> str:
    return ",".join(f"{k}={v}" for rdn in rdns for k, v in rdn)


def _check_ca(data: bytes, path: Path, option: str) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_verify_locations(cadata=data.decode("ascii", "replace"))
    except (ssl.SSLError, ValueError) as exc:
        raise SplitpipeError(f"{option} {path}: not a usable CA certificate ({exc})") from None
    if context.cert_store_stats()["x509_ca"] == 0:
        # a self-signed certificate may stand for itself; one a CA signed cannot verify others
        info = _decode(path)
        if info is not None and info.get("issuer") != info.get("subject"):
            raise SplitpipeError(
                f"{option} {path}: not a CA certificate (its basicConstraints do not say CA:TRUE; it "
                f"was issued by {_name(info.get('issuer', ()))}); accepted: the certificate of the CA "
                "that signs the peers' certificates"
            )
    _check_dates(path, option)


def _load(cert: Path | None, key: Path | None, ca: Path | None, ca_option: str) -> tuple[bytes | None, ...]:
    """The PEM bytes of a certificate and its key (checked to belong together) and of a CA."""
    cert_pem = key_pem = ca_pem = None
    if cert is not None and key is not None:
        cert_pem = read_pem(cert, "--tls-cert")
        key_pem = read_pem(key, "--tls-key", "private key")
        _check_pair(cert, key, "--tls-cert", "--tls-key", key_pem)
        _check_dates(cert, "--tls-cert")
    if ca is not None:
        ca_pem = read_pem(ca, ca_option)
        _check_ca(ca_pem, ca, ca_option)
    return cert_pem, key_pem, ca_pem


@dataclass(frozen=True)
class ServerTls:
    """The server's certificate and key, and the CA of client certificates (mutual TLS). The
    files are read and checked when this is made."""

    cert: Path
    key: Path
    client_ca: Path | None = None
    _pem: tuple[bytes | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_pem", _load(self.cert, self.key, self.client_ca, "--tls-client-ca"))

    def credentials(self) -> Any:
        import grpc

        cert, key, client_ca = self._pem
        return grpc.ssl_server_credentials(
            [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
        )


@dataclass(frozen=True)
class ClientTls:
    """How the agent verifies the server (``ca``; None: the system's roots), its own certificate
    for mutual TLS (``cert`` and ``key``), and the name the server's certificate must carry when
    it is not the host the agent dials (``server_name``). The files are read and checked when
    this is made."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None
    server_name: str | None = None
    _pem: tuple[bytes | None, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if (self.cert is None) != (self.key is None):
            raise SplitpipeError(
                "--tls-cert and --tls-key go together (the agent's certificate for mutual TLS)"
            )
        object.__setattr__(self, "_pem", _load(self.cert, self.key, self.ca, "--tls-ca"))

    def credentials(self) -> Any:
        import grpc

        cert, key, ca = self._pem
        return grpc.ssl_channel_credentials(root_certificates=ca, private_key=key, certificate_chain=cert)

    def channel_options(self) -> list[tuple[str, Any]]:
        return [] if self.server_name is None else [("grpc.ssl_target_name_override", self.server_name)]


def is_handshake_failure(details: str) -> bool:
    text = details.lower()
    return any(marker in text for marker in HANDSHAKE_FAILURES)
