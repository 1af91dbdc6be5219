"""TLS and mutual TLS between the agent and the server, on loopback with real certificates:
frames answered and right, tritonclient over TLS, and each misconfiguration a one-line error."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from splitpipe.edge import AgentOptions, ClientOptions, FrameResult, SyntheticSource, load_export, run_agent
from splitpipe.errors import SplitpipeError
from splitpipe.server import ServerOptions, ServerThread
from splitpipe.tls import ClientTls, ServerTls
from tests.edge.conftest import REPO, Exports, env

pytest.importorskip("cryptography")
from tests.fixtures.certs import CertificateAuthority, Pem


class Pki:
    def __init__(self, folder: Path) -> None:
        self.ca = CertificateAuthority(folder / "ca")
        self.server = self.ca.issue("server", "edge-server", ("localhost", "127.0.0.1"))
        self.named = self.ca.issue("named", "edge-server", ("edge-server.example",))
        self.client = self.ca.issue("client", "jetson-7", client=True)
        self.other = CertificateAuthority(folder / "other", "another CA")
        self.stranger = self.other.issue("stranger", "someone", client=True)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


def _serve(exports: Exports, pem: Pem, client_ca: Path | None = None) -> ServerThread:
    return ServerThread([exports.int8], ServerOptions(tls=ServerTls(pem.cert, pem.key, client_ca)))


def _agent(exports: Exports, port: int, tls: ClientTls | None, frames: int = 40, **client: Any) -> Any:
    results: dict[int, dict[str, np.ndarray]] = {}

    def on_result(result: FrameResult) -> None:
        results[result.record.id] = result.outputs

    report = run_agent(
        AgentOptions(
            exports.int8,
            server=f"127.0.0.1:{port}",
            frames=frames,
            log_interval_s=0,
            client=ClientOptions(window=4, tls=tls, **client),
        ),
        on_result,
    )
    return report, results


def _check_outputs(exports: Exports, results: dict[int, dict[str, np.ndarray]], frames: int) -> None:
    source = SyntheticSource(load_export(exports.int8).inputs, seed=0)
    assert sorted(results) == list(range(frames))
    for i, got in results.items():
        for name, want in exports.reference(source.frame(i)).items():
            assert np.max(np.abs(got[name] - want)) <= 0.01 * np.max(np.abs(want))


def test_frames_over_tls_and_mutual_tls(exports: Exports, pki: Pki) -> None:
    with _serve(exports, pki.server) as server:
        report, results = _agent(exports, server.port, ClientTls(ca=pki.ca.pem.cert))
        assert (report.summary["completed"], report.summary["lost"]) == (40, 0)
        _check_outputs(exports, results, 40)
    with _serve(exports, pki.server, client_ca=pki.ca.pem.cert) as server:
        tls = ClientTls(ca=pki.ca.pem.cert, cert=pki.client.cert, key=pki.client.key)
        report, results = _agent(exports, server.port, tls)
        assert (report.summary["completed"], report.summary["lost"]) == (40, 0)
        _check_outputs(exports, results, 40)


def test_server_name_override(exports: Exports, pki: Pki) -> None:
    with _serve(exports, pki.named) as server:
        with pytest.raises(SplitpipeError, match=r"TLS handshake .* failed: .*--tls-server-name"):
            _agent(exports, server.port, ClientTls(ca=pki.ca.pem.cert), frames=1)
        tls = ClientTls(ca=pki.ca.pem.cert, server_name="edge-server.example")
        report, _ = _agent(exports, server.port, tls, frames=5)
        assert report.summary["completed"] == 5


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("wrong CA", "not signed by --tls-ca"),
        ("server without TLS", "may not speak TLS"),
    ],
)
def test_a_handshake_that_cannot_succeed_fails_at_once(
    exports: Exports, pki: Pki, case: str, message: str
) -> None:
    tls = ClientTls(ca=pki.other.pem.cert if case == "wrong CA" else pki.ca.pem.cert)
    with (
        ServerThread([exports.int8])
        if case == "server without TLS"
        else _serve(exports, pki.server) as server
    ):
        start = time.monotonic()
        with pytest.raises(SplitpipeError, match=message) as error:
            _agent(exports, server.port, tls, frames=1)
        assert time.monotonic() - start < 10  # not retried until some timeout
        assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("case", "hint"),
    [
        ("plaintext agent", "if the server speaks TLS, connect with --tls-ca"),
        ("no client certificate", "give --tls-cert and --tls-key"),
        ("client certificate of another CA", "whose client certificate its CA did not sign"),
    ],
)
def test_a_closed_socket_is_retried_until_the_timeout_with_a_hint(
    exports: Exports, pki: Pki, case: str, hint: str
) -> None:
    # gRPC sees only a closed socket in these cases, which a restarting server gives too
    tls = {
        "plaintext agent": None,
        "no client certificate": ClientTls(ca=pki.ca.pem.cert),
        "client certificate of another CA": ClientTls(
            ca=pki.ca.pem.cert, cert=pki.stranger.cert, key=pki.stranger.key
        ),
    }[case]
    with _serve(exports, pki.server, client_ca=pki.ca.pem.cert) as server:
        with pytest.raises(SplitpipeError, match=r"did not answer within 1 s \(UNAVAILABLE") as error:
            _agent(exports, server.port, tls, frames=1, connect_timeout_s=1.0)
        assert hint in str(error.value) and "Socket closed" in str(error.value)


def test_tritonclient_over_tls(exports: Exports, pki: Pki) -> None:
    tc = pytest.importorskip("tritonclient.grpc")
    with (
        _serve(exports, pki.server) as server,
        tc.InferenceServerClient(
            f"localhost:{server.port}", ssl=True, root_certificates=str(pki.ca.pem.cert)
        ) as client,
    ):
        assert client.is_server_ready() and client.is_model_ready("tiny-int8")
        meta = client.get_model_metadata("tiny-int8", as_json=True)
        assert meta["name"] == "tiny-int8"


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda p, t: ServerTls(t / "missing.crt", p.server.key), r"--tls-cert .*missing.crt: no such file"),
        (lambda p, t: ServerTls(p.server.key, p.server.key), r"--tls-cert .*: not a PEM certificate"),
        (lambda p, t: ServerTls(p.server.cert, p.server.cert), r"--tls-key .*: not a PEM private key"),
        (lambda p, t: ServerTls(p.server.cert, p.client.key), "the key does not belong to the certificate"),
        (lambda p, t: ServerTls(p.server.cert, p.server.key, p.server.key), "--tls-client-ca .*not a PEM"),
        (lambda p, t: ClientTls(ca=p.server.key), r"--tls-ca .*: not a PEM certificate"),
        (lambda p, t: ClientTls(cert=p.client.cert), "--tls-cert and --tls-key go together"),
        (lambda p, t: ClientTls(cert=p.client.cert, key=p.server.key), "does not belong"),
    ],
)
def test_bad_files(pki: Pki, tmp_path: Path, make: Any, message: str) -> None:
    with pytest.raises(SplitpipeError, match=message):
        make(pki, tmp_path)  # checked when made, before any connection


def test_cli_errors_are_one_line(exports: Exports, pki: Pki) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "splitpipe", *args], capture_output=True, text=True, env=env(), cwd=REPO
        )

    for args, message in [
        (["serve", str(exports.int8), "--port", "0", "--tls-cert", str(pki.server.cert)], "needs both"),
        (
            ["serve", str(exports.int8), "--port", "0", "--tls-cert", str(pki.server.cert), "--tls-key",
             str(pki.client.key)],
            "the key does not belong to the certificate",
        ),
        (
            ["agent", str(exports.int8), "--server", "127.0.0.1:1", "--tls-ca", str(pki.server.key)],
            "not a PEM certificate",
        ),
    ]:  # fmt: skip
        done = run(*args)
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr
        (line,) = [x for x in done.stderr.splitlines() if "error:" in x]
        assert message in line


def _reissue(pki: Pki, folder: Path, stem: str, days: tuple[float, float]) -> Pem:
    """The server's key in a certificate of the test CA valid from ``days[0]`` to ``days[1]``
    days from now."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key_pem = pki.server.key.read_bytes()
    cert = x509.load_pem_x509_certificate(pki.server.cert.read_bytes())
    now = datetime.datetime.now(datetime.timezone.utc)
    renewed = (
        x509.CertificateBuilder()
        .subject_name(cert.subject)
        .issuer_name(pki.ca.name)
        .public_key(cert.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + datetime.timedelta(days=days[0]))
        .not_valid_after(now + datetime.timedelta(days=days[1]))
        .sign(pki.ca.key, hashes.SHA256())
    )
    from cryptography.hazmat.primitives import serialization

    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{stem}.crt").write_bytes(renewed.public_bytes(serialization.Encoding.PEM))
    (folder / f"{stem}.key").write_bytes(key_pem)
    return Pem(folder / f"{stem}.crt", folder / f"{stem}.key")


