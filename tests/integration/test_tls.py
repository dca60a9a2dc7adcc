"""TLS as against a live venue: the Binance simulator serves `wss://` and `https://` with a
certificate signed by a CA made here; the engine is told to trust that CA (`ca_file`).

One engine, three connections to the same simulator: one that trusts the right CA and
names the certificate's host (`localhost`), one that trusts another CA, and one that
connects by IP address (not a name on the certificate). The first must price from books
synced over wss:// and https:// (SNI seen by the server); the other two must be refused
with a clear log line and retried with backoff, and the engine must stop cleanly.
"""

from __future__ import annotations

import datetime
import json
import re
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from mmengine.dev.simulator import start_simulator
from tests.integration.conftest import Subscriber

pytestmark = pytest.mark.integration

INSTRUMENTS = ["BTC-USDT"]


@dataclass
class Pki:
    ca: Path  # the CA that signed the server certificate
    other_ca: Path  # a CA that signed nothing the server holds
    chain: Path  # server certificate
    key: Path


def make_pki(where: Path) -> Pki:
    """A self-signed CA, a server certificate for `localhost` signed by it, and an
    unrelated second CA (the `cryptography` package)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.UTC)

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def ca(cn: str) -> tuple[Any, Any]:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
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
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .sign(key, hashes.SHA256())
        )
        return key, cert

    ca_key, ca_cert = ca("mmengine test CA")
    _, other_cert = ca("some other CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    pki = Pki(where / "ca.pem", where / "other-ca.pem", where / "server.pem", where / "server.key")
    pki.ca.write_bytes(ca_cert.public_bytes(pem))
    pki.other_ca.write_bytes(other_cert.public_bytes(pem))
    pki.chain.write_bytes(server_cert.public_bytes(pem))
    pki.key.write_bytes(
        server_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return pki


class ServerNames:
    """The SNI names the TLS simulator saw, one per TLS handshake, with their times."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.seen: list[tuple[float, str | None]] = []

    def __call__(self, _sock: Any, server_name: str | None, _ctx: Any) -> None:
        with self.lock:
            self.seen.append((time.monotonic(), server_name))

    def names(self) -> list[str | None]:
        with self.lock:
            return [n for _, n in self.seen]


@pytest.fixture
def tls_sim(tmp_path: Path) -> Iterator[tuple[Any, Pki, ServerNames]]:
    pki = make_pki(tmp_path)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki.chain, pki.key)
    names = ServerNames()
    ctx.sni_callback = names
    with start_simulator(
        "binance", instruments=INSTRUMENTS, rate=50, seed=91, ssl_context=ctx
    ) as sim:
        yield sim, pki, names


def venue(name: str, host: str, port: int, ca_file: Path) -> dict[str, Any]:
    return {
        "name": name,
        "protocol": "binance",
        "url": f"wss://{host}:{port}/stream",
        "rest_url": f"https://{host}:{port}",
        "instruments": INSTRUMENTS,
        "ca_file": str(ca_file),
    }


def test_wss_with_a_trusted_ca_prices_and_wrong_certificates_are_refused_with_backoff(
    tls_sim: tuple[Any, Pki, ServerNames], engine_factory: Any
) -> None:
    sim, pki, names = tls_sim
    assert sim.ws_url.startswith("wss://") and sim.rest_url.startswith("https://")
    engine = engine_factory(
        {
            "venues": [
                venue("good", "localhost", sim.port, pki.ca),
                venue("untrusted", "localhost", sim.port, pki.other_ca),
                venue("wronghost", "127.0.0.1", sim.port, pki.ca),
            ],
            "instruments": [
                {
                    "name": "BTC-USDT",
                    "sources": [{"venue": v} for v in ("good", "untrusted", "wronghost")],
                    "min_venues": 1,
                }
            ],
            "limits": {"reconnect_max_s": 1.0},
        }
    )
    started = time.monotonic()
    endpoints = json.loads((engine.run_dir / "endpoints.json").read_text())
    prices = Subscriber(endpoints["ipc"]["prices"]["endpoint"])
    got = [p for _, p in prices.collect("price.avsc", count=30, seconds=15)]
    prices.close()
    time.sleep(max(0.0, 4.0 - (time.monotonic() - started)))
    assert engine.stop() == 0, engine.output
    out = engine.output

    # The trusted connection synced over wss:// (and its REST snapshot over https://).
    assert len(got) == 30
    assert all(p["venues"] == ["good"] and not p["halted"] and p["bids"] for p in got)
    assert sim.stats["snapshots_served"] >= 1
    # SNI: the server was told the name in the URL; an IP address is sent no name.
    assert "localhost" in names.names()

    # The two others: refused with a line that says why, never connected, retried with
    # backoff (a few attempts in 4 s, not hundreds), and the engine lived on.
    untrusted = re.findall(r"untrusted connect to wss://localhost:\d+/stream refused: (.*)", out)
    wrong_host = re.findall(
        r"wronghost connect to wss://127\.0\.0\.1:\d+/stream refused: (.*)", out
    )
    assert untrusted and all("unable to get local issuer certificate" in m for m in untrusted)
    assert wrong_host and all("IP address mismatch" in m for m in wrong_host), wrong_host
    assert str(pki.other_ca) in untrusted[0]
    for refused in (untrusted, wrong_host):
        assert 2 <= len(refused) <= 12, len(refused)
    assert "untrusted connected" not in out and "wronghost connected" not in out
    assert re.search(r"untrusted reconnecting in 0\.[5-9]\d*s|untrusted reconnecting in 1\.", out)
    assert "Traceback" not in out
    print("\n".join(ln for ln in out.splitlines() if "refused" in ln or "reconnecting" in ln))
