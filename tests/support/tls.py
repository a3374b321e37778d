"""TLS for the tests: a CA of the run's own (trustme) and a TLS proxy in front of a plain server.

RabbitMQ on this machine listens without TLS, and its config is not the tests' to change: a
proxy that ends TLS on a free loopback port and forwards the bytes to 127.0.0.1:5672 lets the
AMQP driver's TLS connection be tested against the real broker behind it.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class TLSFiles:
    """PEM files: the CA, the server's certificate and key (for 127.0.0.1 and localhost) and
    a client's, all signed by that CA."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path


def make_tls_files(directory: Path) -> TLSFiles:
    import trustme

    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("taskd-test-client")
    files = TLSFiles(*(directory / name for name in ("ca.pem", "server.pem", "server.key",
                                                     "client.pem", "client.key")))  # fmt: skip
    ca.cert_pem.write_to_path(str(files.ca))
    for cert, cert_path, key_path in (
        (server, files.server_cert, files.server_key),
        (client, files.client_cert, files.client_key),
    ):
        cert.private_key_pem.write_to_path(str(key_path))
        cert_path.write_bytes(b"".join(blob.bytes() for blob in cert.cert_chain_pems))
    return files


@contextlib.contextmanager
def tls_proxy(files: TLSFiles, target_port: int) -> Iterator[int]:
    """A TLS server on a free loopback port forwarding each connection to ``target_port``;
    yields its port, and closes everything on exit."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(files.server_cert, files.server_key)
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.2)
    stopping = threading.Event()
    threads: list[threading.Thread] = []

    def pump(client: ssl.SSLSocket) -> None:
        with client, socket.create_connection(("127.0.0.1", target_port)) as upstream:
            selector = selectors.DefaultSelector()
            selector.register(client, selectors.EVENT_READ, upstream)
            selector.register(upstream, selectors.EVENT_READ, client)
            while not stopping.is_set():
                for key, _ in selector.select(0.2):
                    data = key.fileobj.recv(65536)  # type: ignore[union-attr]
                    if not data:
                        return
                    key.data.sendall(data)
                if client.pending():  # TLS records already decrypted wait in the SSL object
                    upstream.sendall(client.recv(65536))

    def serve() -> None:
        while not stopping.is_set():
            try:
                raw, _ = listener.accept()
            except TimeoutError:
                continue
            try:
                client = context.wrap_socket(raw, server_side=True)
            except (ssl.SSLError, OSError):
                raw.close()  # a client that refused our certificate: the test looks at it
                continue
            thread = threading.Thread(target=pump, args=(client,), daemon=True)
            thread.start()
            threads.append(thread)

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    try:
        yield listener.getsockname()[1]
    finally:
        stopping.set()
        server.join(5)
        for thread in threads:
            thread.join(5)
        listener.close()