def _encrypted_key(pki: Pki, folder: Path) -> Path:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(pki.server.key.read_bytes(), None)
    path = folder / "encrypted.key"
    path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    return path


@pytest.mark.parametrize(
    ("make", "message"),
    [
        # each used to start "over TLS" and then fail every handshake (or, for the encrypted key,
        # to end in a traceback, or prompt for a passphrase on a terminal)
        (
            lambda p, t: ServerTls(*_pair(_reissue(p, t, "expired", (-10, -1)))),
            r"--tls-cert .*expired.crt: the certificate expired on .*; accepted: one valid now",
        ),
        (
            lambda p, t: ServerTls(*_pair(_reissue(p, t, "future", (1, 10)))),
            r"--tls-cert .*future.crt: the certificate is not valid before .*\(check the clock\)",
        ),
        (
            lambda p, t: ClientTls(p.ca.pem.cert, *_pair(_reissue(p, t, "expired", (-10, -1)))),
            r"--tls-cert .*expired.crt: the certificate expired",
        ),
        (
            lambda p, t: ServerTls(p.server.cert, _encrypted_key(p, t)),
            r"--tls-key .*encrypted.key: the key is encrypted \(passphrase-protected\); accepted: an unencrypted",
        ),
        (
            lambda p, t: ServerTls(p.server.cert, p.server.key, p.server.cert),
            r"--tls-client-ca .*server.crt: not a CA certificate .*issued by commonName=splitpipe test CA",
        ),
        (
            lambda p, t: ClientTls(ca=p.client.cert),
            r"--tls-ca .*client.crt: not a CA certificate",
        ),
    ],
)
def test_unusable_certificates_are_refused_at_start(
    pki: Pki, tmp_path: Path, make: Any, message: str
) -> None:
    with pytest.raises(SplitpipeError, match=message) as error:
        make(pki, tmp_path)
    assert "\n" not in str(error.value)


