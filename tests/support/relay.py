"""A TCP relay in front of a test server, to make its connections fail as networks do."""

from __future__ import annotations

import contextlib
import socket
import threading

from tests.support.harness import AMQP_URL, RABBITMQ


class Relay:
    """A TCP relay to a server (RabbitMQ by default) that can silence its connections (the
    server's answers to them are dropped, as a half-open connection's would be) or cut them,
    as network failures would. ``port``: where it listens (0: a free one)."""

    def __init__(self, port: int = 0, upstream: tuple[str, int] = RABBITMQ) -> None:
        self._server = socket.create_server(("127.0.0.1", port))
        self.port = int(self._server.getsockname()[1])
        self.url = AMQP_URL.replace("5672", str(self.port))  # for RabbitMQ
        self._upstream = upstream
        self._silenced: set[socket.socket] = set()
        self._sockets: list[socket.socket] = []
        self.answers = bytearray()  # what the server sent that was passed on to the client
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self._upstream)
            self._sockets += [client, upstream]
            for source, sink, answers in ((client, upstream, False), (upstream, client, True)):
                threading.Thread(
                    target=self._pump, args=(source, sink, answers), daemon=True
                ).start()

    def _pump(self, source: socket.socket, sink: socket.socket, answers: bool) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if source not in self._silenced:
                    sink.sendall(data)
                    if answers:
                        self.answers += data
        for end in (source, sink):
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)

    def redirect(self, upstream: tuple[str, int]) -> None:
        """Later connections go to ``upstream``; those made so far stay with the server they
        reach, as after a failover that moved a virtual IP or a DNS name."""
        self._upstream = upstream

    def silence(self) -> None:
        """From now on, nothing the server sends on the connections made so far gets
        through."""
        self._silenced.update(self._sockets)

    def cut(self) -> None:
        """Drop the connections made so far; later ones pass."""
        for end in self._sockets:
            with contextlib.suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)
            end.close()
        self._sockets.clear()

    def close(self) -> None:
        """Refuse new connections (a listening socket closed under a thread waiting in
        accept() would go on listening: it is shut down first), then drop the others."""
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self.cut()