def _pair(pem: Pem) -> tuple[Path, Path]:
    return pem.cert, pem.key


def test_a_self_signed_certificate_may_stand_for_its_own_ca(exports: Exports, tmp_path: Path) -> None:
    """Not a CA, but self-signed: accepted as --tls-ca, and the agent's frames go through."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .sign(key, hashes.SHA256())
    )
    pem = Pem(tmp_path / "self.crt", tmp_path / "self.key")
    pem.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem.key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    with _serve(exports, pem) as server:
        tls = ClientTls(ca=pem.cert, server_name="localhost")
        report, _ = _agent(exports, server.port, tls, frames=3)
        assert report.summary["completed"] == 3


def test_a_server_certificate_that_expired_is_named_in_the_agents_error(
    exports: Exports, pki: Pki, tmp_path: Path
) -> None:
    """A server of another make (ours refuses expired certificates at start) presents one that
    expired: the agent says so, rather than blaming the CA."""
    import asyncio
    import threading

    import grpc

    expired = _reissue(pki, tmp_path, "expired", (-10, -1))
    ready, stop = threading.Event(), threading.Event()
    port: list[int] = []

    def serve() -> None:
        async def main() -> None:
            server = grpc.aio.server()
            creds = grpc.ssl_server_credentials([(expired.key.read_bytes(), expired.cert.read_bytes())])
            port.append(server.add_secure_port("127.0.0.1:0", creds))
            await server.start()
            ready.set()
            while not stop.is_set():
                await asyncio.sleep(0.05)
            await server.stop(0)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(30)
    try:
        with pytest.raises(SplitpipeError, match=r"certificate has expired.*or this device's clock is wrong"):
            _agent(exports, port[0], ClientTls(ca=pki.ca.pem.cert), frames=1)
    finally:
        stop.set()
        thread.join(30)
